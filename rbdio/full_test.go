package rbdio

import (
	"context"
	"errors"

	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// requireMgr skips (fails under RBD_NBD_GRAPH_REQUIRE=1) unless the test
// cluster runs a ceph-mgr: pool quotas are enforced from the pool
// statistics only a mgr collects. test/ceph/cluster starts one with
// RBD_NBD_GRAPH_CEPH_MGR=1, as make test-integration does.
func requireMgr(t *testing.T, conf string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ceph", "--conf", conf, "mgr", "stat").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"available": true`) {
		testkit.Missing(t, "needs a ceph-mgr in the test cluster (pool quotas are enforced from its statistics): start it with RBD_NBD_GRAPH_CEPH_MGR=1 test/ceph/cluster start DIR")
	}
}

func cephCmd(t *testing.T, conf string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ceph", append([]string{"--conf", conf}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ceph %v: %v\n%s", args, err, out)
	}
}

// A pool at its quota: by default a write waits until space is freed
// (and then completes); with AbortOnFull it fails with EDQUOT or ENOSPC
// at once.
func TestPoolQuota(t *testing.T) {
	conf := testkit.CephConf(t)
	requireMgr(t, conf)
	c := testConn(t)
	name := createImage(t, c, 64<<20)
	im := openImage(t, c, name, OpenOptions{})
	chunk := pattern(4<<20, 9)
	mustWrite(t, im, chunk, 0)
	// Made before the pool is full: creating and opening write too.
	ac, err := Connect(testContext(t), Config{ConfFile: conf, AbortOnFull: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	other := createImage(t, c, 64<<20)
	aim, err := ac.OpenImage(testContext(t), other, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cephCmd(t, conf, "osd", "pool", "set-quota", "rbd", "max_bytes", "0") })
	cephCmd(t, conf, "osd", "pool", "set-quota", "rbd", "max_bytes", "1")
	// The mon marks the pool full from the next statistics (a few s).
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, _ := exec.CommandContext(ctx, "ceph", "--conf", conf, "osd", "pool", "ls", "detail").CombinedOutput()
		cancel()
		if strings.Contains(string(out), "full_quota") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool rbd not marked full within 60s:\n%s", out)
		}
		time.Sleep(time.Second)
	}

	// Default: the write waits.
	done := make(chan error, 1)
	start := time.Now()
	go func() { _, err := im.WriteAt(chunk, 8<<20); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("a write to a full pool returned after %v (%v); want it to wait", time.Since(start), err)
	case <-time.After(5 * time.Second):
		t.Logf("default: a write to the full pool is still waiting after 5s")
	}

	// AbortOnFull: fails at once.
	start = time.Now()
	_, err = aim.WriteAt(chunk, 0)
	took := time.Since(start)
	t.Logf("AbortOnFull: write returned after %v: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, syscall.EDQUOT) && !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("AbortOnFull write: %v, want EDQUOT or ENOSPC (NBD replies ENOSPC for both)", err)
	}
	if got := nbd.Errno(err); got != nbd.ENOSPC {
		t.Errorf("AbortOnFull write: NBD reply errno %d, want ENOSPC", got)
	}
	if took > 10*time.Second {
		t.Errorf("AbortOnFull write took %v", took)
	}

	// Lifting the quota lets the waiting write finish.
	cephCmd(t, conf, "osd", "pool", "set-quota", "rbd", "max_bytes", "0")
	select {
	case err := <-done:
		t.Logf("default: the waiting write completed %v after the quota was lifted: %v", time.Since(start).Round(time.Millisecond), err)
		if err != nil {
			t.Errorf("waiting write after the quota was lifted: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Errorf("the waiting write did not complete within 90s of lifting the quota")
	}
	if err := aim.Close(); err != nil {
		t.Errorf("close after the quota was lifted: %v", err)
	}

}
