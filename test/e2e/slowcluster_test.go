//go:build vmtest

package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// osdPauseLength is how long TestOSDPause100s keeps the cluster from
// serving IO: well past the kernel's 30 s request timer (which, before
// connections were replaced, cost a multi-connection device its sockets
// one by one and then its IO) and past its 60 s dead-connection timeout.
const osdPauseLength = 100 * time.Second

// A slow cluster: three devices (1, 2 and 4 connections, the default
// io-timeout 0), ext4 on each, a writer per device doing small O_DIRECT
// writes to a file; the OSDs stop serving IO for 100 s (one pause for
// all devices). The writers stall, then complete after the unpause with
// every acknowledged block readable, the kernel logs no IO error, ext4
// stays writable, every device stays connected and `list` reports all
// their connections live (lost ones replaced through RECONFIGURE).
func TestOSDPause100s(t *testing.T) {
	testkit.RequireTools(t, "mkfs.ext4", "ceph")
	type dev struct {
		conns int
		path  string
		mnt   string
		w     *directWriter
	}
	// 1 and 4 connections as the issue asks, and 2: the case that failed
	// in the issue (with 4, 100 s costs the kernel 3 of its sockets but
	// not the device; with 2 both go and IO fails).
	devs := []*dev{{conns: 1}, {conns: 2}, {conns: 4}}
	for _, d := range devs {
		image := newImage(t, 256, "")
		d.path = mapDevice(t, image, "--connections", fmt.Sprint(d.conns))
		testkit.Must(t, 5*time.Minute, "mkfs.ext4", "-q", "-F", d.path)
		d.mnt = mountDev(t, d.path)
		t.Logf("%s: %d connection(s), ext4 on %s", d.path, d.conns, d.mnt)
	}
	mark := markKernelLog(t)
	for _, d := range devs {
		name := filepath.Base(d.path)
		d.w = startDirectWriter(t, name, filepath.Join(d.mnt, "data"), 4096, 8192, 50*time.Millisecond)
	}
	testkit.Eventually(t, 2*time.Minute, "every writer to write 20 blocks before the pause", func() bool {
		for _, d := range devs {
			if d.w.blocks() < 20 {
				return false
			}
		}
		return true
	})

	p := pauseOSDs(t)
	before := map[*dev]int{}
	for _, d := range devs {
		before[d] = d.w.blocks()
	}
	// Report while paused, so the log shows what the kernel did when.
	for end := time.Now().Add(osdPauseLength); time.Now().Before(end); {
		time.Sleep(min(20*time.Second, time.Until(end)))
		var s []string
		for _, d := range devs {
			s = append(s, fmt.Sprintf("%s %d blocks, connected %v", d.path, d.w.blocks(), isConnected(t, d.path)))
		}
		t.Logf("paused %3.0fs: %s", time.Since(p.start).Seconds(), strings.Join(s, "; "))
	}
	during := map[*dev]int{}
	for _, d := range devs {
		during[d] = d.w.blocks()
	}
	p.unpause()
	unpaused := time.Now()
	for _, d := range devs {
		// A few writes may have been acknowledged while the pause reached
		// the client; more means the pause did not stop IO and proves
		// nothing.
		if during[d]-before[d] > 10 {
			t.Fatalf("%s wrote %d blocks during the pause: the OSD pause did not hold IO", d.path, during[d]-before[d])
		}
	}

	for _, d := range devs {
		target := during[d] + 20
		deadline := time.Now().Add(3 * time.Minute)
		for d.w.blocks() < target && len(d.w.errors()) == 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if errs := d.w.errors(); len(errs) > 0 {
			t.Errorf("%s (%d connections): the writer failed: %s", d.path, d.conns, strings.Join(errs, "; "))
		} else if d.w.blocks() < target {
			t.Errorf("%s (%d connections): the writer did not resume within 3 minutes of the unpause (%d blocks)", d.path, d.conns, d.w.blocks())
		} else {
			t.Logf("%s (%d connections): writing again %.1fs after the unpause; slowest write %.1fs", d.path, d.conns,
				time.Since(unpaused).Seconds(), d.w.slowest().Seconds())
		}
	}
	for _, d := range devs {
		if !d.w.halt(2 * time.Minute) {
			t.Errorf("%s: the writer is still stuck in a write", d.path)
			continue
		}
		if bad := d.w.verify(); len(bad) > 0 {
			t.Errorf("%s: %d acknowledged blocks read back wrong: %s", d.path, len(bad), strings.Join(bad, "; "))
		}
		// ext4 must still take writes (not remounted read-only after an
		// aborted journal) and flush them.
		f := filepath.Join(d.mnt, "after-pause")
		if err := os.WriteFile(f, []byte("after the pause\n"), 0o644); err != nil {
			t.Errorf("%s: writing a file after the pause: %v", d.path, err)
		} else if out, err := testkit.Run(t, 2*time.Minute, "sync", "-f", f); err != nil {
			t.Errorf("%s: sync -f after the pause: %v\n%s", d.path, err, out)
		}
	}

	log := mark.since()
	t.Logf("kernel log about NBD since the test started:\n%s", summarize(nbdLines(log), 40))
	if bad := ioErrorLines(log); len(bad) > 0 {
		t.Errorf("%d IO error lines in the kernel log:\n%s", len(bad), summarize(bad, 20))
	}
	for _, d := range devs {
		if !isConnected(t, d.path) {
			t.Errorf("%s (%d connections) is no longer connected", d.path, d.conns)
			continue
		}
		checkAllConnections(t, d.path, d.conns)
	}
}

