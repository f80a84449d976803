//go:build vmtest

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// SIGTERM while the pool is full and start-up waits on it: librbd's
// rbd_create blocks until space is freed, whatever a context says, and a
// CI run saw `serve` then ignore SIGTERM for 3 minutes (dockerd's Init
// creating the base image). Both front ends must exit within their
// shutdown bounds; what they leave half made is cleaned by the next start.
func TestSIGTERMBoundedWhilePoolFull(t *testing.T) {
	testkit.RequireKernelNBD(t)
	needCeph(t)
	prefix := dkPrefix(t)
	t.Cleanup(func() { removeRBDImages(t, prefix) })
	fillPool(t)
	opts := []string{"-o", "rbd.pool=rbd", "-o", "rbd.configfile=" + os.Getenv("CEPH_CONF"),
		"-o", "rbd.imageprefix=" + prefix, "-o", "rbd.basesize=1G"}

	t.Run("serve", func(t *testing.T) {
		dir := workDir(t)
		name := "rbd-nbd-full"
		p := startDaemon(t, dir, append([]string{"serve", "--name", name, "--state", filepath.Join(dir, "state.json"),
			"--grace", "5s", "--shutdown-timeout", "5s"}, opts...)...)
		sock := filepath.Join("/run/docker/plugins", name+".sock")
		testkit.Eventually(t, 30*time.Second, "the plugin socket", func() bool { _, err := os.Stat(sock); return err == nil })
		hc := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}}
		initDone := make(chan string, 1)
		go func() {
			body, _ := json.Marshal(map[string]any{"Home": filepath.Join(dir, "home")})
			resp, err := hc.Post("http://plugin/GraphDriver.Init", "application/json", bytes.NewReader(body))
			if err != nil {
				initDone <- err.Error()
				return
			}
			resp.Body.Close()
			initDone <- resp.Status
		}()
		p.waitLog(t, "creating base image")
		p.termWithin(t, 60*time.Second)
		select {
		case r := <-initDone:
			t.Logf("the Init call ended with: %s", r)
		case <-time.After(time.Minute):
			t.Fatal("the Init call did not end after the plugin exited")
		}
	})

	t.Run("snapshotter", func(t *testing.T) {
		dir := workDir(t)
		p := startDaemon(t, dir, append([]string{"snapshotter", "--socket", filepath.Join(dir, "sn.sock"),
			"--root", filepath.Join(dir, "sn"), "--shutdown-timeout", "5s"}, opts...)...)
		p.waitLog(t, "creating base image")
		p.termWithin(t, 60*time.Second)
	})
}

// fillPool makes the cluster full (its full ratio below what it holds)
// until the test ends, and waits for pool rbd to say so.
func fillPool(t *testing.T) {
	t.Helper()
	var dump struct {
		Full         float64 `json:"full_ratio"`
		Backfillfull float64 `json:"backfillfull_ratio"`
		Nearfull     float64 `json:"nearfull_ratio"`
	}
	if err := json.Unmarshal([]byte(testkit.Must(t, time.Minute, "ceph", "osd", "dump", "--format", "json")), &dump); err != nil {
		t.Fatal(err)
	}
	set := func(which string, v float64) {
		testkit.Must(t, time.Minute, "ceph", "osd", "set-"+which+"-ratio", strconv.FormatFloat(v, 'f', -1, 64))
	}
	t.Cleanup(func() {
		set("full", dump.Full)
		set("backfillfull", dump.Backfillfull)
		set("nearfull", dump.Nearfull)
		testkit.Eventually(t, 3*time.Minute, "pool rbd to be writable again", func() bool { return !poolFull(t) })
	})
	set("nearfull", 0.000001)
	set("backfillfull", 0.000002)
	set("full", 0.000003)
	testkit.Eventually(t, 2*time.Minute, "pool rbd to be full", func() bool { return poolFull(t) })
}

func poolFull(t *testing.T) bool {
	out := testkit.Must(t, time.Minute, "ceph", "osd", "pool", "ls", "detail")
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "pool ") && strings.Contains(l, "'rbd'") {
			return strings.Contains(l, ",full") || strings.Contains(l, " full")
		}
	}
	return false
}

// daemon is a serving process of ours with its log.
type daemon struct {
	cmd  *exec.Cmd
	done chan error
	log  string
}

func startDaemon(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	d := &daemon{done: make(chan error, 1), log: filepath.Join(dir, args[0]+".log")}
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(testkit.Binary(t), args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.Env = append(os.Environ(), "RBD_NBD_GRAPH_LOG=debug")
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("---- %s (last 3000 bytes) ----\n%s", filepath.Base(d.log), tail(b, 3000))
		}
	})
	return d
}

func (d *daemon) waitLog(t *testing.T, what string) {
	t.Helper()
	testkit.Eventually(t, 2*time.Minute, "the log to say "+what, func() bool {
		b, _ := os.ReadFile(d.log)
		return bytes.Contains(b, []byte(what))
	})
	time.Sleep(2 * time.Second) // into the blocked call
}

// termWithin sends SIGTERM and fails t unless the process exits within
// limit.
func (d *daemon) termWithin(t *testing.T, limit time.Duration) {
	t.Helper()
	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.done:
		d.done <- err
		t.Logf("exited %v after SIGTERM with the pool full: %v", time.Since(start).Round(100*time.Millisecond), err)
	case <-time.After(limit):
		t.Fatalf("still running %v after SIGTERM with the pool full", limit)
	}
}
