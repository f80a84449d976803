//go:build vmtest

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// secondDriver is a second `rbd-nbd-graph serve` on this host and pool,
// without a dockerd: the test plays dockerd's Init and Status.
type secondDriver struct {
	t    *testing.T
	cmd  *exec.Cmd
	done chan error
	sock string
	log  string
}

// startSecondDriver runs serve as name with the driver options given
// and waits for its socket.
func startSecondDriver(t *testing.T, dir, name string, opts ...string) *secondDriver {
	t.Helper()
	args := []string{"serve", "--name", name, "--state", filepath.Join(dir, name+"-state.json"),
		"-o", "rbd.pool=rbd", "-o", "rbd.configfile=" + os.Getenv("CEPH_CONF"), "-o", "rbd.basesize=1G"}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	s := &secondDriver{t: t, sock: filepath.Join("/run/docker/plugins", name+".sock"), log: filepath.Join(dir, name+".log"), done: make(chan error, 1)}
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	s.cmd = exec.Command(testkit.Binary(t), args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(s.stop)
	testkit.Eventually(t, 30*time.Second, "the second driver's socket", func() bool {
		select {
		case err := <-s.done:
			s.done <- err
			t.Fatalf("the second driver exited at start: %v", err)
		default:
		}
		return acceptsConnections(s.sock)
	})
	return s
}

// call posts a plugin request and returns the reply's Err (if any) and
// the raw reply.
func (s *secondDriver) call(path string, body any) (string, []byte) {
	s.t.Helper()
	c := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", s.sock)
	}}}
	b, _ := json.Marshal(body)
	resp, err := c.Post("http://plugin"+path, "application/json", bytes.NewReader(b))
	if err != nil {
		s.t.Fatalf("%s to the second driver: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out struct{ Err string }
	json.Unmarshal(raw, &out)
	return out.Err, raw
}

// stop ends it with SIGTERM (dockerd's stop of a plugin) and waits.
func (s *secondDriver) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Errorf("the second driver exited with %v after SIGTERM", err)
		}
	case <-time.After(3 * time.Minute):
		s.cmd.Process.Kill()
		<-s.done
		s.t.Errorf("the second driver did not exit within 3 minutes of SIGTERM")
	}
	s.cmd = nil
	if b, _ := os.ReadFile(s.log); len(b) > 0 {
		s.t.Logf("---- second driver's log ----\n%s", tail(b, 4000))
	}
}

