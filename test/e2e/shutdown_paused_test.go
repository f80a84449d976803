//go:build vmtest

package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// SIGTERM to a map server while the cluster is hung (OSDs paused) with
// writes in flight: the server gives up its drain at --shutdown-timeout
// and exits, leaving the device to the kernel; once the OSDs are back,
// `attach` serves it again and the writer finishes with no IO error and
// its data verified.
func TestMapSIGTERMBoundedWhileOSDsPaused(t *testing.T) {
	testkit.RequireTools(t, "fio")
	image := newImage(t, 256, "")
	dev := mapDevice(t, image, "--dead-conn-timeout", "300s", "--shutdown-timeout", "5s")
	pid := servingPID(t, dev)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	fio := startFioVerify(t, ctx, "paused", dev)

	unpaused := false
	unpause := func() {
		if !unpaused {
			testkit.Must(t, 3*time.Minute, "ceph", "osd", "unpause")
			unpaused = true
		}
	}
	testkit.Must(t, 3*time.Minute, "ceph", "osd", "pause")
	t.Cleanup(unpause)
	time.Sleep(3 * time.Second) // writes pile up in librbd

	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 60*time.Second, "the server to exit after SIGTERM with the OSDs paused", func() bool { return !processAlive(pid) })
	took := time.Since(start)
	t.Logf("server exited %v after SIGTERM with the OSDs paused (--shutdown-timeout 5s)", took.Round(100*time.Millisecond))
	if took > 30*time.Second {
		t.Fatalf("the server took %v to exit; --shutdown-timeout is 5s", took)
	}
	if !isConnected(t, dev) {
		t.Fatalf("%s was detached by SIGTERM; it should be left to the kernel for attach", dev)
	}

	unpause()
	got := strings.TrimSpace(testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", "--dead-conn-timeout", "300s", image))
	if got != dev {
		t.Fatalf("attach printed %q, want %s", got, dev)
	}
	fio.finish(t, ctx, "the hung shutdown and the reattach")
	unmap(t, dev)
}
