package clients

import (
	"os"
	"path/filepath"
	"strings"
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
	p := startWrapped(t, nil, append([]string{"--socket", sock}, args...)...)
	if !strings.HasPrefix(p.uri, "nbd+unix://") {
		t.Fatalf("export printed %q, want an nbd+unix:// URI", p.uri)
	}
	return p.uri
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
