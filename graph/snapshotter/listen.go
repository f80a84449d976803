package snapshotter

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/unixsock"
)

// DefaultSocket is where containerd's proxy_plugins entry finds the
// snapshotter by default.
const DefaultSocket = "/run/rbd-nbd-graph/snapshotter.sock"

// Listen creates the snapshotter's unix socket at path with mode 0600
// (only root, as containerd, may call it). A socket left by a process
// that died is replaced; one that still answers is an error.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another snapshotter is serving there; stop it or choose another --socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	return unixsock.Listen(path, unixsock.DefaultMode, unixsock.NoGroup)
}
