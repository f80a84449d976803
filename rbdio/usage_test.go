package rbdio

import (
	"errors"
	"testing"
)

// DiskUsage counts what an image wrote itself, not what a clone reads
// from its parent; RenameImage moves an image (with a clone still
// reading through it) and refuses a taken name.
func TestDiskUsageAndRename(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	const size = 32 << 20
	base := createImage(t, c, size)
	if n, err := c.DiskUsage(ctx, base); err != nil || n != 0 {
		t.Fatalf("DiskUsage of a new image = %d, %v; want 0", n, err)
	}
	im := openImage(t, c, base, OpenOptions{})
	mustWrite(t, im, pattern(64<<10, 1), 0)
	mustWrite(t, im, pattern(64<<10, 2), 16<<20) // another object
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	used, err := c.DiskUsage(ctx, base)
	if err != nil || used < 128<<10 || used > size {
		t.Fatalf("DiskUsage after writing two objects = %d, %v; want between 128 KiB and the size", used, err)
	}
	if err := c.CreateSnapshot(ctx, base, "s"); err != nil {
		t.Fatal(err)
	}
	if err := c.ProtectSnapshot(ctx, base, "s"); err != nil {
		t.Fatal(err)
	}
	child := imageName(t, c)
	if err := c.Clone(ctx, base, "s", child, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, err := c.DiskUsage(ctx, child); err != nil || n != 0 {
		t.Fatalf("DiskUsage of an untouched clone = %d, %v; want 0 (its parent's data is not its own)", n, err)
	}

	renamed := imageName(t, c) // removed at cleanup, with its snapshot
	if err := c.RenameImage(ctx, base, child); !errors.Is(err, ErrExists) {
		t.Fatalf("rename onto an existing image: %v, want ErrExists", err)
	}
	if err := c.RenameImage(ctx, base, renamed); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, base); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the old name still answers: %v", err)
	}
	info, err := c.Stat(ctx, child)
	if err != nil || !info.HasParent || info.Parent.Image != renamed {
		t.Fatalf("the clone's parent after the rename = %+v, %v; want %s", info.Parent, err, renamed)
	}
	if err := c.RemoveImage(ctx, child, RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.RenameImage(ctx, base, imageName(t, c)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rename of a missing image: %v, want ErrNotFound", err)
	}
}
