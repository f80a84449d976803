package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/rbdstore"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
	"github.com/spf13/pflag"
)

// cephFlags are the connection flags of every subcommand that can open an
// rbd: target. Each reaches rbdio.Config; serve passes them on as the
// driver options rbd.configfile, rbd.keyring, rbd.client and
// rbd.cachepolicy, rbd.osdtimeout, rbd.connecttimeout, rbd.abortonfull
// and rbd.submit, so a flag added here must be added there too.
type cephFlags struct {
	conf        string
	keyring     string
	id          string
	cachePolicy rbdio.CachePolicy
	osdTimeout  time.Duration
	connTimeout time.Duration
	abortOnFull bool
	submit      rbdio.SubmitMode
	// log receives what happens to an open rbd: target later (a
	// blocklisting and the reopen); nil means slog.Default().
	log *slog.Logger
}

// register defines the Ceph flags on fs. -c (also --conf) and -k are
// rbd-nbd's and rbd's short forms.
func (c *cephFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&c.conf, "ceph-conf", "c", "", "path to ceph.conf (also --conf; default: $CEPH_CONF, then /etc/ceph/ceph.conf)")
	fs.StringVarP(&c.keyring, "keyring", "k", "", "path to the cephx keyring (default: the one ceph.conf names)")
	fs.StringVar(&c.id, "id", rbdio.DefaultID, "cephx client id (client.ID)")
	c.cachePolicy = rbdio.CacheNone
	fs.Func("rbd-cache-policy",
		"librbd's cache: none (default) or writethrough acknowledge a write once the OSDs have it; writeback or writearound once cached (lost if this process dies under a live device)",
		func(v string) (err error) {
			c.cachePolicy, err = rbdio.ParseCachePolicy(v)
			return err
		})
	c.submit = rbdio.SubmitAuto
	fs.Func("rbd-submit",
		"who calls librbd for a request: thread (the image's submitter thread, always), inline (the request's caller when that thread sleeps with nothing queued), or auto (default: inline when the Go runtime's sysmon is kept awake, which this command arranges unless GODEBUG sets schedtrace)",
		func(v string) (err error) {
			c.submit, err = rbdio.ParseSubmitMode(v)
			return err
		})
	durationVar(fs, &c.connTimeout, "connect-timeout", rbdio.DefaultConnectTimeout,
		"give up connecting when no monitor answers within this duration (also bounds every monitor request)")
	fs.BoolVar(&c.abortOnFull, "abort-on-full", false,
		"fail writes to a full pool (quota reached or cluster full) with ENOSPC at once, as krbd's abort_on_full; by default they wait until space is freed")
	durationVar(fs, &c.osdTimeout, "osd-timeout", 0,
		"fail a Ceph request the OSDs do not complete within this duration (e.g. 30s or 30) with ETIMEDOUT (EIO to NBD clients and the kernel) instead of waiting; 0 (default) waits for ever, as krbd's osd_request_timeout")
}

// config is the rbdio configuration for pool and namespace.
func (c cephFlags) config(pool, namespace string) rbdio.Config {
	return rbdio.Config{ConfFile: c.conf, Keyring: c.keyring, ID: c.id, Pool: pool, Namespace: namespace,
		CachePolicy: c.cachePolicy, OSDTimeout: c.osdTimeout, ConnectTimeout: c.connTimeout,
		AbortOnFull: c.abortOnFull, Submit: c.submit}
}

// rbdTarget is a parsed POOL[/NAMESPACE]/IMAGE[@SNAP].
type rbdTarget struct {
	pool, namespace, image, snap string
}

// parseRBDTarget reads POOL[/NAMESPACE]/IMAGE[@SNAP], the way rbd(8)
// writes image specs.
func parseRBDTarget(spec string) (rbdTarget, error) {
	var t rbdTarget
	rest, snap, hasSnap := strings.Cut(spec, "@")
	if hasSnap && snap == "" {
		return t, fmt.Errorf("empty snapshot name after '@'")
	}
	t.snap = snap
	parts := strings.Split(rest, "/")
	switch len(parts) {
	case 2:
		t.pool, t.image = parts[0], parts[1]
	case 3:
		t.pool, t.namespace, t.image = parts[0], parts[1], parts[2]
		if t.namespace == "" {
			return t, fmt.Errorf("empty namespace in %q: want POOL[/NAMESPACE]/IMAGE[@SNAP]", spec)
		}
	default:
		return t, fmt.Errorf("%q: want POOL[/NAMESPACE]/IMAGE[@SNAP]", spec)
	}
	if t.pool == "" || t.image == "" {
		return t, fmt.Errorf("%q: want POOL[/NAMESPACE]/IMAGE[@SNAP]", spec)
	}
	return t, nil
}

// openRBDTarget opens rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]. spec is the part
// after "rbd:". A snapshot is always opened read-only. A read-write
// image is held with its exclusive lock, so a second writer is refused
// instead of interleaving. The returned close function releases the
// image and the cluster connection. A blocklisted client is replaced by
// a new connection (rbdstore.Reopener).
func openRBDTarget(ctx context.Context, spec string, c cephFlags, readOnly bool) (nbd.Backend, func() error, error) {
	t, err := parseRBDTarget(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: target rbd:%s: %v", errUsage, spec, err)
	}
	log := c.log
	if log == nil {
		log = slog.Default()
	}
	cfg := c.config(t.pool, t.namespace)
	r, err := rbdstore.OpenReopening(ctx, cfg, t.image, t.snap, readOnly, log)
	if err != nil {
		return nil, nil, err
	}
	log.Info("rbd: image open", "image", spec, "read_only", readOnly, "cache", cfg.CachePolicy,
		"submit", cfg.Submit.Resolved(), "submit_flag", cfg.Submit)
	return r, r.Close, nil
}
