package rbdio

import (
	"errors"
	"testing"
)

func TestSnapshots(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := createImage(t, c, 2<<20)
	for _, s := range []string{"one", "two"} {
		if err := c.CreateSnapshot(ctx, name, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CreateSnapshot(ctx, name, "one"); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate snapshot: %v, want ErrExists", err)
	}
	if err := c.ProtectSnapshot(ctx, name, "two"); err != nil {
		t.Fatal(err)
	}
	snaps, err := c.Snapshots(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[0].Name != "one" || snaps[1].Name != "two" ||
		snaps[0].Protected || !snaps[1].Protected || snaps[0].Size != 2<<20 || snaps[0].ID >= snaps[1].ID {
		t.Fatalf("Snapshots = %+v", snaps)
	}
	if err := c.RemoveSnapshot(ctx, name, "two"); !errors.Is(err, ErrProtected) {
		t.Errorf("remove protected: %v, want ErrProtected", err)
	}
	if err := c.UnprotectSnapshot(ctx, name, "two"); err != nil {
		t.Fatal(err)
	}
	if err := c.UnprotectSnapshot(ctx, name, "two"); err != nil {
		t.Errorf("unprotect twice: %v", err)
	}
	for _, s := range []string{"one", "two"} {
		if err := c.RemoveSnapshot(ctx, name, s); err != nil {
			t.Fatal(err)
		}
	}
	err = c.RemoveSnapshot(ctx, name, "one")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("remove a removed snapshot: %v, want ErrNotFound", err)
	}
	t.Log(err)
	if err := c.ProtectSnapshot(ctx, name, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("protect a missing snapshot: %v, want ErrNotFound", err)
	}
	if err := c.CreateSnapshot(ctx, name, "a@b"); !errors.Is(err, ErrInvalid) {
		t.Errorf("snapshot name with '@': %v, want ErrInvalid", err)
	}
}
