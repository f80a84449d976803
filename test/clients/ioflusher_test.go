package clients

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// Task flags in /proc/PID/task/TID/stat (field 9) that PR_SET_IO_FLUSHER
// sets.
const (
	pfMemallocNoIO  = 0x00080000
	pfLocalThrottle = 0x00100000
)

// threadFlags returns the flags of every thread of pid.
func threadFlags(t *testing.T, pid int) map[string]uint64 {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tids, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, tid := range tids {
		b, err := os.ReadFile(filepath.Join(dir, tid.Name(), "stat"))
		if err != nil {
			continue // the thread exited
		}
		// Fields after the command name, which is in parentheses and
		// may hold spaces: state is field 3, flags field 9.
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		fields := strings.Fields(rest)
		flags, err := strconv.ParseUint(fields[6], 10, 64)
		if err != nil {
			t.Fatalf("thread %s: flags %q: %v", tid.Name(), fields[6], err)
		}
		out[tid.Name()] = flags
	}
	return out
}

// TestServeIsIOFlusher: every thread of `serve` (which serves kernel
// devices) runs with PR_SET_IO_FLUSHER, so its allocations never wait
// for writeback to the devices it serves; `export` (userspace clients
// only) does not need it and does not get it.
func TestServeIsIOFlusher(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Tool(t, "root (PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "p.sock")
	cmd := exec.Command(testkit.Binary(t), "serve", "--socket", sock, "--state", filepath.Join(dir, "state.json"))
	var log strings.Builder
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not create its socket within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !hasCapSysResource(t) {
		// Sandboxes drop CAP_SYS_RESOURCE (this project's CI host
		// does; the VM suite checks the flags for real): then serve
		// must say what it could not do and why.
		if !strings.Contains(log.String(), "PR_SET_IO_FLUSHER") || !strings.Contains(log.String(), "CAP_SYS_RESOURCE") {
			t.Fatalf("without CAP_SYS_RESOURCE, serve did not warn about PR_SET_IO_FLUSHER:\n%s", log.String())
		}
		t.Logf("no CAP_SYS_RESOURCE here; serve warned: %s", strings.TrimSpace(log.String()))
		return
	}
	flags := threadFlags(t, cmd.Process.Pid)
	if len(flags) < 2 {
		t.Fatalf("serve has %d threads; want the runtime's several", len(flags))
	}
	for tid, f := range flags {
		if f&pfMemallocNoIO == 0 || f&pfLocalThrottle == 0 {
			t.Errorf("serve thread %s: flags %#x lack PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE (PR_SET_IO_FLUSHER)", tid, f)
		}
	}

	exp := exec.Command(testkit.Binary(t), "export", "--socket", filepath.Join(dir, "e.sock"), "mem:1M")
	if err := exp.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		exp.Process.Kill()
		exp.Wait()
	}()
	time.Sleep(500 * time.Millisecond)
	for tid, f := range threadFlags(t, exp.Process.Pid) {
		if f&pfMemallocNoIO != 0 {
			t.Errorf("export thread %s: flags %#x have PF_MEMALLOC_NOIO; only kernel-device servers should", tid, f)
		}
	}
}

// hasCapSysResource reports whether this process (and so its children)
// holds CAP_SYS_RESOURCE, which PR_SET_IO_FLUSHER needs.
func hasCapSysResource(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			const capSysResource = 24
			return caps&(1<<capSysResource) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}
