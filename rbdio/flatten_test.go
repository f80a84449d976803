package rbdio

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Cancelling ctx stops a flatten under way (librbd's progress callback
// aborts it) instead of waiting for every object to be copied; the image
// is still a clone, reads its parent, and a later flatten finishes.
func TestFlattenIsInterruptible(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	// Enough objects that flattening takes seconds on the test cluster.
	const size = 256 << 20
	base := createImage(t, c, size)
	im := openImage(t, c, base, OpenOptions{})
	chunk := pattern(4<<20, 3)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		mustWrite(t, im, chunk, off)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateSnapshot(ctx, base, "s"); err != nil {
		t.Fatal(err)
	}
	if err := c.ProtectSnapshot(ctx, base, "s"); err != nil {
		t.Fatal(err)
	}
	clone := func() string {
		name := imageName(t, c)
		if err := c.Clone(ctx, base, "s", name, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return name
	}

	full := clone()
	start := time.Now()
	if err := c.Flatten(ctx, full); err != nil {
		t.Fatal(err)
	}
	whole := time.Since(start)
	t.Logf("a whole flatten of %d MiB took %v", size>>20, whole.Round(time.Millisecond))
	if whole < 2*time.Second {
		t.Logf("flatten too quick on this machine to measure an interruption reliably")
	}

	// Cancel a tenth of the way in. Flatten times swing with the
	// machine's load (one CI run: 21.1 s for the whole, then 1.8 s for
	// the next, which finished before its cancel at 2.1 s): a flatten
	// that finished before the cancel fired proves nothing, so try again
	// sooner; one still running when it fired must stop.
	var (
		cut  string
		err  error
		took time.Duration
	)
	delay := whole / 10
	for attempt := 0; attempt < 5; attempt++ {
		cut = clone()
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(delay, cancel)
		start = time.Now()
		err = c.Flatten(cctx, cut)
		took = time.Since(start)
		cancel()
		t.Logf("cancelled after %v: returned after %v: %v", delay.Round(time.Millisecond), took.Round(time.Millisecond), err)
		if err != nil || took > delay {
			break
		}
		delay /= 4
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled flatten returned %v, want context.Canceled", err)
	}
	// Not a timing bar (flatten times swing with the machine's load):
	// the clone still having its parent proves the flatten stopped part
	// way instead of running to the end.
	st, err := c.Stat(ctx, cut)
	if err != nil {
		t.Fatal(err)
	}
	if !st.HasParent {
		t.Fatalf("an interrupted flatten left %s without its parent", cut)
	}
	cim := openImage(t, c, cut, OpenOptions{ReadOnly: true})
	if got := mustRead(t, cim, size-4096, 4096); string(got) != string(chunk[len(chunk)-4096:]) {
		t.Fatal("the interrupted clone does not read its parent's data")
	}
	cim.Close()
	if err := c.Flatten(ctx, cut); err != nil {
		t.Fatalf("flatten after an interrupted one: %v", err)
	}
	if st, err := c.Stat(ctx, cut); err != nil || st.HasParent {
		t.Fatalf("after a whole flatten: %+v, %v; want no parent", st, err)
	}
}
