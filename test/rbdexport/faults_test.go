package rbdexport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The tests in this file pause the whole test cluster (`ceph osd
// pause`). They are not parallel: Go runs the parallel tests of the
// package only after the sequential ones, so no other test sees the
// pause.

// cephCLI runs the ceph command against the test cluster, bounded.
func cephCLI(t *testing.T, args ...string) string {
	t.Helper()
	path := testkit.Tool(t, "ceph")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	all := append([]string{"--conf", testkit.CephConf(t), "--connect-timeout", "30"}, args...)
	out, err := exec.CommandContext(ctx, path, all...).CombinedOutput()
	if err != nil {
		t.Fatalf("ceph %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// pauseOSDs stops all client IO in the cluster (`ceph osd pause`) until
// the returned function or the test's cleanup unpauses it.
func pauseOSDs(t *testing.T) (unpause func()) {
	t.Helper()
	cephCLI(t, "osd", "pause")
	// A client learns of the pause from the next osdmap, which the
	// OSD hands it with the reply to its next request: the first
	// request after the pause may still go through (callers write in a
	// loop).
	done := false
	unpause = func() {
		if !done {
			done = true
			cephCLI(t, "osd", "unpause")
		}
	}
	t.Cleanup(unpause)
	return unpause
}

// nbdPython runs a Python snippet with libnbd connected to uri (as h),
// bounded by limit; it returns the output and the error (a timeout
// kills it).
func nbdPython(t *testing.T, uri, script string, limit time.Duration) (string, error) {
	t.Helper()
	testkit.Tool(t, "nbdsh")
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		py = testkit.Tool(t, "python3")
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	prog := "import nbd, sys, time\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n" + script
	out, err := exec.CommandContext(ctx, py, "-c", prog, uri).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), ctx.Err()
	}
	return string(out), err
}

// With --osd-timeout, a write the paused cluster cannot complete fails
// (EIO: NBD has no ETIMEDOUT) after about the timeout, instead of
// hanging; the export stays up and serves again once the OSDs are back.
func TestOSDTimeoutFailsStuckIO(t *testing.T) {
	testkit.Tool(t, "nbdsh")
	c := cluster(t)
	img := newImage(t, c, 8<<20)
	// 10 s, not less: the export's own rbd_open is bounded by the same
	// timeout, and a loaded machine's cluster took over 5 s to open one.
	p := export(t, "--osd-timeout", "10s", "rbd:rbd/"+img)
	nbdsh(t, p.uri, "h.pwrite(b'a' * 4096, 0); h.flush()")

	unpause := pauseOSDs(t)
	start := time.Now()
	out, err := nbdPython(t, p.uri, `
start = time.time()
i = 0
while time.time() - start < 20:
    t0 = time.time()
    try:
        h.pwrite(b'b' * 4096, 4096 * (i % 16 + 1))
    except nbd.Error as e:
        print("write failed errno=%s after %.1fs (%d writes went through first)" % (e.errno, time.time() - t0, i))
        break
    i += 1
    time.sleep(0.1)
else:
    print("%d writes succeeded in 20s" % i)
`, 60*time.Second)
	took := time.Since(start)
	t.Logf("paused write: %s (%v, %v)", strings.TrimSpace(out), err, took.Round(100*time.Millisecond))
	if err != nil {
		t.Fatalf("writes to paused OSDs with --osd-timeout 10s did not end within 60s: %v\n%s\nexport stderr:\n%s", err, out, p.stderr.String())
	}
	if !strings.Contains(out, "write failed errno=EIO") {
		t.Fatalf("paused write: %q, want it to fail with EIO", out)
	}
	if m := regexp.MustCompile(`after ([0-9.]+)s`).FindStringSubmatch(out); m == nil {
		t.Errorf("no duration in %q", out)
	} else if secs, _ := strconv.ParseFloat(m[1], 64); secs < 9 {
		t.Errorf("the write failed after %ss, before the 10s OSD timeout", m[1])
	}
	unpause()

	// The same export serves again, and the data written before is there.
	got := nbdsh(t, p.uri, `
h.pwrite(b'c' * 4096, 4096 * 20); h.flush()
print(h.pread(512, 0)[:1].decode(), h.pread(512, 4096 * 20)[:1].decode())
`)
	if strings.TrimSpace(got) != "a c" {
		t.Fatalf("after unpause read %q, want \"a c\"", got)
	}
}

// SIGTERM ends the export within --shutdown-timeout even while the
// paused cluster holds writes in flight and no OSD timeout is set: the
// export stops reading, waits for the requests up to the deadline, then
// exits 1 without calling into librbd again.
func TestSIGTERMWithPausedOSDsIsBounded(t *testing.T) {
	testkit.Tool(t, "nbdsh")
	c := cluster(t)
	img := newImage(t, c, 8<<20)
	// The killed export's watch outlives it by about 30 s, and the image
	// cannot be removed meanwhile: wait for it before newImage's cleanup.
	t.Cleanup(func() { waitNoWatchers(t, img, 90*time.Second) })
	const deadline = 5 * time.Second
	p, err := startExport(t, "--shutdown-timeout", deadline.String(), "rbd:rbd/"+img)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if p.exited != nil {
			p.cmd.Process.Kill()
		}
	}()
	nbdsh(t, p.uri, "h.pwrite(b'a' * 4096, 0); h.flush()")

	pauseOSDs(t)
	writer := make(chan string, 1)
	go func() {
		// Writes until one hangs; it ends when the export goes away.
		out, err := nbdPython(t, p.uri, `
t0 = time.time()
i = 0
while time.time() - t0 < 90:
    h.pwrite(b'b' * 65536, 65536 * (i % 100))
    i += 1
`, 120*time.Second)
		writer <- fmt.Sprintf("%s (%v)", strings.TrimSpace(out), err)
	}()
	time.Sleep(3 * time.Second) // the writer is now stuck on the pause

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	margin := 30 * time.Second
	select {
	case err := <-p.exited:
		p.exited = nil
		took := time.Since(start)
		t.Logf("export exited %v after SIGTERM (%v); stderr:\n%s", took.Round(100*time.Millisecond), err, p.stderr.String())
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Errorf("exit: %v, want status 1 (requests abandoned)", err)
		}
		if took < deadline-time.Second {
			t.Errorf("exited after %v, before the %v deadline, with writes in flight", took, deadline)
		}
		if !strings.Contains(p.stderr.String(), "shutdown deadline passed") {
			t.Errorf("stderr does not say the shutdown deadline passed")
		}
	case <-time.After(deadline + margin):
		t.Fatalf("export still running %v after SIGTERM with --shutdown-timeout %v; stderr:\n%s", deadline+margin, deadline, p.stderr.String())
	}
	select {
	case out := <-writer:
		t.Logf("writer: %s", out)
	case <-time.After(30 * time.Second):
		t.Errorf("the writer did not notice the export was gone")
	}
}

