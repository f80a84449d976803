//go:build vmtest

package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// The graph driver's client is blocklisted (`ceph osd blocklist add`)
// under a container that appends a counter and syncs every 0.1 s: the
// driver opens a new connection, reopens the layer and resubmits the
// requests that failed, so ext4 on the device sees no IO error and the
// container's filesystem stays writable; docker info says the
// connection was renewed.
func TestBlocklistedDriverKeepsContainersWritable(t *testing.T) {
	e := newDockerEnv(t, "rbd-nbd-blocklist")
	e.startPlugin()
	e.startDockerd()
	e.importBusybox("busybox:e2e")
	ctr := "blocklist-counter"
	e.mustDocker("run", "-d", "--name", ctr, "busybox:e2e", "sh", "-c", counterScript)
	defer e.docker(2*time.Minute, "rm", "-f", ctr)
	read := func() (string, error) { return e.docker(2*time.Minute, "exec", ctr, "cat", "/counter") }
	testkit.Eventually(t, 2*time.Minute, "the container to write 20 lines", func() bool {
		out, err := read()
		n, _ := checkCounter(out)
		return err == nil && n >= 20
	})

	// Every layer shares the driver's one connection: any watcher of
	// one of its images is that client.
	var addr string
	for _, img := range strings.Fields(testkit.Must(t, time.Minute, "rbd", "ls", "-p", "rbd")) {
		if !strings.HasPrefix(img, e.prefix) {
			continue
		}
		out, _ := testkit.Run(t, time.Minute, "rbd", "status", "rbd/"+img)
		if m := regexp.MustCompile(`watcher=(\S+)`).FindStringSubmatch(out); m != nil {
			addr = m[1]
			break
		}
	}
	if addr == "" {
		t.Fatal("no watcher on any of the driver's images")
	}
	out, _ := read()
	before, _ := checkCounter(out)
	mark := markKernelLog(t)
	testkit.Must(t, time.Minute, "ceph", "osd", "blocklist", "add", addr)
	t.Cleanup(func() { testkit.Run(t, time.Minute, "ceph", "osd", "blocklist", "rm", addr) })
	t0 := time.Now()

	testkit.Eventually(t, 2*time.Minute, "the counter to grow by 50 lines after the blocklisting", func() bool {
		out, err := read()
		m, _ := checkCounter(out)
		return err == nil && m > before+50
	})
	t.Logf("counter grew by 50 lines %.1fs after the blocklisting of %s", time.Since(t0).Seconds(), addr)
	if running := strings.TrimSpace(e.mustDocker("inspect", "--format", "{{.State.Running}}", ctr)); running != "true" {
		t.Errorf("the container is not running (State.Running = %s)", running)
	}
	if out, err := e.docker(time.Minute, "exec", ctr, "sh", "-c", "echo ok > /probe && sync && cat /probe"); err != nil || strings.TrimSpace(out) != "ok" {
		t.Errorf("the container's filesystem is not writable after the blocklisting: %v\n%s", err, out)
	}
	dropCaches(t)
	out, err := read()
	if err != nil {
		t.Fatalf("reading the counter: %v\n%s", err, out)
	}
	n, fault := checkCounter(out)
	if fault != "" {
		t.Errorf("the counter read back from the device: %s (%d good lines)", fault, n)
	}
	if bad := ioErrorLines(mark.since()); len(bad) > 0 {
		t.Errorf("%d IO error lines in the kernel log after the blocklisting:\n%s", len(bad), summarize(bad, 20))
	}
	info := e.mustDocker("info")
	if !strings.Contains(info, "Cluster Connection: renewed 1 time(s)") {
		t.Errorf("docker info does not say the connection was renewed:\n%s", info)
	}
	t.Logf("counter: %d lines before the blocklisting, %d after", before, n)
}
