package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Export is one named backend a Server offers.
type Export struct {
	// Name is what clients ask for; the first export is also the default
	// export, chosen by an empty name.
	Name string
	// Description is shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
	Description string
	Backend     Backend
	// Options configure the IO loop of each connection to this export.
	Options TransmissionOptions
	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN: clients may spread
	// requests over several connections, which all serve Backend.
	MultiConn bool
}

// ServerOptions configure a Server. The zero value is a sane default.
type ServerOptions struct {
	// HandshakeTimeout bounds option haggling; 0 means 30 seconds.
	HandshakeTimeout time.Duration
	// Logger receives connection events; nil means slog.Default(). It is
	// also each export's Options.Logger unless that is set.
	Logger *slog.Logger
}

// Server serves exports with the fixed-newstyle handshake over any
// listener (a unix socket or a TCP address), one goroutine per
// connection, each running ServeTransmission after the handshake.
type Server struct {
	exports []Export
	infos   []*exportInfo
	opts    ServerOptions
	log     *slog.Logger
}

// NewServer checks the exports and returns a server for them.
func NewServer(exports []Export, opts ServerOptions) (*Server, error) {
	if len(exports) == 0 {
		return nil, errors.New("nbd: a server needs at least one export")
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{opts: opts, log: opts.Logger}
	seen := map[string]bool{}
	for _, e := range exports {
		if e.Backend == nil {
			return nil, fmt.Errorf("nbd: export %q has no backend", e.Name)
		}
		if len(e.Name) > maxStringLen || len(e.Description) > maxStringLen {
			return nil, fmt.Errorf("nbd: export %q: name and description must be at most %d bytes", e.Name, maxStringLen)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("nbd: export name %q used twice", e.Name)
		}
		seen[e.Name] = true
		if e.Options.Logger == nil {
			e.Options.Logger = opts.Logger
		}
		o, err := e.Options.withDefaults()
		if err != nil {
			return nil, fmt.Errorf("nbd: export %q: %w", e.Name, err)
		}
		e.Options = o
		s.exports = append(s.exports, e)
		s.infos = append(s.infos, &exportInfo{
			name:        e.Name,
			description: e.Description,
			minBlock:    o.BlockSize,
			prefBlock:   max(preferredBlockSize, o.BlockSize),
			maxPayload:  o.MaxPayload,
		})
	}
	return s, nil
}

// lookup returns the export called name, the first one for "". The
// size and flags are read now, as the backend's size may change.
func (s *Server) lookup(name string) (int, *exportInfo, bool) {
	for i, e := range s.exports {
		if e.Name == name || (name == "" && i == 0) {
			info := *s.infos[i]
			info.size = uint64(max(e.Backend.Size(), 0))
			info.flags = uint16(ServerFlags(e.Backend, e.Options, e.MultiConn))
			return i, &info, true
		}
	}
	return 0, nil, false
}

// Serve accepts connections on ln until ctx is cancelled or Accept
// fails. Cancellation closes ln, lets every connection drain its
// requests in flight and returns nil once all are closed.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of descriptors and the like: back off, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed, retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		delay = 0
		wg.Go(func() { s.ServeConn(ctx, conn) })
	}
}

// ServeConn runs the handshake and then the transmission phase on one
// accepted connection, and closes it. It returns what ServeTransmission
// returns, or the handshake's error.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	log := s.log.With("remote", conn.RemoteAddr().String())
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	var chosen int
	n := negotiator{
		conn: conn,
		lookup: func(name string) (*exportInfo, bool) {
			i, info, ok := s.lookup(name)
			chosen = i
			return info, ok
		},
		list: func() []*exportInfo { return s.infos },
	}
	info, err := n.run()
	// From here on, cancellation drains instead of cutting the connection.
	if !stop() || err != nil {
		conn.Close()
		if errors.Is(err, errAbort) || ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			// A probe (is anyone listening?) rather than a client.
			log.Debug("nbd: client left during the handshake", "err", err)
			return err
		}
		log.Warn("nbd: handshake failed", "err", err)
		return err
	}
	conn.SetDeadline(time.Time{})
	e := &s.exports[chosen]
	log.Info("nbd: client connected", "export", e.Name, "size", info.size, "flags", fmt.Sprintf("%#x", info.flags))
	err = ServeTransmission(ctx, conn, e.Backend, e.Options)
	log.Info("nbd: client disconnected", "export", e.Name, "err", err)
	return err
}
