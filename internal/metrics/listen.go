package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/unixsock"
)

// ErrRemote: a TCP address that is not loopback, refused without
// allowRemote because the endpoint has no authentication (it tells
// device names, image names and IO rates to whoever can reach it).
var ErrRemote = errors.New("metrics: address is not loopback")

// ErrAddr: an address Listen cannot parse.
var ErrAddr = errors.New("metrics: bad address")

// SocketMode is the permissions of a unix socket Listen creates: only
// the owner (root) may scrape; a node exporter's textfile or a local
// Prometheus agent running as root reads it.
const SocketMode = 0o600

// Listen opens the endpoint's listener. addr is a unix socket
// ("unix:/run/x.sock", or a path starting with /) or a TCP HOST:PORT
// whose host is a loopback IP or "localhost"; any other TCP address
// (":9100" listens on every interface) is ErrRemote unless allowRemote,
// in which case exposure describes it for a warning. A stale socket
// file (nobody listening) is replaced; a live one is an error.
func Listen(addr string, allowRemote bool) (ln net.Listener, exposure string, err error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok || strings.HasPrefix(addr, "/") {
		if !ok {
			path = addr
		}
		if !strings.HasPrefix(path, "/") {
			return nil, "", fmt.Errorf("%w: %q: a unix socket needs an absolute path", ErrAddr, addr)
		}
		if err := removeStale(path); err != nil {
			return nil, "", err
		}
		ln, err := unixsock.Listen(path, SocketMode, unixsock.NoGroup)
		return ln, "", err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %q: %v (want 127.0.0.1:PORT, [::1]:PORT or unix:/PATH)", ErrAddr, addr, err)
	}
	ip := net.ParseIP(host)
	loopback := host == "localhost" || (ip != nil && ip.IsLoopback())
	if !loopback {
		if !allowRemote {
			return nil, "", fmt.Errorf("%w: %q; the metrics endpoint has no authentication: use 127.0.0.1:PORT or a unix socket, or allow it explicitly", ErrRemote, addr)
		}
		exposure = "the network of " + host
		if host == "" || (ip != nil && ip.IsUnspecified()) {
			exposure = "every interface of this machine"
		}
	}
	ln, err = net.Listen("tcp", addr)
	return ln, exposure, err
}

// removeStale removes a socket file at path that nobody listens on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%w: %s exists and is not a socket", ErrAddr, path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("metrics: %s: another process listens there", path)
	}
	return os.Remove(path)
}

// Serve serves h on ln until ctx ends, then closes ln. Scrapes are short
// requests: a client that holds a connection open without sending gets
// cut off, so it cannot pin goroutines.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "rbd-nbd-graph: metrics at /metrics")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	defer stop()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
