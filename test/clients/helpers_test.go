package clients

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binary is the rbd-nbd-graph executable under test.
var binary string

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "test/clients:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	binary = os.Getenv("RBD_NBD_GRAPH_BIN")
	if binary == "" {
		dir, err := os.MkdirTemp("", "rbd-nbd-graph-clients-")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "rbd-nbd-graph")
		cmd := exec.Command("go", "build", "-tags", "pacific", "-o", binary, "github.com/rbd-nbd-graph/rbd-nbd-graph/cmd/rbd-nbd-graph")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("building rbd-nbd-graph: %w", err)
		}
	}
	return m.Run(), nil
}

// requireTool returns the path of tool, skipping the test without it
// unless RBD_NBD_GRAPH_REQUIRE=1, where it fails instead.
func requireTool(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("RBD_NBD_GRAPH_REQUIRE") == "1" {
			t.Fatalf("%s not found and RBD_NBD_GRAPH_REQUIRE=1: %v", tool, err)
		}
		t.Skipf("%s not installed (make deps installs it): %v", tool, err)
	}
	return p
}

// export runs `rbd-nbd-graph export --socket S args...` and returns the
// NBD URI it prints once listening. At cleanup it sends SIGTERM and
// fails the test unless the process exits 0 (a clean drain).
func export(t *testing.T, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command(binary, append([]string{"export", "--socket", sock}, args...)...)
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
	out, err := tool(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func tool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	path := requireTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	// Tools may leave files in their working directory (fio's verify
	// state): keep them out of the source tree.
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// randomFile writes size random bytes (seeded, so failures repeat) to a
// new file and returns its path and contents.
func randomFile(t *testing.T, dir string, size int, seed uint64) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(data); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	p := filepath.Join(dir, fmt.Sprintf("random-%d.bin", seed))
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
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
func runBinary(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	return string(out), err
}