// waitNoWatchers waits until image has no watchers (`rbd status`), so
// it can be removed, for at most limit.
func waitNoWatchers(t *testing.T, image string, limit time.Duration) {
	t.Helper()
	rbd := testkit.Tool(t, "rbd")
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, rbd, "--conf", testkit.CephConf(t), "status", "rbd/"+image).CombinedOutput()
		cancel()
		if err == nil && strings.Contains(string(out), "Watchers: none") {
			return
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("image %s still has watchers after %v", image, limit)
}

// After `ceph osd blocklist add` of the export's client, the request that
// meets the blocklist fails (ESHUTDOWN), the export opens a new
// connection and the image again (breaking its own stale lock), and the
// next requests succeed, with the data written before intact; the
// blocklist entry stays.
func TestBlocklistedExportReopens(t *testing.T) {
	testkit.Tool(t, "nbdsh")
	c := cluster(t)
	img := newImage(t, c, 8<<20)
	p := export(t, "rbd:rbd/"+img)
	nbdsh(t, p.uri, "h.pwrite(b'a' * 4096, 0); h.flush()")

	testkit.BlocklistWatcher(t, "rbd/"+img)

	got, err := nbdPython(t, p.uri, `
t0 = time.time()
failed = None
while time.time() - t0 < 60:
    try:
        h.pwrite(b'b' * 4096, 4096); h.flush()
        print("write ok after %.1fs, failed before with %s" % (time.time() - t0, failed))
        break
    except nbd.Error as e:
        failed = failed or e.errno
        time.sleep(0.5)
else:
    print("writes still failing after 60s with", failed)
print(h.pread(512, 0)[:1].decode(), h.pread(512, 4096)[:1].decode())
`, 90*time.Second)
	t.Logf("after the blocklisting: %s (%v)", strings.TrimSpace(got), err)
	if err != nil {
		t.Fatalf("%v\n%s\nexport stderr:\n%s", err, got, p.stderr.String())
	}
	if !strings.Contains(got, "write ok after") || !strings.HasSuffix(strings.TrimSpace(got), "a b") {
		t.Fatalf("the export did not serve again after the blocklisting: %s", got)
	}
}

// The blocklist is Ceph's fencing: when another client took the image's
// lock after the export was blocklisted, the export does not take it
// back; its requests keep failing until that client lets go, then it
// reopens and serves.
func TestBlocklistedExportDoesNotStealTheLock(t *testing.T) {
	testkit.Tool(t, "nbdsh")
	c := cluster(t)
	img := newImage(t, c, 8<<20)
	p := export(t, "rbd:rbd/"+img)
	nbdsh(t, p.uri, "h.pwrite(b'a' * 4096, 0); h.flush()")

	testkit.BlocklistWatcher(t, "rbd/"+img)

	// Another client takes the image (and its lock) over.
	other, err := c.OpenImage(testContext(t), img, rbdio.OpenOptions{})
	if err != nil {
		t.Fatalf("another client opening the image after the blocklisting: %v", err)
	}
	if _, err := other.WriteAt([]byte(strings.Repeat("o", 4096)), 8192); err != nil {
		t.Fatal(err)
	}
	got, err := nbdPython(t, p.uri, `
t0 = time.time()
ok = 0
while time.time() - t0 < 8:
    try:
        h.pwrite(b'b' * 4096, 4096); ok += 1
    except nbd.Error as e:
        pass
    time.sleep(0.5)
print("writes ok while the other client held the lock:", ok)
`, 60*time.Second)
	t.Logf("%s (%v)", strings.TrimSpace(got), err)
	if err != nil || !strings.Contains(got, "lock: 0") {
		t.Fatalf("while another client held the lock: %s (%v)", got, err)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	got, err = nbdPython(t, p.uri, `
t0 = time.time()
while time.time() - t0 < 60:
    try:
        h.pwrite(b'b' * 4096, 4096); h.flush()
        print("write ok %.1fs after the other client let go" % (time.time() - t0))
        break
    except nbd.Error as e:
        time.sleep(0.5)
print(h.pread(512, 0)[:1].decode(), h.pread(512, 4096)[:1].decode(), h.pread(512, 8192)[:1].decode())
`, 90*time.Second)
	t.Logf("%s (%v)", strings.TrimSpace(got), err)
	if err != nil || !strings.Contains(got, "write ok") || !strings.HasSuffix(strings.TrimSpace(got), "a b o") {
		t.Fatalf("after the other client let go: %s (%v)", got, err)
	}
}
