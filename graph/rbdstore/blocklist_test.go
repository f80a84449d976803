package rbdstore

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The tests in this file blocklist the store's client (`ceph osd
// blocklist add`); each store has a connection of its own, so no other
// test's client is touched.

// blocklistWatcher blocklists the client that watches image until the
// test ends, and returns its address.
func blocklistWatcher(t *testing.T, image string) string {
	t.Helper()
	return testkit.BlocklistWatcher(t, "rbd/"+image)
}

// oneCompletion is an nbd.Completer for one request at a time.
type oneCompletion chan error

func (c oneCompletion) Complete(tag uint64, n int, err error) { c <- err }
func (c oneCompletion) FlushCompletions()                     {}

// asyncWrite writes p at off and flushes through the asynchronous path
// the NBD loop uses; a request that does not complete within limit is
// a hang, and fails the test.
func asyncWrite(t *testing.T, be nbd.Backend, p []byte, off int64, limit time.Duration) error {
	t.Helper()
	ab := be.(nbd.AsyncBackend)
	c := make(oneCompletion, 1)
	wait := func(what string) error {
		select {
		case err := <-c:
			return err
		case <-time.After(limit):
			t.Fatalf("%s at %d did not complete within %v: a hang", what, off, limit)
			return nil
		}
	}
	ab.StartWriteAt(p, off, c, 1)
	if err := wait("write"); err != nil {
		return err
	}
	ab.StartFlush(c, 2)
	return wait("flush")
}

// blocklistStore is a store on a connection of its own with an image
// of its own, opened for writing, with "a" written at 0.
func blocklistStore(t *testing.T, prefix string) (*Store, string, nbd.Backend, *syncBuffer) {
	t.Helper()
	conf := testkit.CephConf(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := DefaultOptions()
	o.ConfigFile = conf
	conn, err := Connect(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	store := New(ctx, conn, o, slog.New(slog.NewTextHandler(logs, nil)))
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Logf("closing the store: %v", err)
		}
	})
	img := testkit.UniqueName(t, prefix)
	if err := store.CreateImage(ctx, img, 8<<20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A fresh connection: the store's may be the fenced one.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if c, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf}); err == nil {
			c.RemoveImage(ctx, img, rbdio.RemoveOptions{})
			c.Close()
		}
	})
	be, closeImg, err := store.OpenImage(ctx, graph.ImageRef{Image: img}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeImg() })
	if err := asyncWrite(t, be, bytes.Repeat([]byte("a"), 4096), 0, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return store, img, be, logs
}

// readByte reads one byte of the image at off through be.
func readByte(t *testing.T, be nbd.Backend, off int64) string {
	t.Helper()
	p := make([]byte, 512)
	if _, err := be.ReadAt(p, off); err != nil {
		t.Fatalf("read at %d: %v", off, err)
	}
	return string(p[:1])
}

