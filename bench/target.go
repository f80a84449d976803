package bench

import (
	"context"
	"fmt"
	"strings"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// Session is a target opened for one run: the backends the workers call
// (one per connection; a single one for raw and device) and how to tear
// it down.
type Session struct {
	Target      string // raw, export, device
	Backend     string // the backend spec, for the report
	Device      string // the kernel device path (device target)
	Connections int
	Backends    []nbd.Backend
	close       func() error
}

// Close releases what Open set up (client connections, the server, the
// kernel device); it does not close the backend being measured.
func (s *Session) Close() error {
	if s.close == nil {
		return nil
	}
	return s.close()
}

// Setup is what a target needs to know to open a session.
type Setup struct {
	// Connections is the number of NBD connections (export: client
	// sockets to our server; device: sockets the kernel spreads its
	// queues over). Raw takes only 1.
	Connections int
	// QueueDepth is the most requests each connection serves at once
	// (the server's per-connection queue depth, also handed to the
	// kernel for the device target). 0: package nbd's default. The
	// command line sets it to iodepth/connections unless told otherwise.
	QueueDepth int
	// BlockSize is the device's logical block size (device target); 0:
	// 4096, or 512 when the IO size is not a multiple of 4096.
	BlockSize uint32
}

// Target is a way to reach a backend: directly, through our NBD export,
// or through a kernel NBD device.
type Target interface {
	Name() string
	// Check validates the setup before anything is opened, so bad input
	// fails before any IO.
	Check(ctx context.Context, s Setup) error
	Open(ctx context.Context, s Setup) (*Session, error)
}

// TargetNames are the targets the command line accepts.
var TargetNames = []string{"raw", "export", "device"}

// CheckTargetName validates --target.
func CheckTargetName(name string) error {
	for _, n := range TargetNames {
		if n == name {
			return nil
		}
	}
	return &OptionError{Option: "target", Value: name,
		Reason: "unknown target; use " + strings.Join(TargetNames, ", ") +
			" (raw: the backend called directly; export: through our NBD server over a socket; device: a kernel /dev/nbdN)"}
}

// Raw calls the backend directly: for rbd: the librbd ceiling with no NBD
// in the way.
type Raw struct {
	Backend nbd.Backend
	Spec    string // the backend spec, for the report
}

// Name is "raw".
func (Raw) Name() string { return "raw" }

// Check refuses more than one connection: there is nothing to connect.
func (Raw) Check(_ context.Context, s Setup) error {
	if s.Connections > 1 {
		return &OptionError{Option: "connections", Value: fmt.Sprint(s.Connections),
			Reason: "the raw target calls the backend directly and has no connections; use 1 (or --target export/device)"}
	}
	return nil
}

// Open returns a session over the backend itself.
func (t Raw) Open(ctx context.Context, s Setup) (*Session, error) {
	if err := t.Check(ctx, s); err != nil {
		return nil, err
	}
	return &Session{Target: "raw", Backend: t.Spec, Connections: 1, Backends: []nbd.Backend{t.Backend}}, nil
}
