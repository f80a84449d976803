package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
)

// DefaultMode is the mode of a socket when the caller has no reason to
// share it: only the owner may connect.
const DefaultMode os.FileMode = 0o600

// maxPathLen is the size of sockaddr_un's sun_path on Linux, its
// terminating NUL included.
const maxPathLen = 108

// NoGroup leaves the socket's group as bind(2) set it.
const NoGroup = -1

// Listen listens on a new unix socket at path whose permission bits are
// mode and, unless gid is NoGroup, whose group is gid, both set before
// the socket appears at path. path must not exist (remove a stale
// socket first). Closing the listener removes the socket file.
func Listen(path string, mode os.FileMode, gid int) (net.Listener, error) {
	if mode&^os.ModePerm != 0 {
		return nil, fmt.Errorf("unixsock: mode %v has bits beyond the permissions", mode)
	}
	// MkdirTemp creates the directory with mode 0700 (narrowed further
	// by the umask, never widened). A short name keeps the temporary
	// path within sun_path's 108 bytes whenever path itself fits with
	// a dozen bytes to spare.
	dir, err := os.MkdirTemp(filepath.Dir(path), ".s")
	if err != nil {
		return nil, fmt.Errorf("unixsock: private directory for %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) >= maxPathLen {
		return nil, fmt.Errorf("unixsock: %s: path too long: its private bind path %s needs %d bytes, unix sockets allow %d",
			path, tmp, len(tmp), maxPathLen-1)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("unixsock: listen on %s: %w", path, err)
	}
	// The file will live at path, which Close removes itself.
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		return nil, fmt.Errorf("unixsock: %s: %w", path, err)
	}
	if gid != NoGroup {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(err)
	}
	// rename(2) would silently replace an existing file: refuse instead,
	// as bind(2) would have.
	if _, err := os.Lstat(path); err == nil {
		return fail(os.ErrExist)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &listener{UnixListener: ln, addr: &net.UnixAddr{Name: path, Net: "unix"}}, nil
}

// listener reports the final path as its address and removes the
// socket file on Close.
type listener struct {
	*net.UnixListener
	addr *net.UnixAddr
	once sync.Once
	err  error
}

func (l *listener) Addr() net.Addr { return l.addr }

// Close closes the listener and removes its socket file, once: a second
// Close must not remove a socket another server has bound since.
func (l *listener) Close() error {
	l.once.Do(func() {
		l.err = l.UnixListener.Close()
		if err := os.Remove(l.addr.Name); err != nil && !errors.Is(err, os.ErrNotExist) && l.err == nil {
			l.err = err
		}
	})
	return l.err
}
