package rbdio

import (
	"errors"
	"strings"
	"testing"
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
