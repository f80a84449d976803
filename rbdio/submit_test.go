package rbdio

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestParseSubmitMode(t *testing.T) {
	for _, m := range SubmitModes() {
		if got, err := ParseSubmitMode(string(m)); err != nil || got != m {
			t.Errorf("ParseSubmitMode(%q) = %q, %v", m, got, err)
		}
	}
	if _, err := ParseSubmitMode("fast"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "inline") {
		t.Errorf("ParseSubmitMode(fast) = %v, want ErrInvalid naming the modes", err)
	}
	// Connect refuses it before looking for a cluster.
	if _, err := Connect(t.Context(), Config{Submit: "fast"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Connect with submit mode fast: %v, want ErrInvalid", err)
	}
}

func TestSysmonAwake(t *testing.T) {
	for _, c := range []struct {
		ldflags, env string
		want         int
	}{
		{"-X main.version=1", "", 0},
		{`-X main.version=1 -X runtime.godebugDefault=a=1,schedtrace=2147483647`, "", 2147483647},
		{`-X=runtime.godebugDefault=schedtrace=10`, "madvdontneed=1", 10},
		{`-X runtime.godebugDefault=schedtrace=10`, "schedtrace=0", 0}, // the environment wins
		{"", "x=1,schedtrace=5,schedtrace=7", 7},                       // the last one wins
	} {
		if got := schedtrace(linkedGODEBUG(c.ldflags) + "," + c.env); got != c.want {
			t.Errorf("ldflags %q GODEBUG %q: schedtrace %d, want %d", c.ldflags, c.env, got, c.want)
		}
	}
	t.Setenv("GODEBUG", "schedtrace=0")
	if SysmonAwake() {
		t.Error("SysmonAwake with GODEBUG=schedtrace=0")
	}
	t.Setenv("GODEBUG", "schedtrace=100000")
	if !SysmonAwake() {
		t.Error("not SysmonAwake with GODEBUG=schedtrace=100000")
	}
}

// TestInlineSubmission: with SubmitInline, requests made one at a time
// (the submitter asleep with nothing queued each time) are submitted by
// their caller, so the submitter thread is never woken; with
// SubmitThread it is woken for each. Counted in the thread's voluntary
// context switches (/proc/self/task/TID/status).
func TestInlineSubmission(t *testing.T) {
	for _, c := range []struct {
		mode   SubmitMode
		inline bool
	}{{SubmitThread, false}, {SubmitInline, true}} {
		t.Run(string(c.mode), func(t *testing.T) {
			conn := testConnSubmit(t, c.mode)
			name := createImage(t, conn, 4<<20)
			before := submitterThreads(t)
			im := openImage(t, conn, name, OpenOptions{})
			var tid string
			for id := range submitterThreads(t) {
				if !before[id] {
					tid = id
				}
			}
			if tid == "" {
				t.Fatal("no new rbdio-submit thread after OpenImage")
			}
			buf := pattern(4096, 3)
			const n = 200
			start := switches(t, tid)
			for i := range n {
				if i%2 == 0 {
					mustWrite(t, im, buf, int64(i%64)*4096)
				} else {
					mustRead(t, im, int64(i%64)*4096, 4096)
				}
			}
			woken := switches(t, tid) - start
			t.Logf("%s: the submitter thread switched %d times for %d requests", c.mode, woken, n)
			if c.inline && woken > n/10 {
				t.Errorf("inline: the submitter thread was woken %d times for %d requests made one at a time; want almost never", woken, n)
			}
			if !c.inline && woken < n/2 {
				t.Errorf("thread: the submitter thread was woken %d times for %d requests made one at a time; want about once each", woken, n)
			}
		})
	}
}

// submitterThreads is the set of this process's threads named
// rbdio-submit.
func submitterThreads(t *testing.T) map[string]bool {
	t.Helper()
	comms, err := filepath.Glob("/proc/self/task/*/comm")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, p := range comms {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == "rbdio-submit" {
			ids[filepath.Base(filepath.Dir(p))] = true
		}
	}
	return ids
}

// switches is thread tid's voluntary context switches so far.
func switches(t *testing.T, tid string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/task/" + tid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no voluntary_ctxt_switches in %s's status", tid)
	return 0
}