// Two graph drivers on one host and one pool, under a real dockerd: A
// runs a container that appends a counter and syncs; a second serve
// instance B is started (dockerd's Init played by the test) and stopped
// next to it, three ways: with rbd.imageprefix=docker- (a prefix of A's
// image names), with A's own prefix from another home, and on A's own
// home. Each time the container's device stays connected and served by
// A, its mount stays in place, the kernel logs nothing about the device
// and no IO error, and the counter file read back from the device
// (page cache dropped) has no gap.
func TestTwoDriversOneHostOnePool(t *testing.T) {
	a := newDockerEnv(t, "rbd-nbd-two-a")
	// "docker-" starts A's image names, as it starts every default
	// prefix (docker-<identity>-).
	a.prefix = "docker-" + a.prefix
	a.startPlugin()
	a.startDockerd()
	a.importBusybox("busybox:e2e")
	ctr := "two-drivers-counter"
	a.mustDocker("run", "-d", "--name", ctr, "busybox:e2e", "sh", "-c", counterScript)
	defer a.docker(2*time.Minute, "rm", "-f", ctr)
	read := func() (string, error) { return a.docker(2*time.Minute, "exec", ctr, "cat", "/counter") }
	testkit.Eventually(t, 2*time.Minute, "the container to write 20 lines", func() bool {
		out, err := read()
		n, _ := checkCounter(out)
		return err == nil && n >= 20
	})
	var gd struct{ Device, Mountpoint string }
	if err := json.Unmarshal([]byte(a.mustDocker("inspect", "--format", "{{json .GraphDriver.Data}}", ctr)), &gd); err != nil || gd.Device == "" || gd.Mountpoint == "" {
		t.Fatalf("the container's layer: device %q, mount point %q (%v)", gd.Device, gd.Mountpoint, err)
	}
	aPID := a.plugin.Process.Pid
	t.Logf("container layer on %s, mounted at %s, served by plugin A (pid %d)", gd.Device, gd.Mountpoint, aPID)
	homeA := filepath.Join(a.dir, "data", a.name)
	t.Cleanup(func() { removeBase(t, "docker-") })

	for _, tc := range []struct {
		name, home string
		opts       []string
		initErr    string // what B's Init must say, "" for success
	}{
		{"prefix-docker-", filepath.Join(a.dir, "b-home"), []string{"rbd.imageprefix=docker-"}, ""},
		{"same-prefix-other-home", filepath.Join(a.dir, "c-home"), []string{"rbd.imageprefix=" + a.prefix}, "belongs to"},
		{"same-home", homeA, []string{"rbd.imageprefix=" + a.prefix}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _ := read()
			before, _ := checkCounter(out)
			mark := markKernelLog(t)
			b := startSecondDriver(t, a.dir, "rbd-nbd-two-b", tc.opts...)
			start := time.Now()
			errMsg, _ := b.call("/GraphDriver.Init", map[string]any{"Home": tc.home})
			t.Logf("B's Init took %.1fs: %q", time.Since(start).Seconds(), errMsg)
			switch {
			case tc.initErr == "" && errMsg != "":
				t.Errorf("B's Init failed: %s", errMsg)
			case tc.initErr != "" && !strings.Contains(errMsg, tc.initErr):
				t.Errorf("B's Init: %q, want an error saying %q", errMsg, tc.initErr)
			}
			if errMsg == "" {
				if e, raw := b.call("/GraphDriver.Status", map[string]any{}); e != "" {
					t.Errorf("B's Status: %s", raw)
				}
			}
			b.stop()

			if !isConnected(t, gd.Device) {
				t.Errorf("%s is no longer connected after B started and stopped", gd.Device)
			} else if pid := servingPID(t, gd.Device); pid != aPID {
				t.Errorf("%s is served by pid %d, want plugin A's %d", gd.Device, pid, aPID)
			}
			if !mounted(gd.Mountpoint) {
				t.Errorf("the container's layer is no longer mounted at %s after B started and stopped", gd.Mountpoint)
			}
			if running := strings.TrimSpace(a.mustDocker("inspect", "--format", "{{.State.Running}}", ctr)); running != "true" {
				t.Errorf("the container is not running (State.Running = %s)", running)
			}
			dropCaches(t)
			out, err := read()
			if err != nil {
				t.Fatalf("reading the counter: %v\n%s", err, out)
			}
			n, fault := checkCounter(out)
			if fault != "" {
				t.Errorf("the counter read back from the device: %s (%d good lines)", fault, n)
			}
			testkit.Eventually(t, 2*time.Minute, "the counter to grow", func() bool {
				out, err := read()
				m, _ := checkCounter(out)
				return err == nil && m > n+10
			})
			t.Logf("counter: %d lines before B, %d after", before, n)
			log := mark.since()
			dev := filepath.Base(gd.Device)
			var about []string
			for _, l := range log {
				if strings.Contains(l, dev+":") || strings.Contains(l, dev+" ") {
					about = append(about, l)
				}
			}
			if len(about) > 0 {
				t.Errorf("the kernel logged about the container's device %s while B ran:\n%s", dev, summarize(about, 20))
			}
			if bad := ioErrorLines(log); len(bad) > 0 {
				t.Errorf("%d IO error lines in the kernel log:\n%s", len(bad), summarize(bad, 20))
			}
		})
	}
}

// removeBase deletes the base image a driver with prefix made (B's).
func removeBase(t *testing.T, prefix string) {
	spec := "rbd/" + prefix + "base"
	testkit.Run(t, time.Minute, "rbd", "snap", "unprotect", spec+"@layer")
	testkit.Run(t, time.Minute, "rbd", "snap", "purge", "--no-progress", spec)
	testkit.Run(t, time.Minute, "rbd", "rm", "--no-progress", spec)
}
