//go:build vmtest

package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// killServer kills the process serving dev (a crash: nothing cleaned up)
// and checks the kernel keeps the device for a reattach.
func killServer(t *testing.T, dev string) {
	t.Helper()
	pid := servingPID(t, dev)
	if e := findEntry(listJSON(t), dev); e != nil && e.PID > 0 {
		pid = e.PID // after a reattach, sysfs still names the first server
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the server to die", func() bool { return !processAlive(pid) })
	if !isConnected(t, dev) {
		t.Fatalf("%s lost its configuration when its server died", dev)
	}
}

// Reattach is safe: it refuses a mem: target (a blank disk under
// whatever the device held), keeps the device's logical block size
// instead of taking the flag default, and refuses to flip a device
// between read-only and read-write unless forced.
func TestReattachSafety(t *testing.T) {
	t.Run("MemRefused", func(t *testing.T) {
		dev := mapDevice(t, "mem:64M")
		killServer(t, dev)
		out, err := testkit.Run(t, time.Minute, testkit.Binary(t), "attach", "mem:64M")
		if err == nil {
			t.Fatalf("attach of a mem: target succeeded (a blank disk under the device):\n%s", out)
		}
		if !strings.Contains(out, "mem:") {
			t.Errorf("the refusal does not name mem: targets:\n%s", out)
		}
		if !isConnected(t, dev) {
			t.Errorf("%s was detached by the refused attach", dev)
		}
		testkit.Must(t, time.Minute, testkit.Binary(t), "unmap", "--force", dev)
	})

	t.Run("BlockSize512Kept", func(t *testing.T) {
		image := newImage(t, 64, "")
		dev := mapDevice(t, image, "--block-size", "512")
		if got := sysBlock(t, dev, "queue/logical_block_size"); got != "512" {
			t.Fatalf("map --block-size 512: logical_block_size %s", got)
		}
		if _, err := timedDirectIO(t, dev, true, 512, 512, "mapped", time.Minute); err != nil {
			t.Fatalf("a 512-byte write before the reattach: %v", err)
		}
		killServer(t, dev)
		// No --block-size: the default (4096) must not replace 512.
		got := strings.TrimSpace(testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", image))
		if got != dev {
			t.Fatalf("attach printed %q, want %s", got, dev)
		}
		if got := sysBlock(t, dev, "queue/logical_block_size"); got != "512" {
			t.Errorf("after the reattach logical_block_size is %s, want 512", got)
		}
		// The kernel still sends 512-byte requests; the new server must
		// serve them.
		if _, err := timedDirectIO(t, dev, true, 1536, 512, "reattached", time.Minute); err != nil {
			t.Fatalf("a 512-byte O_DIRECT write after the reattach: %v", err)
		}
		for _, c := range []struct {
			off  int64
			name string
		}{{512, "mapped"}, {1536, "reattached"}} {
			buf := alignedBlock(t, 512)
			want := make([]byte, 512)
			fillBlock(want, c.name, int(c.off/512))
			if err := readAt(dev, buf, c.off); err != nil || string(buf) != string(want) {
				t.Errorf("512-byte block at %d reads %q... (%v), want %q...", c.off, buf[:24], err, want[:24])
			}
		}
		unmap(t, dev)
	})

	t.Run("ReadOnlyFlipRefused", func(t *testing.T) {
		image := newImage(t, 64, "")

		// A read-write device: attaching it read-only is refused...
		dev := mapDevice(t, image)
		killServer(t, dev)
		out, err := testkit.Run(t, time.Minute, testkit.Binary(t), "attach", "--read-only", image)
		if err == nil {
			t.Fatalf("attach --read-only of a read-write device succeeded without --force:\n%s", out)
		}
		if !strings.Contains(out, "read-only") && !strings.Contains(out, "read-write") {
			t.Errorf("the refusal does not say why (read-only/read-write):\n%s", out)
		}
		if !isConnected(t, dev) {
			t.Fatalf("%s was detached by the refused attach", dev)
		}
		// ...and the same mode is not.
		if got := strings.TrimSpace(testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", image)); got != dev {
			t.Fatalf("attach printed %q, want %s", got, dev)
		}
		if _, err := timedDirectIO(t, dev, true, 0, 4096, "rw", time.Minute); err != nil {
			t.Errorf("a write after the same-mode reattach: %v", err)
		}
		unmap(t, dev)

		// A read-only device: attaching it read-write is refused; --force
		// is the operator saying so.
		dev = mapDevice(t, image, "--read-only")
		killServer(t, dev)
		out, err = testkit.Run(t, time.Minute, testkit.Binary(t), "attach", image)
		if err == nil {
			t.Fatalf("attach (read-write) of a read-only device succeeded without --force:\n%s", out)
		}
		if !strings.Contains(out, "read-only") && !strings.Contains(out, "read-write") {
			t.Errorf("the refusal does not say why (read-only/read-write):\n%s", out)
		}
		if !isConnected(t, dev) {
			t.Fatalf("%s was detached by the refused attach", dev)
		}
		if got := strings.TrimSpace(testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", "--force", image)); got != dev {
			t.Fatalf("attach --force printed %q, want %s", got, dev)
		}
		if _, err := timedDirectIO(t, dev, false, 0, 4096, "", time.Minute); err != nil {
			t.Errorf("a read after attach --force: %v", err)
		}
		unmap(t, dev)
	})
}

// readAt reads len(buf) bytes at off with O_DIRECT (buf must be aligned).
func readAt(path string, buf []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.ReadAt(buf, off)
	return err
}

// The processes that serve kernel devices never deadlock on their own
// devices' writeback: every thread of a `map` server, of an `attach`
// server and of `serve` carries PR_SET_IO_FLUSHER, which the kernel shows
// as PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE in the flags of
// /proc/PID/task/TID/stat. Threads the Go runtime started after some IO
// are checked too.
func TestIOFlusher(t *testing.T) {
	const (
		pfMemallocNoIO   = 0x00080000
		pfLocalThrottle  = 0x00100000
		ioFlusher        = pfMemallocNoIO | pfLocalThrottle
		threadsAtLeast   = 2
		checkDescription = "PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE (PR_SET_IO_FLUSHER)"
	)
	check := func(t *testing.T, what string, pid int) {
		t.Helper()
		flags := taskFlags(t, pid)
		if len(flags) < threadsAtLeast {
			t.Logf("%s (pid %d) has only %d thread(s)", what, pid, len(flags))
		}
		var missing []string
		for tid, f := range flags {
			if f&ioFlusher != ioFlusher {
				missing = append(missing, fmt.Sprintf("tid %d flags %#x", tid, f))
			}
		}
		if len(missing) > 0 {
			t.Errorf("%s (pid %d): %d of %d threads lack %s: %s", what, pid, len(missing), len(flags), checkDescription,
				strings.Join(missing, "; "))
		} else {
			t.Logf("%s (pid %d): all %d threads have %s", what, pid, len(flags), checkDescription)
		}
	}

	t.Run("MapAndAttach", func(t *testing.T) {
		testkit.RequireTools(t, "dd")
		image := newImage(t, 64, "")
		dev := mapDevice(t, image, "--connections", "2")
		testkit.Must(t, 2*time.Minute, "dd", "if=/dev/urandom", "of="+dev, "bs=64k", "count=64", "oflag=direct")
		check(t, "the map server", servingPID(t, dev))
		killServer(t, dev)
		testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", image)
		testkit.Must(t, 2*time.Minute, "dd", "if="+dev, "of=/dev/null", "bs=64k", "count=64", "iflag=direct")
		e := findEntry(listJSON(t), dev)
		if e == nil || e.PID <= 0 {
			t.Fatalf("list shows no serving process of %s after attach: %+v", dev, e)
		}
		check(t, "the attach server", e.PID)
		unmap(t, dev)
	})

	t.Run("Serve", func(t *testing.T) {
		e := newDockerEnv(t, "rbd-nbd-flusher")
		e.startPlugin()
		check(t, "serve", e.plugin.Process.Pid)
		e.stopPlugin()
	})
}
