package nbd

import (
	"context"
	"crypto/tls"
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
	// MaxConnections bounds the connections served at once; a client
	// past it is logged and closed before the handshake. 0 means
	// DefaultMaxConnections.
	MaxConnections int
	// MaxInFlightBytes bounds the payload bytes held by requests in
	// flight across every connection, on top of each export's
	// per-connection TransmissionOptions.MaxInFlightBytes; requests past
	// it wait. A connection with nothing in flight may always start one
	// request of up to 256 KiB, so clients holding the whole budget
	// without reading cannot starve the others. 0 means
	// DefaultServerMaxInFlightBytes.
	MaxInFlightBytes int64
	// TLS, when set, offers NBD_OPT_STARTTLS with this configuration
	// (certificates; ClientAuth and ClientCAs to require client
	// certificates). With TLSRequired, clients must start TLS before any
	// other option.
	TLS         *tls.Config
	TLSRequired bool
}

// Defaults of ServerOptions.
const (
	DefaultMaxConnections = 128
	// DefaultServerMaxInFlightBytes: four connections at their own
	// default bound, or eight 32 MiB requests.
	DefaultServerMaxInFlightBytes = 4 * DefaultMaxInFlightBytes
)

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
	if opts.MaxConnections < 0 || opts.MaxInFlightBytes < 0 {
		return nil, errors.New("nbd: MaxConnections and MaxInFlightBytes must not be negative")
	}
	if opts.TLSRequired && opts.TLS == nil {
		return nil, errors.New("nbd: TLSRequired without a TLS configuration")
	}
	if opts.MaxConnections == 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.MaxInFlightBytes == 0 {
		opts.MaxInFlightBytes = DefaultServerMaxInFlightBytes
	}
	s := &Server{opts: opts, log: opts.Logger}
	budget := newByteBudget(opts.MaxInFlightBytes)
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
		o.budget = budget
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
// fails for good. Cancellation closes ln, lets every connection drain
// its requests in flight and returns nil once all are closed.
//
// Running out of descriptors (EMFILE, ENFILE) or kernel memory does not
// stop the server: it waits, 5 ms doubling up to 1 s as net/http does,
// and accepts again once clients leave. Clients past MaxConnections are
// closed at once with a log line.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var delay time.Duration
	active := 0
	var mu sync.Mutex // guards active
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if retryableAccept(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed, retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
				case <-ctx.Done():
				}
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		delay = 0
		mu.Lock()
		full := active >= s.opts.MaxConnections
		if !full {
			active++
		}
		mu.Unlock()
		if full {
			s.log.Warn("nbd: refusing a client: too many connections", "remote", conn.RemoteAddr().String(), "max_connections", s.opts.MaxConnections)
			conn.Close()
			continue
		}
		wg.Go(func() {
			defer func() {
				mu.Lock()
				active--
				mu.Unlock()
			}()
			s.ServeConn(ctx, conn)
		})
	}
}

// retryableAccept reports whether an Accept error is a shortage that
// passes (descriptors, kernel memory, a client gone before accept) rather
// than a broken listener.
func retryableAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
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
		list:        func() []*exportInfo { return s.infos },
		tls:         s.opts.TLS,
		tlsRequired: s.opts.TLSRequired,
	}
	info, err := n.run()
	// After STARTTLS the session goes on over TLS.
	tconn := n.conn
	// From here on, cancellation drains instead of cutting the connection.
	if !stop() || err != nil {
		tconn.Close()
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
	tconn.SetDeadline(time.Time{})
	e := &s.exports[chosen]
	log.Info("nbd: client connected", "export", e.Name, "size", info.size, "flags", fmt.Sprintf("%#x", info.flags))
	opts := e.Options
	opts.structured, opts.baseAllocation = n.negotiated(info)
	err = ServeTransmission(ctx, tconn, e.Backend, opts)
	log.Info("nbd: client disconnected", "export", e.Name, "err", err)
	return err
}
