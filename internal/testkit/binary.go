package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// BinEnv names the rbd-nbd-graph binary under test (make sets it to
// bin/rbd-nbd-graph); without it Binary builds one.
const BinEnv = "RBD_NBD_GRAPH_BIN"

const mainPackage = "github.com/rbd-nbd-graph/rbd-nbd-graph/cmd/rbd-nbd-graph"

// build is the binary Binary built for this test process: one per
// process, shared by its tests, removed by Main when they are done.
var build struct {
	mu      sync.Mutex
	inMain  bool
	dir     string
	path    string
	err     error
	started bool
}

// Main runs the package's tests and exits with their status; a binary
// that Binary built meanwhile is removed first. Call it from TestMain.
func Main(m *testing.M) {
	build.mu.Lock()
	build.inMain = true
	build.mu.Unlock()
	code := m.Run()
	build.mu.Lock()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	build.mu.Unlock()
	os.Exit(code)
}

// Binary is the rbd-nbd-graph binary under test: RBD_NBD_GRAPH_BIN (a
// missing file fails the test), else cmd/rbd-nbd-graph built with the
// pacific tag on first use, which needs the package's TestMain to call
// Main.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(BinEnv); p != "" {
		abs, err := filepath.Abs(p)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			t.Fatalf("%s=%s: %v (make build)", BinEnv, p, err)
		}
		return abs
	}
	build.mu.Lock()
	defer build.mu.Unlock()
	if !build.inMain {
		t.Fatalf("testkit.Binary builds the binary only under testkit.Main (call it from TestMain), or set %s", BinEnv)
	}
	if !build.started {
		build.started = true
		build.path, build.err = buildBinary()
	}
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// buildBinary builds cmd/rbd-nbd-graph into a fresh folder (build.dir).
func buildBinary() (string, error) {
	dir, err := os.MkdirTemp("", "rbd-nbd-graph-test-")
	if err != nil {
		return "", err
	}
	build.dir = dir
	path := filepath.Join(dir, "rbd-nbd-graph")
	out, err := exec.Command("go", "build", "-tags", "pacific", "-o", path, mainPackage).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building rbd-nbd-graph: %w\n%s", err, out)
	}
	return path, nil
}
