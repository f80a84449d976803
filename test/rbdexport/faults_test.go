package rbdexport

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The tests in this file pause the whole test cluster (`ceph osd
// pause`). They are not parallel: Go runs the parallel tests of the
// package only after the sequential ones, so no other test sees the
// pause.

// cephCLI runs the ceph command against the test cluster, bounded.
func cephCLI(t *testing.T, args ...string) string {
	t.Helper()
	path := requireTool(t, "ceph")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	all := append([]string{"--conf", cephConf(t), "--connect-timeout", "30"}, args...)
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
	requireTool(t, "nbdsh")
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		py = requireTool(t, "python3")
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
	requireTool(t, "nbdsh")
	c := cluster(t)
	img := newImage(t, c, 8<<20)
	p := export(t, "--osd-timeout", "5s", "rbd:rbd/"+img)
	nbdsh(t, p.uri, "h.pwrite(b'a' * 4096, 0); h.flush()")

	unpause := pauseOSDs(t)
	start := time.Now()
	out, err := nbdPython(t, p.uri, `
for i in range(10):
    t0 = time.time()
    try:
        h.pwrite(b'b' * 4096, 4096 * (i + 1))
        print("write %d succeeded" % i)
    except nbd.Error as e:
        print("write failed errno=%s after %.1fs" % (e.errno, time.time() - t0))
        break
`, 45*time.Second)
	took := time.Since(start)
	t.Logf("paused write: %s (%v, %v)", strings.TrimSpace(out), err, took.Round(100*time.Millisecond))
	if err != nil {
		t.Fatalf("writes to paused OSDs with --osd-timeout 5s did not end within 45s: %v\n%s\nexport stderr:\n%s", err, out, p.stderr.String())
	}
	if !strings.Contains(out, "write failed errno=EIO") {
		t.Fatalf("paused write: %q, want it to fail with EIO", out)
	}
	if took < 4*time.Second {
		t.Errorf("the write failed after %v, before the 5s OSD timeout", took)
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
