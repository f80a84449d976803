package rbdio

import (
	"errors"
	"testing"
	"time"
)

// A resize by any client (here a second connection, as `rbd resize`
// would be) reaches an open image: Size changes and SizeChanges reports
// it, also while the image holds the exclusive lock.
func TestResizeSeenByOpenImage(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := createImage(t, c, 4<<20)
	im := openImage(t, c, name, OpenOptions{})
	mustWrite(t, im, pattern(4096, 1), 0) // the lock is in use

	admin := testConn(t)
	if err := admin.Resize(ctx, name, 12<<20, ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSize(t, im, 12<<20)
	if im.Size() != 12<<20 {
		t.Errorf("Size = %d after resize", im.Size())
	}
	// The new space is usable.
	mustWrite(t, im, pattern(4096, 2), 12<<20-4096)

	err := admin.Resize(ctx, name, 8<<20, ResizeOptions{})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrink without AllowShrink: %v, want ErrInvalid", err)
	}
	t.Log(err)
	if err := admin.Resize(ctx, name, 8<<20, ResizeOptions{AllowShrink: true}); err != nil {
		t.Fatal(err)
	}
	waitSize(t, im, 8<<20)
	if err := admin.Resize(ctx, name, 0, ResizeOptions{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("resize to 0: %v, want ErrInvalid", err)
	}
	if err := admin.Resize(ctx, "rbdio-test-no-such-image", 1<<20, ResizeOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("resize of a missing image: %v, want ErrNotFound", err)
	}
}

func waitSize(t *testing.T, im *Image, want int64) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case got, ok := <-im.SizeChanges():
			if !ok {
				t.Fatal("SizeChanges closed")
			}
			if got == want {
				return
			}
		case <-deadline:
			t.Fatalf("SizeChanges did not report %d within 30s (Size() = %d)", want, im.Size())
		}
	}
}