// --io-timeout 10s: while the OSDs are paused, an O_DIRECT write and an
// O_DIRECT read fail with EIO after about the timeout (not the kernel's
// 30 s, not never); the device stays connected through it, and once the
// cluster serves IO again a write and a read back work.
func TestIOTimeout(t *testing.T) {
	testkit.RequireTools(t, "ceph")
	image := newImage(t, 64, "")
	dev := mapDevice(t, image, "--io-timeout", "10s")
	if _, err := timedDirectIO(t, dev, true, 0, 4096, "before", time.Minute); err != nil {
		t.Fatalf("a write before the pause: %v", err)
	}
	mark := markKernelLog(t)
	p := pauseOSDs(t)

	// The pause reaches a client with its next OSD map, not at once: the
	// first writes may still go through. Probe until one is held.
	var write <-chan ioResult
	for i := 0; i < 30 && write == nil; i++ {
		c := asyncDirectIO(t, dev, true, int64(1<<20+i*4096), 4096, "paused")
		select {
		case r := <-c:
			if r.err != nil {
				t.Fatalf("a write right after the pause failed at once (%.1fs): %v", r.d.Seconds(), r.err)
			}
			t.Logf("probe write %d went through in %.1fs: the client has not seen the pause yet", i, r.d.Seconds())
			time.Sleep(time.Second)
		case <-time.After(3 * time.Second):
			write = c
		}
	}
	if write == nil {
		t.Fatalf("no write was held during 30 s of OSD pause: the pause does not work here")
	}
	read := asyncDirectIO(t, dev, false, 2<<20, 4096, "")
	for _, c := range []struct {
		what string
		res  <-chan ioResult
	}{{"write", write}, {"read", read}} {
		var r ioResult
		select {
		case r = <-c.res:
		case <-time.After(2 * time.Minute):
			r = ioResult{errStillBlocked, 2 * time.Minute}
		}
		t.Logf("O_DIRECT %s during the pause: %v after %.1fs", c.what, r.err, r.d.Seconds())
		switch {
		case errors.Is(r.err, errStillBlocked):
			t.Errorf("the %s was still blocked %v into the pause: --io-timeout 10s did not fail it", c.what, r.d)
		case r.err == nil:
			t.Errorf("the %s succeeded during the OSD pause (after %.1fs): the pause did not hold IO", c.what, r.d.Seconds())
		case !errors.Is(r.err, syscall.EIO):
			t.Errorf("the %s failed with %v, want EIO", c.what, r.err)
		case r.d < 8*time.Second || r.d > 60*time.Second:
			t.Errorf("the %s failed after %.1fs; want about the 10 s io-timeout (8-60 s)", c.what, r.d.Seconds())
		}
	}
	// The failed requests must not have cost the device its connection.
	time.Sleep(5 * time.Second)
	if !isConnected(t, dev) {
		t.Fatalf("%s lost its connection after the timed-out requests", dev)
	}
	p.unpause()

	if d, err := timedDirectIO(t, dev, true, 3<<20, 4096, "after", 3*time.Minute); err != nil {
		t.Fatalf("a write after the unpause: %v (after %.1fs)", err, d.Seconds())
	}
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBlock(t, 4096)
	want := make([]byte, 4096)
	fillBlock(want, "after", (3<<20)/4096)
	if _, err := f.ReadAt(buf, 3<<20); err != nil || string(buf) != string(want) {
		t.Fatalf("reading back the write made after the unpause: %v, %q...", err, buf[:32])
	}
	if !isConnected(t, dev) {
		t.Errorf("%s is not connected at the end", dev)
	}
	t.Logf("kernel log about NBD since the pause:\n%s", summarize(nbdLines(mark.since()), 30))
}
