package clients

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// export runs `rbd-nbd-graph export --socket S args...` and returns the
// NBD URI it prints once listening. At cleanup it sends SIGTERM and
// fails the test unless the process exits 0 (a clean drain).
func export(t *testing.T, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command(testkit.Binary(t), append([]string{"export", "--socket", sock}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	uri := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			uri <- sc.Text()
		}
		close(uri)
	}()
	exited := make(chan error, 1)
	var u string
	select {
	case u = <-uri:
	case <-time.After(30 * time.Second):
	}
	if u == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("export %v printed no URI; stderr:\n%s", args, stderr.String())
	}
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("export %v after SIGTERM: %v; stderr:\n%s", args, err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("export %v did not exit within 30s of SIGTERM", args)
		}
		if t.Failed() {
			t.Logf("export stderr:\n%s", stderr.String())
		}
	})
	if !strings.HasPrefix(u, "nbd+unix://") {
		t.Fatalf("export printed %q, want an nbd+unix:// URI", u)
	}
	return u
}

// runTool runs a client tool with a deadline and returns its combined
// output, failing the test on a non-zero exit.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	return testkit.MustIn(t, t.TempDir(), 2*time.Minute, testkit.Tool(t, name), args...)
}

// tool is runTool for a command that may fail. Tools may leave files in
// their working directory (fio's verify state): they run in a temporary
// one, out of the source tree.
func tool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return testkit.RunIn(t, t.TempDir(), 2*time.Minute, testkit.Tool(t, name), args...)
}

// sparseFile creates an all-zero file of size bytes.
func sparseFile(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// runBinary runs rbd-nbd-graph to completion and returns its output.
func runBinary(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return testkit.Run(t, 30*time.Second, testkit.Binary(t), args...)
}
