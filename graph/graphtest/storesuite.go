package graphtest

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// StoreSuite checks that an ImageStore keeps the contract the Driver
// relies on. graph/rbdstore runs it against a real cluster; the
// graph tests run it against FileStore. prefix keeps the images of one
// run apart (the suite removes what it made).
func StoreSuite(t *testing.T, store graph.ImageStore, prefix string) {
	ctx := context.Background()
	const size = 8 << 20
	name := func(s string) string { return prefix + s }
	mustNot := func(t *testing.T, err error, target error, what string) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Fatalf("%s: got %v, want an error wrapping %v", what, err, target)
		}
	}
	cleanup := func(images ...string) {
		t.Cleanup(func() {
			for _, im := range images {
				store.RemoveSnapshot(ctx, im, "s")
				store.RemoveImage(ctx, im)
			}
		})
	}

	t.Run("CreateStatList", func(t *testing.T) {
		a := name("a")
		cleanup(a)
		if err := store.CreateImage(ctx, a, size); err != nil {
			t.Fatal(err)
		}
		mustNot(t, store.CreateImage(ctx, a, size), graph.ErrImageExists, "create twice")
		info, err := store.StatImage(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		if info.Size != size || info.Parent != (graph.ImageRef{}) || len(info.Snapshots) != 0 {
			t.Fatalf("stat of a new image: %+v", info)
		}
		names, err := store.ListImages(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(names, a) {
			t.Fatalf("ListImages(%q) = %v, want it to include %s", prefix, names, a)
		}
		others, err := store.ListImages(ctx, prefix+"zz-none-")
		if err != nil || len(others) != 0 {
			t.Fatalf("ListImages of an unused prefix = %v, %v; want none", others, err)
		}
		_, err = store.StatImage(ctx, name("missing"))
		mustNot(t, err, graph.ErrImageNotFound, "stat of a missing image")
	})

	t.Run("Metadata", func(t *testing.T) {
		a := name("meta")
		cleanup(a)
		if err := store.CreateImage(ctx, a, size); err != nil {
			t.Fatal(err)
		}
		if err := store.SetMetadata(ctx, a, map[string]string{"k1": "v1", "k2": "v2"}); err != nil {
			t.Fatal(err)
		}
		if err := store.SetMetadata(ctx, a, map[string]string{"k1": "", "k2": "v2b"}); err != nil {
			t.Fatal(err)
		}
		info, err := store.StatImage(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := info.Metadata["k1"]; ok || info.Metadata["k2"] != "v2b" {
			t.Fatalf("metadata after set and remove: %v", info.Metadata)
		}
		mustNot(t, store.SetMetadata(ctx, name("missing"), map[string]string{"k": "v"}), graph.ErrImageNotFound, "metadata of a missing image")
	})

	t.Run("SnapshotCloneFlattenRemove", func(t *testing.T) {
		p, c := name("parent"), name("child")
		cleanup(c, p)
		if err := store.CreateImage(ctx, p, size); err != nil {
			t.Fatal(err)
		}
		mustNot(t, store.CloneImage(ctx, p, "s", c), graph.ErrImageNotFound, "clone of a missing snapshot")
		if err := store.SetMetadata(ctx, p, map[string]string{"inherited": "from-parent"}); err != nil {
			t.Fatal(err)
		}
		if err := store.CreateSnapshot(ctx, p, "s"); err != nil {
			t.Fatal(err)
		}
		if err := store.CreateSnapshot(ctx, p, "s"); err != nil {
			t.Fatalf("CreateSnapshot must be idempotent: %v", err)
		}
		if err := store.CloneImage(ctx, p, "s", c); err != nil {
			t.Fatal(err)
		}
		mustNot(t, store.CloneImage(ctx, p, "s", c), graph.ErrImageExists, "clone onto an existing name")
		info, err := store.StatImage(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if want := (graph.ImageRef{Image: p, Snapshot: "s"}); info.Parent != want || info.Size != size {
			t.Fatalf("clone stat: %+v, want parent %v size %d", info, want, size)
		}
		// librbd's clone copies the parent's image-meta into the clone
		// (its CloneRequest does), so a new clone is not blank: the
		// Driver must tell its own records from inherited ones.
		if got := info.Metadata["inherited"]; got != "from-parent" {
			t.Fatalf("clone metadata: %v, want the parent's key inherited=from-parent (as librbd copies it)", info.Metadata)
		}
		pinfo, err := store.StatImage(ctx, p)
		if err != nil || !slices.Contains(pinfo.Snapshots, "s") {
			t.Fatalf("parent snapshots: %v, %v", pinfo.Snapshots, err)
		}
		kids, err := store.Children(ctx, p, "s")
		if err != nil || !slices.Equal(kids, []string{c}) {
			t.Fatalf("Children = %v, %v; want [%s]", kids, err, c)
		}
		mustNot(t, store.RemoveSnapshot(ctx, p, "s"), graph.ErrImageBusy, "remove a snapshot with clones")
		if err := store.RemoveImage(ctx, p); err == nil {
			t.Fatal("removing an image with snapshots succeeded")
		}
		if err := store.ResizeImage(ctx, c, 2*size); err != nil {
			t.Fatal(err)
		}
		if err := store.FlattenImage(ctx, c); err != nil {
			t.Fatal(err)
		}
		info, err = store.StatImage(ctx, c)
		if err != nil || info.Parent != (graph.ImageRef{}) || info.Size != 2*size {
			t.Fatalf("after resize and flatten: %+v, %v", info, err)
		}
		kids, err = store.Children(ctx, p, "s")
		if err != nil || len(kids) != 0 {
			t.Fatalf("Children after flatten = %v, %v; want none", kids, err)
		}
		if err := store.RemoveSnapshot(ctx, p, "s"); err != nil {
			t.Fatal(err)
		}
		if err := store.RemoveSnapshot(ctx, p, "s"); err != nil {
			t.Fatalf("removing a missing snapshot must succeed: %v", err)
		}
		mustNot(t, store.RemoveSnapshot(ctx, name("missing"), "s"), graph.ErrImageNotFound, "remove a snapshot of a missing image")
		for _, im := range []string{c, p} {
			if err := store.RemoveImage(ctx, im); err != nil {
				t.Fatal(err)
			}
			mustNot(t, store.RemoveImage(ctx, im), graph.ErrImageNotFound, "remove twice")
		}
	})
}
