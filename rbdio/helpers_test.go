package rbdio

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// The integration tests run against the cluster CEPH_CONF names
// (test/ceph/cluster start DIR; eval "$(test/ceph/cluster env DIR)"),
// under internal/testkit's require-or-skip policy.

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// testConn connects to the test cluster's pool rbd; closed at cleanup.
func testConn(t testing.TB) *Conn { return testConnSubmit(t, SubmitAuto) }

// testConnSubmit is testConn with the given submit mode.
func testConnSubmit(t testing.TB, mode SubmitMode) *Conn {
	t.Helper()
	conf := testkit.CephConf(t)
	c, err := Connect(testContext(t), Config{ConfFile: conf, ConnectTimeout: 20 * time.Second, Submit: mode})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// eachSubmitMode runs test once per way a request reaches librbd, each
// on a connection of its own: the data path's tests must hold for both.
func eachSubmitMode(t *testing.T, test func(t *testing.T, c *Conn)) {
	for _, mode := range []SubmitMode{SubmitThread, SubmitInline} {
		t.Run(string(mode), func(t *testing.T) { test(t, testConnSubmit(t, mode)) })
	}
}

// imageName returns a fresh image name for this test; the image (and
// its snapshots) are removed at cleanup if they exist. Register clones
// after their parents: cleanups run last-in first-out.
func imageName(t testing.TB, c *Conn) string {
	t.Helper()
	name := testkit.UniqueName(t, "rbdio-test-")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := c.RemoveImage(ctx, name, RemoveOptions{Snapshots: true})
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrClosed) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name
}

// createImage makes a fresh image of size bytes with default features.
func createImage(t testing.TB, c *Conn, size int64) string {
	t.Helper()
	name := imageName(t, c)
	if err := c.CreateImage(testContext(t), name, CreateOptions{Size: size}); err != nil {
		t.Fatalf("CreateImage: %v", err)
	}
	return name
}

// openImage opens name; closed at cleanup.
func openImage(t testing.TB, c *Conn, name string, opts OpenOptions) *Image {
	t.Helper()
	im, err := c.OpenImage(testContext(t), name, opts)
	if err != nil {
		t.Fatalf("OpenImage(%s, %+v): %v", name, opts, err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// pattern fills n bytes with a pattern derived from seed.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) ^ seed
	}
	return p
}

// mustRead reads n bytes at off.
func mustRead(t testing.TB, im *Image, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if k, err := im.ReadAt(p, off); err != nil || k != n {
		t.Fatalf("ReadAt(%d, %d) = %d, %v", off, n, k, err)
	}
	return p
}

// mustWrite writes p at off.
func mustWrite(t testing.TB, im *Image, p []byte, off int64) {
	t.Helper()
	if k, err := im.WriteAt(p, off); err != nil || k != len(p) {
		t.Fatalf("WriteAt(%d, %d) = %d, %v", off, len(p), k, err)
	}
}
