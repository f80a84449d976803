package sdnotify

import (
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// listen is a fake systemd: a unixgram socket at path (or abstract).
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	addr := &net.UnixAddr{Name: name, Net: "unixgram"}
	if name[0] == '@' {
		addr.Name = "\x00" + name[1:]
	}
	c, err := net.ListenUnixgram("unixgram", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotifySocketPath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "notify")
	c := listen(t, p)
	if err := NotifySocket(p, Ready+"\nSTATUS=listening"); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, c); got != "READY=1\nSTATUS=listening" {
		t.Errorf("got %q", got)
	}
}

func TestNotifyAbstract(t *testing.T) {
	name := "@rbd-nbd-graph-sdnotify-test-" + filepath.Base(t.TempDir())
	c := listen(t, name)
	t.Setenv(SocketEnv, name)
	if err := Notify(Stopping); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, c); got != Stopping {
		t.Errorf("got %q", got)
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv(SocketEnv, "")
	if err := Notify(Ready); !errors.Is(err, ErrNoSocket) {
		t.Errorf("Notify without %s: %v, want ErrNoSocket", SocketEnv, err)
	}
	if err := NotifySocket("relative/path", Ready); err == nil {
		t.Error("a relative socket path was accepted")
	}
	// Nobody listening: an error, not a hang.
	if err := NotifySocket(filepath.Join(t.TempDir(), "gone"), Ready); err == nil {
		t.Error("a missing socket was not reported")
	}
}
