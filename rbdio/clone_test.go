package rbdio

import (
	"bytes"
	"errors"
	"testing"
)

// The layer life cycle the graph driver runs: base image, snapshot,
// protect, clone, write to the clone, read the parent's data through it,
// flatten, then remove in the right order. The wrong orders are refused
// with clear errors and leave everything in place.
func TestCloneLifecycle(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	const size = 16 << 20
	base := createImage(t, c, size)

	parentData := pattern(64<<10, 1)
	im := openImage(t, c, base, OpenOptions{})
	mustWrite(t, im, parentData, 0)
	mustWrite(t, im, parentData, 8<<20) // a second object
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}

	if err := c.CreateSnapshot(ctx, base, "s1"); err != nil {
		t.Fatal(err)
	}
	child := imageName(t, c)
	if err := c.Clone(ctx, base, "s1", child, CreateOptions{}); !errors.Is(err, ErrNotProtected) {
		t.Fatalf("clone of an unprotected snapshot: %v, want ErrNotProtected", err)
	}
	if _, err := c.Stat(ctx, child); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused clone left an image behind: Stat = %v", err)
	}
	if err := c.ProtectSnapshot(ctx, base, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := c.ProtectSnapshot(ctx, base, "s1"); err != nil {
		t.Fatalf("protecting twice: %v", err)
	}
	if err := c.Clone(ctx, base, "s1", child, CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The clone reads the parent's data, and its own writes stay its own.
	cim := openImage(t, c, child, OpenOptions{})
	if cim.Size() != size {
		t.Errorf("clone size %d, want %d", cim.Size(), size)
	}
	if got := mustRead(t, cim, 0, len(parentData)); !bytes.Equal(got, parentData) {
		t.Fatal("clone does not read the parent's data")
	}
	childData := pattern(4096, 2)
	mustWrite(t, cim, childData, 4096) // inside the parent's first object
	want := append([]byte(nil), parentData...)
	copy(want[4096:], childData)
	if got := mustRead(t, cim, 0, len(want)); !bytes.Equal(got, want) {
		t.Fatal("clone: own write merged wrongly with the parent's data")
	}
	pim := openImage(t, c, base, OpenOptions{Snapshot: "s1"})
	if got := mustRead(t, pim, 0, len(parentData)); !bytes.Equal(got, parentData) {
		t.Fatal("the clone's write changed the parent snapshot")
	}
	pim.Close()

	kids, err := c.Children(ctx, base, "s1")
	if err != nil || len(kids) != 1 || kids[0].Image != child || kids[0].Pool != "rbd" {
		t.Fatalf("Children = %v, %v; want [rbd/%s]", kids, err, child)
	}
	parent, ok, err := c.Parent(ctx, child)
	if err != nil || !ok || parent.Image != base || parent.Snapshot != "s1" {
		t.Fatalf("Parent = %v, %v, %v", parent, ok, err)
	}

	// Wrong order: the parent and its snapshot cannot go while the clone depends on them.
	err = c.RemoveImage(ctx, base, RemoveOptions{Snapshots: true})
	if !errors.Is(err, ErrHasChildren) || !bytes.Contains([]byte(err.Error()), []byte(child)) {
		t.Fatalf("RemoveImage(parent) = %v, want ErrHasChildren naming the clone", err)
	}
	if err := c.UnprotectSnapshot(ctx, base, "s1"); !errors.Is(err, ErrHasChildren) {
		t.Fatalf("UnprotectSnapshot with a clone = %v, want ErrHasChildren", err)
	}
	if err := c.RemoveSnapshot(ctx, base, "s1"); !errors.Is(err, ErrProtected) {
		t.Fatalf("RemoveSnapshot(protected) = %v, want ErrProtected", err)
	}
	if info, err := c.Stat(ctx, base); err != nil || len(info.Snapshots) != 1 || !info.Snapshots[0].Protected {
		t.Fatalf("after refused removals: Stat = %+v, %v", info, err)
	}

	// Flatten while the clone is open for IO (the graph driver does that).
	if err := c.Flatten(ctx, child); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.Parent(ctx, child); err != nil || ok {
		t.Fatalf("after Flatten: Parent ok=%v err=%v", ok, err)
	}
	if kids, err := c.Children(ctx, base, "s1"); err != nil || len(kids) != 0 {
		t.Fatalf("after Flatten: Children = %v, %v", kids, err)
	}
	if err := c.Flatten(ctx, child); err != nil {
		t.Errorf("Flatten of a flat image: %v", err)
	}

	// Right order: unprotect, remove the snapshot, remove the parent.
	if err := c.UnprotectSnapshot(ctx, base, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveSnapshot(ctx, base, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveImage(ctx, base, RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	// The flattened clone keeps all of its data.
	if got := mustRead(t, cim, 0, len(want)); !bytes.Equal(got, want) {
		t.Fatal("flattened clone lost data after the parent was removed")
	}
	if got := mustRead(t, cim, 8<<20, len(parentData)); !bytes.Equal(got, parentData) {
		t.Fatal("flattened clone lost the parent's second object")
	}
	if err := cim.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveImage(ctx, child, RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	names, err := c.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if contains(names, base) || contains(names, child) {
		t.Errorf("images left after removal: %v", names)
	}
}

// Clone leaves the protection check to librbd and looks only when the
// clone failed: a missing parent or snapshot is ErrNotFound, naming it,
// and nothing is left behind.
func TestCloneOfMissingParent(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	base := createImage(t, c, 1<<20)
	child := imageName(t, c)
	for _, tc := range []struct{ parent, snap string }{{base, "none"}, {"rbdio-test-no-such-image", "s"}} {
		err := c.Clone(ctx, tc.parent, tc.snap, child, CreateOptions{})
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("clone of %s@%s: %v, want ErrNotFound", tc.parent, tc.snap, err)
		}
		t.Log(err)
		if _, err := c.Stat(ctx, child); !errors.Is(err, ErrNotFound) {
			t.Errorf("refused clone left an image behind: Stat = %v", err)
		}
	}
}
