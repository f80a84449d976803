package main

import (
	"context"
	"errors"
	"flag"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// cephFlags are the connection flags of every subcommand that can open an
// rbd: target.
type cephFlags struct {
	conf    string
	keyring string
	id      string
}

func (c *cephFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.conf, "ceph-conf", "", "path to ceph.conf (default: librbd's search path)")
	fs.StringVar(&c.keyring, "keyring", "", "path to the cephx keyring (default: from ceph.conf)")
	fs.StringVar(&c.id, "id", "admin", "cephx client id (client.ID)")
}

// openRBDTarget opens rbd:POOL/IMAGE[@SNAP]. spec is the part after "rbd:".
// The returned close function releases the image and the cluster
// connection.
func openRBDTarget(ctx context.Context, spec string, c cephFlags, readOnly bool) (nbd.Backend, func() error, error) {
	return nil, nil, errors.New("rbd: targets are not implemented yet")
}
