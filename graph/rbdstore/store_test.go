package rbdstore

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The RBD store keeps the ImageStore contract on a real cluster.
func TestRBDStoreKeepsTheStoreContract(t *testing.T) {
	conf := testkit.CephConf(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() }) // after the suite's cleanups
	store := New(ctx, conn, DefaultOptions(), nil)
	graphtest.StoreSuite(t, store, testkit.UniqueName(t, "storesuite")+"-")

	// Data: a clone reads its parent's snapshot, writes stay its own.
	p := testkit.UniqueName(t, "storesuite-data")
	c := p + "-kid"
	t.Cleanup(func() {
		store.RemoveImage(context.Background(), c)
		store.RemoveSnapshot(context.Background(), p, "s")
		store.RemoveImage(context.Background(), p)
	})
	if err := store.CreateImage(ctx, p, 4<<20); err != nil {
		t.Fatal(err)
	}
	write := func(image string, data []byte) {
		be, closeImg, err := store.OpenImage(ctx, graph.ImageRef{Image: image}, false)
		if err != nil {
			t.Fatal(err)
		}
		defer closeImg()
		if _, err := be.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
	}
	read := func(ref graph.ImageRef) string {
		be, closeImg, err := store.OpenImage(ctx, ref, true)
		if err != nil {
			t.Fatal(err)
		}
		defer closeImg()
		buf := make([]byte, 6)
		if _, err := be.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		return string(buf)
	}
	write(p, []byte("parent"))
	if err := store.CreateSnapshot(ctx, p, "s"); err != nil {
		t.Fatal(err)
	}
	write(p, []byte("later!"))
	if err := store.CloneImage(ctx, p, "s", c); err != nil {
		t.Fatal(err)
	}
	if got := read(graph.ImageRef{Image: c}); got != "parent" {
		t.Fatalf("clone reads %q, want its parent's snapshot", got)
	}
	write(c, []byte("child!"))
	if got := read(graph.ImageRef{Image: p, Snapshot: "s"}); got != "parent" {
		t.Fatalf("snapshot reads %q after the clone wrote", got)
	}
	if got := read(graph.ImageRef{Image: c}); got != "child!" {
		t.Fatalf("clone reads %q after writing", got)
	}
	if err := store.FlattenImage(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := store.RemoveSnapshot(ctx, p, "s"); err != nil {
		t.Fatalf("removing the snapshot after flattening its only clone: %v", err)
	}
	if got := read(graph.ImageRef{Image: c}); got != "child!" {
		t.Fatalf("flattened clone reads %q", got)
	}
	if label, ver := store.StoreVersion(); label != "Ceph Version" || !strings.Contains(ver, ".") || strings.Contains(ver, "unknown") {
		t.Errorf("StoreVersion = %q, %q", label, ver)
	}
}
