package rbdio

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ceph/go-ceph/rbd"
)

func TestRemoveImageRefusals(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := createImage(t, c, 1<<20)

	if err := c.CreateSnapshot(ctx, name, "a"); err != nil {
		t.Fatal(err)
	}
	if err := c.ProtectSnapshot(ctx, name, "a"); err != nil {
		t.Fatal(err)
	}
	err := c.RemoveImage(ctx, name, RemoveOptions{})
	if !errors.Is(err, ErrHasSnapshots) || !strings.Contains(err.Error(), "snapshots a") {
		t.Fatalf("remove with a snapshot: %v, want ErrHasSnapshots naming it", err)
	}
	t.Log(err)

	im := openImage(t, testConn(t), name, OpenOptions{})
	err = c.RemoveImage(ctx, name, RemoveOptions{Snapshots: true})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "open by client.") {
		t.Fatalf("remove while open elsewhere: %v, want ErrBusy naming the client", err)
	}
	t.Log(err)
	if snaps, err := c.Snapshots(ctx, name); err != nil || len(snaps) != 1 {
		t.Fatalf("refused removal touched the snapshots: %v, %v", snaps, err)
	}
	im.Close()

	if err := c.RemoveImage(ctx, name, RemoveOptions{Snapshots: true}); err != nil {
		t.Fatal(err)
	}
	err = c.RemoveImage(ctx, name, RemoveOptions{})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove of a removed image: %v, want ErrNotFound", err)
	}
}

// TestRemoveFinishesAnInterruptedRemoval: a process killed inside
// rbd_remove leaves the image's name listed and its header deleted (seen
// on a real cluster: `rbd rm` killed after 60-120 ms). The header is
// deleted here as that leaves it; RemoveImage must finish the removal,
// not answer ErrNotFound and leave the name behind.
func TestRemoveFinishesAnInterruptedRemoval(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := createImage(t, c, 8<<20)
	img, err := rbd.OpenImageReadOnly(c.ioctx, name, rbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	id, err := img.GetId()
	img.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ioctx.Delete("rbd_header." + id); err != nil {
		t.Fatal(err)
	}
	if names, _ := c.ListImages(ctx); !slices.Contains(names, name) {
		t.Fatalf("the half-removed image is not listed (%v): the test does not make the state it means to", names)
	}
	if err := c.RemoveImage(ctx, name, RemoveOptions{}); err != nil {
		t.Fatalf("remove a half-removed image: %v", err)
	}
	if names, err := c.ListImages(ctx); err != nil || slices.Contains(names, name) {
		t.Fatalf("after RemoveImage the pool lists %v (%v), still with %s", names, err, name)
	}
	if err := c.RemoveImage(ctx, name, RemoveOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove it again: %v, want ErrNotFound", err)
	}
}
