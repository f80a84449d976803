package rbdstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// A pool at its quota is named in the driver's Status (docker info) and
// in its log, once when it fills and once when it has room again, with
// the real RBD store on a real cluster (ceph osd pool set-quota). The
// kernel side (NBD, mkfs) cannot run on this host and plays no part in
// a pool's fullness: the driver runs on stand-ins for them.
func TestDriverNamesTheFullPool(t *testing.T) {
	conf := testkit.CephConf(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := cephOut(ctx, conf, "mgr", "stat"); err != nil || !strings.Contains(out, `"available": true`) {
		testkit.Require(t, false, "needs a ceph-mgr in the test cluster (quotas are enforced from its statistics): RBD_NBD_GRAPH_CEPH_MGR=1 test/ceph/cluster start DIR, as make test-integration does")
	}
	// A pool of its own: a quota on the shared pool would stall the
	// other packages' tests running against the same cluster.
	var b [4]byte
	rand.Read(b[:])
	pool := "space-" + hex.EncodeToString(b[:])
	mustCeph(t, ctx, conf, "osd", "pool", "create", pool, "8")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cephOut(ctx, conf, "osd", "pool", "set-quota", pool, "max_bytes", "0")
		cephOut(ctx, conf, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")
	})
	if out, err := exec.CommandContext(ctx, "rbd", "--conf", conf, "pool", "init", pool).CombinedOutput(); err != nil {
		t.Fatalf("rbd pool init %s: %v\n%s", pool, err, out)
	}
	conn, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf, Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	so := DefaultOptions()
	so.Pool = pool
	store := New(ctx, conn, so, nil)

	var logs syncBuffer
	opts := graph.DefaultOptions()
	opts.ImagePrefix, opts.BaseSize = "sp-", 64<<20
	d, err := graph.New(ctx, graph.Config{
		Home: filepath.Join(t.TempDir(), "home"), Options: opts, Store: store,
		Attacher: noKernelAttacher{}, Filesystem: noKernelFS{}, HostID: "host-space",
		Logger:             slog.New(slog.NewTextHandler(&logs, nil)),
		SpaceCheckInterval: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	fullLine := func() (string, bool) {
		for _, kv := range d.Status() {
			if kv[0] == "Pool Full" {
				return kv[1], true
			}
		}
		return "", false
	}
	if line, ok := fullLine(); ok {
		t.Fatalf("Status shows %q before any quota", line)
	}

	// Something to be over a 1-byte quota with.
	if err := store.CreateImage(ctx, "fill", 8<<20); err != nil {
		t.Fatal(err)
	}
	im, closeImage, err := store.OpenImage(ctx, graph.ImageRef{Image: "fill"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.WriteAt(bytes.Repeat([]byte{7}, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	closeImage()

	mustCeph(t, ctx, conf, "osd", "pool", "set-quota", pool, "max_bytes", "1")
	start := time.Now()
	line := eventuallyStatus(t, 90*time.Second, func() (string, bool) { return fullLine() })
	t.Logf("Status %.1fs after set-quota: Pool Full: %s", time.Since(start).Seconds(), line)
	for _, want := range []string{pool, "max_bytes 1 ", "wait until space is freed"} {
		if !strings.Contains(line+" ", want) {
			t.Errorf("Pool Full line %q does not say %q", line, want)
		}
	}
	for range 3 {
		d.Status()
		time.Sleep(1100 * time.Millisecond) // past the freshness window: checked again
	}
	if n := strings.Count(logs.String(), `msg="pool full`); n != 1 {
		t.Errorf("the log says the pool is full %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "pool="+pool) {
		t.Errorf("the log does not name pool %s:\n%s", pool, logs.String())
	}

	mustCeph(t, ctx, conf, "osd", "pool", "set-quota", pool, "max_bytes", "0")
	start = time.Now()
	eventuallyStatus(t, 90*time.Second, func() (string, bool) { _, full := fullLine(); return "", !full })
	t.Logf("Pool Full gone from Status %.1fs after the quota was lifted", time.Since(start).Seconds())
	if n := strings.Count(logs.String(), `msg="pool has room again`); n != 1 {
		t.Errorf("the log says the pool has room again %d times, want once:\n%s", n, logs.String())
	}
}

func eventuallyStatus(t *testing.T, limit time.Duration, f func() (string, bool)) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if s, ok := f(); ok {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v", limit)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func cephOut(ctx context.Context, conf string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ceph", append([]string{"--conf", conf}, args...)...).CombinedOutput()
	return string(out), err
}

func mustCeph(t *testing.T, ctx context.Context, conf string, args ...string) {
	t.Helper()
	if out, err := cephOut(ctx, conf, args...); err != nil {
		t.Fatalf("ceph %v: %v\n%s", args, err, out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// noKernelAttacher and noKernelFS stand in for NBD and mkfs, which this
// host lacks: the driver's base image is made in the pool, never
// formatted.
type noKernelAttacher struct{}

func (noKernelAttacher) Attach(ctx context.Context, req graph.AttachRequest) (graph.Device, error) {
	return noKernelDevice(fmt.Sprintf("/dev/null (%s)", req.Image)), nil
}
func (noKernelAttacher) Stale(context.Context) ([]graph.StaleDevice, error) { return nil, nil }

type noKernelDevice string

func (d noKernelDevice) Path() string                { return string(d) }
func (noKernelDevice) Detach(context.Context) error  { return nil }
func (noKernelDevice) Release(context.Context) error { return nil }

type noKernelFS struct{}

func (noKernelFS) Type() string                                      { return "ext4" }
func (noKernelFS) Format(context.Context, string) error              { return nil }
func (noKernelFS) Mount(context.Context, string, string, bool) error { return nil }
func (noKernelFS) Unmount(context.Context, string) error             { return nil }
func (noKernelFS) Abandon(string) error                              { return nil }
func (noKernelFS) Grow(context.Context, string, string) error        { return nil }
func (noKernelFS) Sync(context.Context, string) error                { return nil }
func (noKernelFS) Freeze(context.Context, string) (func() error, error) {
	return func() error { return nil }, nil
}