// After `ceph osd blocklist add` of the store's client, a layer being
// written recovers: the store opens one new connection, reopens the
// image there (breaking its own dead instance's lock) and resubmits the
// requests that failed on the blocklisted handle, so the writer sees
// no error (an ext4 on the device would abort its journal on one), and
// metadata operations work again.
func TestBlocklistedStoreReopensItsImages(t *testing.T) {
	store, img, be, logs := blocklistStore(t, "blstore")
	// A second layer, idle during the blocklisting: it must be reopened
	// on the new connection too, not left on the dead one.
	ctx0, cancel0 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel0()
	idle := img + "-idle"
	if err := store.CreateImage(ctx0, idle, 4<<20); err != nil {
		t.Fatal(err)
	}
	defer store.RemoveImage(context.Background(), idle)
	idleBe, closeIdle, err := store.OpenImage(ctx0, graph.ImageRef{Image: idle}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer closeIdle()
	obs := &clusterRecorder{}
	store.Observe(obs)
	addr := blocklistWatcher(t, img)
	t0 := time.Now()
	var errs []error
	var firstOK time.Duration
	for time.Since(t0) < 45*time.Second {
		err := asyncWrite(t, be, bytes.Repeat([]byte("b"), 4096), 4096, 40*time.Second)
		if err == nil {
			firstOK = time.Since(t0)
			break
		}
		errs = append(errs, err)
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("blocklisted %s: first successful write+flush %.1fs after the blocklisting; %d failed before", addr, firstOK.Seconds(), len(errs))
	for i, err := range errs[:min(len(errs), 3)] {
		t.Logf("error %d: %v", i+1, err)
	}
	if firstOK == 0 {
		t.Fatalf("writes still failing 45 s after the blocklisting (%d errors, the last: %v)", len(errs), errs[len(errs)-1])
	}
	if len(errs) > 0 {
		t.Errorf("the writer saw %d errors; requests that failed on the blocklisted handle should be resubmitted on the new one", len(errs))
	}
	for i := range 20 {
		if err := asyncWrite(t, be, bytes.Repeat([]byte("c"), 4096), 8192, 30*time.Second); err != nil {
			t.Fatalf("write %d after the recovery: %v", i, err)
		}
	}
	if got := readByte(t, be, 0) + readByte(t, be, 4096) + readByte(t, be, 8192); got != "abc" {
		t.Fatalf("the image reads %q after the recovery, want abc", got)
	}

	// The idle layer was reopened without a request of its own (the
	// log says so, naming it), and serves.
	testkit.Eventually(t, 30*time.Second, "the idle layer reopened", func() bool {
		return strings.Contains(logs.String(), `msg="rbd: reopened after the blocklisting; serving again" image=rbd/`+idle)
	})
	if err := asyncWrite(t, idleBe, bytes.Repeat([]byte("i"), 4096), 0, 30*time.Second); err != nil {
		t.Fatalf("the idle layer after the recovery: %v", err)
	}
	if n := strings.Count(logs.String(), "opening a new connection for all layers"); n != 1 {
		t.Errorf("the store renewed its connection %d times for one blocklisting, want once for all layers", n)
	}
	// What the metrics endpoint shows of it: up, down during the
	// renewal, up again, one recovery.
	if got := obs.String(); got != "up down up recovered" {
		t.Errorf("the store's observer saw %q, want %q", got, "up down up recovered")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	other := img + "-meta"
	m0 := time.Now()
	if err := store.CreateImage(ctx, other, 4<<20); err != nil {
		t.Fatalf("CreateImage after the blocklisting: %v", err)
	}
	defer store.RemoveImage(context.Background(), other)
	if info, err := store.StatImage(ctx, img); err != nil || info.Size != 8<<20 {
		t.Fatalf("StatImage after the blocklisting: %+v, %v", info, err)
	}
	t.Logf("CreateImage+StatImage after the recovery: %v", time.Since(m0).Round(time.Millisecond))
}

// The blocklist is Ceph's fencing: when another client took the layer's
// lock after the blocklisting, the store does not take it back. The
// layer's IO fails at once (never hangs), the log and docker info
// (StoreStatus) name the layer, and once the other client lets go the
// store reopens it and IO works again.
func TestBlocklistedStoreDoesNotStealTheLock(t *testing.T) {
	store, img, be, logs := blocklistStore(t, "blfence")
	blocklistWatcher(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	oc, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: testkit.CephConf(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	other, err := oc.OpenImage(ctx, img, rbdio.OpenOptions{})
	if err != nil {
		t.Fatalf("another client opening the image after the blocklisting: %v", err)
	}
	if _, err := other.WriteAt(bytes.Repeat([]byte("o"), 4096), 8192); err != nil {
		t.Fatal(err)
	}

	t0 := time.Now()
	ok, failed := 0, 0
	var slowest time.Duration
	var last error
	for time.Since(t0) < 8*time.Second {
		w0 := time.Now()
		err := asyncWrite(t, be, bytes.Repeat([]byte("b"), 4096), 4096, 40*time.Second)
		slowest = max(slowest, time.Since(w0))
		if err == nil {
			ok++
		} else {
			failed++
			last = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("while another client held the lock: %d writes ok, %d failed, the slowest took %v; last error: %v", ok, failed, slowest.Round(time.Millisecond), last)
	if ok != 0 {
		t.Fatalf("%d writes succeeded while another client held the lock: the store took it back", ok)
	}
	if slowest > 15*time.Second {
		t.Errorf("a failing write took %v: fenced IO should fail promptly", slowest)
	}
	status := func() string {
		var b strings.Builder
		for _, l := range store.StoreStatus() {
			b.WriteString(l[0] + ": " + l[1] + "\n")
		}
		return b.String()
	}
	if st := status(); !strings.Contains(st, img) {
		t.Errorf("docker info does not name the fenced layer %s:\n%s", img, st)
	}
	if lg := logs.String(); !strings.Contains(lg, img) || !strings.Contains(lg, "another client holds") {
		t.Errorf("the log does not say that another client holds %s's lock:\n%s", img, lg)
	}
	t.Logf("status while fenced:\n%s", status())

	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	r0 := time.Now()
	for {
		err := asyncWrite(t, be, bytes.Repeat([]byte("b"), 4096), 4096, 40*time.Second)
		if err == nil {
			break
		}
		if time.Since(r0) > 60*time.Second {
			t.Fatalf("writes still failing 60 s after the other client let go: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("first write ok %.1fs after the other client let go", time.Since(r0).Seconds())
	if got := readByte(t, be, 0) + readByte(t, be, 4096) + readByte(t, be, 8192); got != "abo" {
		t.Fatalf("the image reads %q, want abo", got)
	}
	if st := status(); strings.Contains(st, img) {
		t.Errorf("docker info still names %s after the recovery:\n%s", img, st)
	}
}

// A blocklisting met first by a metadata operation (no layer in use saw
// it): the operation runs again on the store's new connection.
func TestBlocklistedStoreMetadataRecovers(t *testing.T) {
	store, img, _, logs := blocklistStore(t, "blmeta")
	blocklistWatcher(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t0 := time.Now()
	name := img + "-new"
	if err := store.CreateImage(ctx, name, 4<<20); err != nil {
		t.Fatalf("CreateImage after the blocklisting: %v", err)
	}
	defer store.RemoveImage(context.Background(), name)
	if _, err := store.StatImage(ctx, name); err != nil {
		t.Fatalf("StatImage after the blocklisting: %v", err)
	}
	t.Logf("CreateImage+StatImage right after the blocklisting: %v; renewals in the log: %d", time.Since(t0).Round(time.Millisecond),
		strings.Count(logs.String(), "opening a new connection for all layers"))
}

// clusterRecorder is a ClusterObserver that keeps what it was told.
type clusterRecorder struct {
	mu     sync.Mutex
	events []string
}

func (c *clusterRecorder) SetConnected(ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, map[bool]string{true: "up", false: "down"}[ok])
}

func (c *clusterRecorder) BlocklistRecovered() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, "recovered")
}

func (c *clusterRecorder) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.events, " ")
}
