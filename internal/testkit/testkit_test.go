package testkit

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary, run again by TestRequirePolicy, act
// out one case in TestHelperCase instead of testing.
const helperEnv = "TESTKIT_HELPER_CASE"

func TestMain(m *testing.M) { Main(m) }

// TestHelperCase is not a test on its own: TestRequirePolicy runs it in
// a child process to see whether the kit skips or fails.
func TestHelperCase(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "":
		return // run by TestRequirePolicy only
	case "require":
		Require(t, false, "needs %s", "a unicorn")
	case "tool":
		Tool(t, "rbd-nbd-graph-no-such-tool")
	case "ceph":
		CephConf(t)
	case "bin":
		Binary(t)
	}
	t.Log("not stopped")
}

func TestRequirePolicy(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      []string
		want     string // the go test verdict line of the case
		wantText string
	}{
		{"require skips", []string{helperEnv + "=require", RequireEnv + "="}, "--- SKIP", "needs a unicorn"},
		{"require fails under REQUIRE", []string{helperEnv + "=require", RequireEnv + "=1"}, "--- FAIL", "needs a unicorn"},
		{"missing tool skips", []string{helperEnv + "=tool", RequireEnv + "=0"}, "--- SKIP", "rbd-nbd-graph-no-such-tool"},
		{"missing tool fails under REQUIRE", []string{helperEnv + "=tool", RequireEnv + "=1"}, "--- FAIL", "rbd-nbd-graph-no-such-tool"},
		{"no cluster fails under REQUIRE", []string{helperEnv + "=ceph", RequireEnv + "=1", "CEPH_CONF=", NoCephEnv + "="}, "--- FAIL", "needs CEPH_CONF"},
		{"no cluster on purpose skips under REQUIRE", []string{helperEnv + "=ceph", RequireEnv + "=1", "CEPH_CONF=", NoCephEnv + "=1"}, "--- SKIP", "make test-integration"},
		{"RBD_NBD_GRAPH_BIN naming no file fails", []string{helperEnv + "=bin", RequireEnv + "=", BinEnv + "=relative/no-such-binary"}, "--- FAIL", "no-such-binary"},
		{"CEPH_CONF naming no file fails", []string{helperEnv + "=ceph", RequireEnv + "=", "CEPH_CONF=/nonexistent/ceph.conf"}, "--- FAIL", "/nonexistent/ceph.conf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestHelperCase$", "-test.v")
			cmd.Env = append(os.Environ(), tc.env...)
			out, _ := cmd.CombinedOutput()
			if !strings.Contains(string(out), tc.want+": TestHelperCase") || !strings.Contains(string(out), tc.wantText) {
				t.Errorf("want %q and %q in the output:\n%s", tc.want, tc.wantText, out)
			}
			if strings.Contains(string(out), "not stopped") {
				t.Errorf("the test went on after the prerequisite was missing:\n%s", out)
			}
		})
	}
}

func TestRun(t *testing.T) {
	out, err := Run(t, time.Minute, "sh", "-c", "echo out; echo err >&2")
	if err != nil || out != "out\nerr\n" {
		t.Errorf("Run = %q, %v; want both streams and no error", out, err)
	}
	dir := t.TempDir()
	if out := MustIn(t, dir, time.Minute, "pwd"); strings.TrimSpace(out) != dir {
		t.Errorf("MustIn ran in %q, want %q", out, dir)
	}
	start := time.Now()
	_, err = Run(t, 200*time.Millisecond, "sleep", "30")
	if err == nil || !strings.Contains(err.Error(), "timed out after 200ms") {
		t.Errorf("Run past its timeout: %v, want a timeout error", err)
	}
	// The command is killed at the deadline, not waited for (margin for
	// a loaded machine).
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("Run past its timeout returned after %v", d)
	}
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, time.Minute, "the third poll", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Errorf("cond called %d times, want 3", n)
	}
}

func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Setenv(BinEnv, "")
	p := Binary(t)
	if p2 := Binary(t); p2 != p {
		t.Errorf("second Binary = %s, want the first build %s", p2, p)
	}
	out := Must(t, time.Minute, p, "--help")
	if !strings.Contains(out, "export") {
		t.Errorf("%s --help does not list the export command:\n%s", p, out)
	}
}

func TestUniqueName(t *testing.T) {
	a, b := UniqueName(t, "x-"), UniqueName(t, "x-")
	if a == b || !strings.HasPrefix(a, "x-testuniquename-") || len(a) != len("x-testuniquename-")+8 {
		t.Errorf("UniqueName = %q, %q; want x-testuniquename-HEX8, different each time", a, b)
	}
}

func TestRandomBytes(t *testing.T) {
	a, b, c := RandomBytes(1001, 7), RandomBytes(1001, 7), RandomBytes(1001, 8)
	if string(a) != string(b) || string(a) == string(c) || a[1000] == 0 && a[999] == 0 && a[998] == 0 {
		t.Errorf("RandomBytes: same seed must repeat, another seed differ, the tail be filled")
	}
}
