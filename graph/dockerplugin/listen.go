package dockerplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/unixsock"
)

// SocketDir is where dockerd looks for plugin sockets.
const SocketDir = "/run/docker/plugins"

// SocketPath is the socket dockerd finds plugin name at.
func SocketPath(name string) string { return filepath.Join(SocketDir, name+".sock") }

// Listen creates the plugin's unix socket at path with mode 0600 (only
// root, as dockerd, may call a storage driver). A socket file left by a
// plugin that died is replaced; one that still answers is an error.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another plugin is serving there; stop it or choose another --name", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// Bound with its final mode: a bind and then a chmod would leave
	// the socket open to the umask's mode meanwhile.
	return unixsock.Listen(path, 0o600, unixsock.NoGroup)
}

// Serve answers plugin requests on ln until ctx ends, then stops taking
// requests, waits up to grace for those in flight, and shuts the plugin
// down (nothing left mounted, attached or open). First it resumes the
// instance a previous plugin process was serving (Plugin.Resume); dockerd's
// requests wait in the socket's backlog meanwhile.
//
// SIGTERM during the resume (a cluster that does not answer can hold it
// indefinitely) shuts down without serving.
func Serve(ctx context.Context, ln net.Listener, p *Plugin, grace time.Duration) error {
	resumed := make(chan struct{})
	go func() {
		defer close(resumed)
		p.Resume()
	}()
	select {
	case <-resumed:
	case <-ctx.Done():
		p.log.Info("shutting down while resuming")
		return errors.Join(p.Shutdown(), ln.Close())
	}
	h := NewHandler(p)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	p.log.Info("plugin listening", "socket", ln.Addr().String(), "name", p.cfg.Name)

	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		p.log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		err = srv.Shutdown(sctx)
		cancel()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return errors.Join(err, p.Shutdown(), h.Close())
}
