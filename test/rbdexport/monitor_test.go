package rbdexport

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// ownCluster starts a one-node cluster of the test's own (the shared one
// serves the other packages' tests at the same time, and stopping its
// monitor would stall them) and returns its folder and ceph.conf; the
// test's cleanup purges it.
func ownCluster(t *testing.T) (script, dir, conf string) {
	t.Helper()
	testkit.CephConf(t) // the same precondition as the other Ceph tests
	for _, tool := range []string{"ceph-mon", "ceph-osd", "ceph", "rbd"} {
		testkit.Tool(t, tool)
	}
	script, err := filepath.Abs(filepath.Join("..", "ceph", "cluster"))
	if err != nil {
		t.Fatal(err)
	}
	// Short: the daemons' admin sockets live below it.
	dir, err = os.MkdirTemp("", "rbdexport-mon-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, script, "purge", dir).CombinedOutput(); err != nil {
			t.Errorf("purge the test's cluster: %v\n%s", err, out)
		}
		os.RemoveAll(dir)
	})
	clusterCmd(t, script, "start", dir)
	return script, dir, filepath.Join(dir, "ceph.conf")
}

// clusterCmd runs test/ceph/cluster CMD DIR, bounded.
func clusterCmd(t *testing.T, script, cmd, dir string) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	if out, err := exec.CommandContext(ctx, script, cmd, dir).CombinedOutput(); err != nil {
		t.Fatalf("test/ceph/cluster %s: %v\n%s", cmd, err, out)
	}
	return time.Since(start)
}

// The monitor goes away while `export rbd:` serves a client that keeps
// writing, and comes back: the writes go on (the OSDs serve a client
// that already has the OSD map without a monitor), nothing fails or
// waits long, what needs a monitor (a new connection) fails in bounded
// time while it is away and works once it is back, the data is intact
// and SIGTERM still ends the export.
func TestMonitorLostMidRun(t *testing.T) {
	testkit.Tool(t, "nbdsh")
	script, dir, conf := ownCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf, ConnectTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, img := range []string{"mon-a", "mon-b"} {
		if err := c.CreateImage(ctx, img, rbdio.CreateOptions{Size: 8 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	p := export(t, "--ceph-conf", conf, "rbd:rbd/mon-a")

	// The client writes (with a flush each) for 60 s, recording the
	// slowest write and every error, then reads everything back.
	type ioResult struct {
		out string
		err error
	}
	io := make(chan ioResult, 1)
	go func() {
		out, err := nbdPython(t, p.uri, `
t0 = time.time(); n = 0; worst = 0.0; errs = []; last = {}
while time.time() - t0 < 60:
    off = (n % 512) * 4096; b = bytes([n % 251]) * 4096
    s = time.time()
    try:
        h.pwrite(b, off); h.flush(); last[off] = b
    except nbd.Error as e:
        errs.append("%.1fs: %s" % (time.time() - t0, e))
    worst = max(worst, time.time() - s); n += 1
    time.sleep(0.01)
bad = [off for off, b in last.items() if h.pread(4096, off) != b]
print("writes=%d worst=%.2f errors=%d bad=%d" % (n, worst, len(errs), len(bad)))
print("\n".join(errs[:5]))
`, 120*time.Second)
		io <- ioResult{out, err}
	}()

	time.Sleep(8 * time.Second)
	took := clusterCmd(t, script, "stop-mon", dir)
	t.Logf("monitor stopped (%.1fs)", took.Seconds())
	// What needs a monitor fails, bounded by its connect timeout.
	start := time.Now()
	out := runExportFailing(t, "--ceph-conf", conf, "--connect-timeout", "3s", "rbd:rbd/mon-b")
	t.Logf("a new export while the monitor is away fails after %.1fs", time.Since(start).Seconds())
	mustMatch(t, out, `cluster unreachable`)
	time.Sleep(12 * time.Second)
	took = clusterCmd(t, script, "start-mon", dir)
	t.Logf("monitor started again (%.1fs)", took.Seconds())

	// Once it is back, a new connection works again.
	start = time.Now()
	q := export(t, "--ceph-conf", conf, "--connect-timeout", "60s", "rbd:rbd/mon-b")
	nbdsh(t, q.uri, "h.pwrite(b'q' * 4096, 0); h.flush()")
	t.Logf("a new export serves %.1fs after the monitor came back", time.Since(start).Seconds())

	r := <-io
	t.Logf("client of the first export: %s", strings.TrimSpace(r.out))
	if r.err != nil {
		t.Fatalf("the writing client: %v\n%s\nexport stderr:\n%s", r.err, r.out, p.stderr.String())
	}
	m := regexp.MustCompile(`writes=(\d+) worst=([\d.]+) errors=(\d+) bad=(\d+)`).FindStringSubmatch(r.out)
	if m == nil {
		t.Fatalf("no summary from the client:\n%s", r.out)
	}
	writes, _ := strconv.Atoi(m[1])
	worst, _ := strconv.ParseFloat(m[2], 64)
	if m[3] != "0" || m[4] != "0" {
		t.Errorf("%s IO errors and %s blocks read back wrong across the monitor's absence", m[3], m[4])
	}
	if worst > 10 {
		t.Errorf("the slowest write took %.1fs across the monitor's absence", worst)
	}
	if writes < 100 {
		t.Errorf("only %d writes in 60s", writes)
	}
	start = time.Now()
	p.stop(t)
	t.Logf("export stopped %.1fs after SIGTERM", time.Since(start).Seconds())
}
