//go:build vmtest

package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// The serving process dies (SIGKILL) while fio writes with verification;
// the kernel holds the IO (dead-connection timeout), a new process
// reattaches the live device through RECONFIGURE, found by its backend
// identifier, and fio finishes with no IO error and its verify passing.
//
// fio's writes are plain (no O_SYNC, no flushes): the server acknowledges
// a write only once the cluster has it (rbdio.CacheNone, the
// default), so nothing the kernel counts as written dies with the
// killed process, and verify reads every block back.
func TestReattachAfterKill(t *testing.T) {
	testkit.RequireTools(t, "fio")
	image := newImage(t, 256, "")
	dev := mapDevice(t, image, "--dead-conn-timeout", "180s")
	pid := servingPID(t, dev)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Let fio get going, then kill the server in the middle of its writes.
	fio := startFioVerify(t, ctx, "reattach", dev)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the server to die", func() bool { return !processAlive(pid) })
	t.Logf("killed the server (pid %d) while fio was writing", pid)
	if !isConnected(t, dev) {
		t.Fatalf("%s lost its configuration when its server died; the kernel should wait for a reattach", dev)
	}
	time.Sleep(2 * time.Second) // IO piles up in the kernel meanwhile

	got := strings.TrimSpace(testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", "--dead-conn-timeout", "180s", image))
	if got != dev {
		t.Fatalf("attach printed %q, want the live device %s", got, dev)
	}
	// The kernel keeps the pid of the original CONNECT in sysfs; the new
	// server is the process that attach left behind.
	t.Logf("reattached %s (sysfs pid still %s)", dev, sysBlock(t, dev, "pid"))
	e := findEntry(listJSON(t), dev)
	if e == nil || e.PID == pid || !processAlive(e.PID) {
		t.Fatalf("list after the reattach: %+v; want %s served by a new live process", e, dev)
	}
	newPID := e.PID

	fio.finish(t, ctx, "the kill and the reattach")
	unmap(t, dev)
	if processAlive(newPID) {
		t.Errorf("the reattached server %d still runs after unmap", newPID)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fioRun is fio writing 16 MiB of 4 KiB random blocks with
// verification, running in the background across a fault.
type fioRun struct {
	out  bytes.Buffer
	done chan error
}

// startFioVerify starts it on dev (until ctx ends) and checks that it is
// still writing 3 s later, when the test may inject its fault.
func startFioVerify(t *testing.T, ctx context.Context, name, dev string) *fioRun {
	t.Helper()
	f := &fioRun{done: make(chan error, 1)}
	cmd := exec.CommandContext(ctx, "fio", "--name="+name, "--filename="+dev, "--ioengine=libaio",
		"--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=16M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0")
	cmd.Stdout, cmd.Stderr = &f.out, &f.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { f.done <- cmd.Wait() }()
	time.Sleep(3 * time.Second)
	select {
	case err := <-f.done:
		t.Fatalf("fio finished before the fault (make it longer): %v\n%s", err, f.out.String())
	default:
	}
	return f
}

// finish waits for fio until ctx ends and fails the test unless it
// finished with no error and its verify passed; across names the fault.
func (f *fioRun) finish(t *testing.T, ctx context.Context, across string) {
	t.Helper()
	select {
	case err := <-f.done:
		if err != nil || !strings.Contains(f.out.String(), "err= 0") {
			t.Fatalf("fio across %s: %v\n%s", across, err, f.out.String())
		}
	case <-ctx.Done():
		t.Fatalf("fio did not finish after %s\n%s", across, f.out.String())
	}
	t.Logf("fio finished, verify passed:\n%s", lastLines(f.out.String(), 8))
}
