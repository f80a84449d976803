package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeNotifiesSystemd runs serve (this test binary re-executed as
// the command) as a Type=notify unit would: with NOTIFY_SOCKET naming a
// fake manager's socket. READY=1 must come once the plugin socket
// accepts connections, and STOPPING=1 on SIGTERM, before a clean exit.
func TestServeNotifiesSystemd(t *testing.T) {
	dir := t.TempDir()
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "plugin.sock")
	cmd := exec.Command(self, "serve", "--name", "sdnotify-test", "--socket", sock, "--state", filepath.Join(dir, "state.json"))
	cmd.Env = append(os.Environ(), "RBD_NBD_GRAPH_TEST_MAIN=1", "NOTIFY_SOCKET="+filepath.Join(dir, "notify"))
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &errb, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("serve's output:\n%s", errb.String())
		}
	}()

	read := func(want string, within time.Duration) {
		t.Helper()
		notify.SetReadDeadline(time.Now().Add(within))
		buf := make([]byte, 4096)
		n, err := notify.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %s from serve: %v", want, err)
		}
		if msg := string(buf[:n]); !strings.HasPrefix(msg, want+"\n") && msg != want {
			t.Fatalf("serve sent %q, want %s first", msg, want)
		}
	}
	read("READY=1", 60*time.Second)
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("READY=1 came but the plugin socket does not accept: %v", err)
	}
	c.Close()

	// STOPPING=1 must be sent before the process ends (it was sent from
	// a goroutine that an exit could beat): read it only after the exit.
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err // for the deferred Wait
		if err != nil {
			t.Errorf("serve after SIGTERM: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not exit within 60 s of SIGTERM")
	}
	read("STOPPING=1", time.Second)
}
