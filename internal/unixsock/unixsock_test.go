package unixsock

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// withUmask runs f under umask m. The umask is process-wide, so these
// tests do not run in parallel.
func withUmask(t *testing.T, m int, f func()) {
	t.Helper()
	old := syscall.Umask(m)
	defer syscall.Umask(old)
	f()
}

func TestListenModeUnderUmask000(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.sock")
	var ln net.Listener
	withUmask(t, 0, func() {
		var err error
		ln, err = Listen(path, DefaultMode, NoGroup)
		if err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want socket 0600", st.Mode())
	}
	if got := ln.Addr().String(); got != path {
		t.Fatalf("Addr %q, want %q", got, path)
	}
	// It serves, and leaves no temporary directory behind.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want only the socket: %v", len(ents), ents)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
}

func TestListenModeAndGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.sock")
	gid := os.Getgid()
	ln, err := Listen(path, 0o660, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 || int(st.Sys().(*syscall.Stat_t).Gid) != gid {
		t.Fatalf("socket mode %v gid %d, want 0660 gid %d", st.Mode(), st.Sys().(*syscall.Stat_t).Gid, gid)
	}
}

func TestListenRefusesExistingPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.sock")
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, DefaultMode, NoGroup); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Listen over a file: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatal("the existing file was replaced")
	}
	if _, err := Listen(path, os.ModeSetuid|0o600, NoGroup); err == nil {
		t.Fatal("mode with setuid accepted")
	}
}

// A deep directory with a short name: the path itself would fit
// sun_path, the private bind path beside it does not. The error says so
// instead of bind's bare EINVAL.
func TestListenPathTooLong(t *testing.T) {
	dir := t.TempDir()
	deep := filepath.Join(dir, strings.Repeat("d", 96-len(dir)))
	if err := os.Mkdir(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Listen(filepath.Join(deep, "s"), DefaultMode, NoGroup)
	if err == nil || !strings.Contains(err.Error(), "path too long") {
		t.Fatalf("Listen(%d-byte path) = %v, want a path too long error", len(deep)+2, err)
	}
	if ents, _ := os.ReadDir(deep); len(ents) != 0 {
		t.Fatalf("left %v behind", ents)
	}
}
