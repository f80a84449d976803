package rbdexport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// cluster connects to pool rbd of the test cluster.
func cluster(t *testing.T) *rbdio.Conn {
	t.Helper()
	c, err := rbdio.Connect(testContext(t), rbdio.Config{ConfFile: testkit.CephConf(t), ConnectTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// newImage creates an image of size bytes, removed (with its
// snapshots) at cleanup.
func newImage(t *testing.T, c *rbdio.Conn, size int64) string {
	t.Helper()
	name := testkit.UniqueName(t, "rbdexport-")
	ctx := testContext(t)
	if err := c.CreateImage(ctx, name, rbdio.CreateOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.RemoveImage(ctx, name, rbdio.RemoveOptions{Snapshots: true}); err != nil && !errors.Is(err, rbdio.ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name
}

// readImage reads the whole image (or snapshot) through librbd.
func readImage(t *testing.T, c *rbdio.Conn, name string, opts rbdio.OpenOptions) []byte {
	t.Helper()
	opts.ReadOnly = true
	im, err := c.OpenImage(testContext(t), name, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	p := make([]byte, im.Size())
	if _, err := im.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// exportProc is a running `rbd-nbd-graph export`.
type exportProc struct {
	uri    string
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	exited chan error
}

// export starts `rbd-nbd-graph export --socket S --ceph-conf CONF args...`
// and waits for the URI it prints once it listens.
func export(t *testing.T, args ...string) *exportProc {
	t.Helper()
	p, err := startExport(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

// startExport is export without the cleanup, returning an error (with
// the process's stderr) when it exits instead of listening.
func startExport(t *testing.T, args ...string) (*exportProc, error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	all := append([]string{"export", "--socket", sock, "--ceph-conf", testkit.CephConf(t)}, args...)
	p := &exportProc{cmd: exec.Command(testkit.Binary(t), all...), stderr: &bytes.Buffer{}, exited: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	uri := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			uri <- sc.Text()
		}
		close(uri)
	}()
	select {
	case p.uri = <-uri:
	case <-time.After(60 * time.Second):
	}
	go func() { p.exited <- p.cmd.Wait() }()
	if p.uri == "" {
		select {
		case err := <-p.exited:
			return nil, fmt.Errorf("export %v exited (%v) without listening:\n%s", args, err, p.stderr.String())
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			return nil, fmt.Errorf("export %v printed no URI within 90s:\n%s", args, p.stderr.String())
		}
	}
	return p, nil
}

// stop sends SIGTERM and fails the test unless the export drains and
// exits 0. Stopping twice is harmless.
func (p *exportProc) stop(t *testing.T) {
	t.Helper()
	if p.exited == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("export after SIGTERM: %v; stderr:\n%s", err, p.stderr.String())
		}
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		t.Errorf("export did not exit within 60s of SIGTERM; stderr:\n%s", p.stderr.String())
	}
	p.exited = nil
}

// runExport runs `rbd-nbd-graph export` expecting it to fail before
// listening; returns its combined output.
func runExportFailing(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	all := append([]string{"export", "--socket", sock}, args...)
	out, err := exec.CommandContext(ctx, testkit.Binary(t), all...).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("export %v: %v (want exit status 1)\n%s", args, err, out)
	}
	return string(out)
}

// runTool runs a client tool and returns its combined output; a
// non-zero exit fails the test.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := tool(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// tool is runTool for a command that may fail; it runs in a temporary
// folder (fio leaves verify state files behind).
func tool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return testkit.RunIn(t, t.TempDir(), 3*time.Minute, testkit.Tool(t, name), args...)
}

// firstDiff is the offset of the first differing byte, or -1.
func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// nbdsh runs a Python snippet with libnbd's shell connected to uri.
// nbdsh is "python3 -m nbd" with python3 from PATH, which may be another
// Python than the one Debian's python3-libnbd is installed for (pyenv,
// virtualenvs): use Debian's interpreter when there is one.
func nbdsh(t *testing.T, uri, script string) string {
	t.Helper()
	sh := testkit.Tool(t, "nbdsh")
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return runTool(t, "/usr/bin/python3", "-m", "nbd", "-u", uri, "-c", script)
	}
	return runTool(t, sh, "-u", uri, "-c", script)
}
