package graphtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// RenameSuite is the contract of graph.ImageRenamer, which publishing
// shared layers depends on: a rename onto a taken name fails with
// ErrImageExists and changes nothing; a rename moves the image with its
// snapshot, and its clones read through the new name.
func RenameSuite(t *testing.T, store graph.ImageStore, prefix string) {
	t.Helper()
	r, ok := store.(graph.ImageRenamer)
	if !ok {
		t.Fatalf("%T has no RenameImage", store)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, kid, to := prefix+"rn-parent", prefix+"rn-kid", prefix+"rn-published"
	t.Cleanup(func() {
		ctx := context.Background()
		store.RemoveImage(ctx, kid)
		for _, im := range []string{p, to} {
			store.RemoveSnapshot(ctx, im, "s")
			store.RemoveImage(ctx, im)
		}
	})
	if err := store.CreateImage(ctx, p, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := store.CreateSnapshot(ctx, p, "s"); err != nil {
		t.Fatal(err)
	}
	if err := store.CloneImage(ctx, p, "s", kid); err != nil {
		t.Fatal(err)
	}
	if err := r.RenameImage(ctx, p, kid); !errors.Is(err, graph.ErrImageExists) {
		t.Fatalf("rename onto an existing image: %v, want ErrImageExists", err)
	}
	if _, err := store.StatImage(ctx, p); err != nil {
		t.Fatalf("a refused rename moved the image: %v", err)
	}
	if err := r.RenameImage(ctx, p, to); err != nil {
		t.Fatal(err)
	}
	if _, err := store.StatImage(ctx, p); !errors.Is(err, graph.ErrImageNotFound) {
		t.Fatalf("the old name after a rename: %v, want ErrImageNotFound", err)
	}
	info, err := store.StatImage(ctx, to)
	if err != nil || len(info.Snapshots) != 1 || info.Snapshots[0] != "s" {
		t.Fatalf("the renamed image = %+v, %v; want it with its snapshot s", info, err)
	}
	ki, err := store.StatImage(ctx, kid)
	if err != nil || ki.Parent != (graph.ImageRef{Image: to, Snapshot: "s"}) {
		t.Fatalf("the clone's parent after the rename = %+v, %v; want %s@s", ki.Parent, err, to)
	}
	kids, err := store.Children(ctx, to, "s")
	if err != nil || len(kids) != 1 || kids[0] != kid {
		t.Fatalf("children of %s@s = %v, %v; want [%s]", to, kids, err, kid)
	}
	if err := r.RenameImage(ctx, p, prefix+"rn-none"); !errors.Is(err, graph.ErrImageNotFound) {
		t.Fatalf("rename of a missing image: %v, want ErrImageNotFound", err)
	}
}
