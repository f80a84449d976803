package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// Export serves the backend with our NBD server on a unix socket in this
// process and drives it through our NBD client, one client per
// connection: the protocol and IO-loop cost on top of raw, through a real
// socket.
type Export struct {
	Backend nbd.Backend
	Spec    string
	// SocketDir holds the socket; "" makes a temporary folder.
	SocketDir string
	Logger    *slog.Logger
}

// Name is "export".
func (Export) Name() string { return "export" }

// Check needs at least one connection.
func (Export) Check(_ context.Context, s Setup) error {
	return checkConnections(s)
}

func checkConnections(s Setup) error {
	if s.Connections < 1 || s.Connections > 64 {
		return &OptionError{Option: "connections", Value: fmt.Sprint(s.Connections),
			Reason: "must be between 1 and 64"}
	}
	if s.QueueDepth < 0 {
		return &OptionError{Option: "queue-depth", Value: fmt.Sprint(s.QueueDepth),
			Reason: "must not be negative (0: iodepth divided over the connections)"}
	}
	return nil
}

// Open starts the server and dials the connections.
func (t Export) Open(ctx context.Context, s Setup) (_ *Session, err error) {
	if err := t.Check(ctx, s); err != nil {
		return nil, err
	}
	log := t.Logger
	if log == nil {
		log = slog.Default()
	}
	dir := t.SocketDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "rbd-nbd-graph-bench-"); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				os.RemoveAll(dir)
			}
		}()
	}
	srv, err := nbd.NewServer([]nbd.Export{{
		Name:      "bench",
		Backend:   t.Backend,
		Options:   nbd.TransmissionOptions{QueueDepth: s.QueueDepth, Logger: log},
		MultiConn: s.Connections > 1,
	}}, nbd.ServerOptions{Logger: log})
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "export.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	srvCtx, stopServer := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(srvCtx, ln) }()

	sess := &Session{Target: "export", Backend: t.Spec, Connections: s.Connections}
	var clients []*nbd.Client
	closeAll := func() error {
		var errs []error
		for _, c := range clients {
			errs = append(errs, c.Close())
		}
		stopServer()
		errs = append(errs, <-served)
		if t.SocketDir == "" {
			errs = append(errs, os.RemoveAll(dir))
		} else {
			os.Remove(sock)
		}
		return errors.Join(errs...)
	}
	for i := 0; i < s.Connections; i++ {
		c, err := nbd.Dial(ctx, "unix", sock, "bench")
		if err != nil {
			return nil, errors.Join(fmt.Errorf("export: connection %d: %w", i+1, err), closeAll())
		}
		clients = append(clients, c)
		sess.Backends = append(sess.Backends, c)
	}
	sess.close = closeAll
	return sess, nil
}
