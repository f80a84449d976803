package rbdio

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// Image is what nbd serves.
var (
	_ nbd.Backend    = (*Image)(nil)
	_ nbd.Discarder  = (*Image)(nil)
	_ nbd.ZeroWriter = (*Image)(nil)
	_ nbd.Resizer    = (*Image)(nil)
)

func TestImageReadWrite(t *testing.T) { eachSubmitMode(t, testImageReadWrite) }

func testImageReadWrite(t *testing.T, c *Conn) {
	const size = 8 << 20
	name := createImage(t, c, size)
	im := openImage(t, c, name, OpenOptions{})
	if im.Size() != size || im.ReadOnly() || im.Name() != name {
		t.Fatalf("Size %d ReadOnly %v Name %q", im.Size(), im.ReadOnly(), im.Name())
	}
	if got := mustRead(t, im, 0, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("a new image does not read as zeroes")
	}
	// Concurrent writes to distinct blocks, then concurrent reads back.
	const blocks = 64
	var wg sync.WaitGroup
	errs := make(chan error, 2*blocks)
	for i := 0; i < blocks; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := im.WriteAt(pattern(4096, byte(i)), int64(i)*128<<10); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < blocks; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := make([]byte, 4096)
			if _, err := im.ReadAt(p, int64(i)*128<<10); err != nil {
				errs <- err
			} else if !bytes.Equal(p, pattern(4096, byte(i))) {
				errs <- errors.New("block " + itoa(int64(i)) + " reads back wrong")
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// A large request spanning objects.
	big := pattern(3<<20, 9)
	mustWrite(t, im, big, 3<<20)
	if got := mustRead(t, im, 3<<20, len(big)); !bytes.Equal(got, big) {
		t.Fatal("3 MiB request across objects reads back wrong")
	}

	// Reading past the end: the bytes before it, then io.EOF.
	p := make([]byte, 8192)
	n, err := im.ReadAt(p, size-4096)
	if n != 4096 || err != io.EOF {
		t.Errorf("ReadAt across the end = %d, %v; want 4096, io.EOF", n, err)
	}
	if _, err := im.ReadAt(p, -1); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("ReadAt(-1) = %v, want EINVAL", err)
	}
}

func TestImageDiscardAndWriteZeroes(t *testing.T) {
	c := testConn(t)
	name := createImage(t, c, 16<<20)
	im := openImage(t, c, name, OpenOptions{})
	data := pattern(8<<20, 3)
	mustWrite(t, im, data, 0)

	// Whole objects discarded read as zeroes.
	if err := im.Discard(0, 4<<20); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, im, 0, 4<<20); !bytes.Equal(got, make([]byte, 4<<20)) {
		t.Error("discarded object does not read as zeroes")
	}
	// Write zeroes is exact, at any 512-byte granularity, both ways.
	for _, mayUnmap := range []bool{true, false} {
		off := int64(4<<20 + 4096)
		if !mayUnmap {
			off = 6 << 20
		}
		if err := im.WriteZeroes(off, 8192+512, mayUnmap); err != nil {
			t.Fatalf("WriteZeroes(mayUnmap=%v): %v", mayUnmap, err)
		}
		got := mustRead(t, im, off-4096, 4096+8192+512+4096)
		want := append([]byte(nil), data[off-4096:off]...)
		want = append(want, make([]byte, 8192+512)...)
		want = append(want, data[off+8192+512:off+8192+512+4096]...)
		if !bytes.Equal(got, want) {
			t.Errorf("WriteZeroes(mayUnmap=%v): range or its neighbours read back wrong", mayUnmap)
		}
	}
	if err := im.Discard(0, 0); err != nil {
		t.Errorf("Discard of nothing: %v", err)
	}
}

func TestImageReadOnlyAndSnapshot(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := createImage(t, c, 4<<20)
	rw := openImage(t, c, name, OpenOptions{})
	before := pattern(4096, 5)
	mustWrite(t, rw, before, 0)
	if err := c.CreateSnapshot(ctx, name, "s"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, rw, pattern(4096, 6), 0)

	snap := openImage(t, c, name, OpenOptions{Snapshot: "s"})
	if !snap.ReadOnly() || snap.Snapshot() != "s" {
		t.Fatalf("snapshot open: ReadOnly %v Snapshot %q", snap.ReadOnly(), snap.Snapshot())
	}
	if got := mustRead(t, snap, 0, 4096); !bytes.Equal(got, before) {
		t.Error("snapshot does not read the data as it was")
	}
	_, err := snap.WriteAt(before, 0)
	if !errors.Is(err, ErrReadOnly) || !errors.Is(err, syscall.EROFS) || nbd.Errno(err) != nbd.EPERM {
		t.Errorf("write to a snapshot: %v (nbd errno %d); want ErrReadOnly/EROFS", err, nbd.Errno(err))
	}
	if !strings.Contains(err.Error(), "@s") {
		t.Errorf("message does not name the snapshot: %v", err)
	}

	if err := rw.Flush(); err != nil { // for the reader below
		t.Fatal(err)
	}
	ro := openImage(t, c, name, OpenOptions{ReadOnly: true})
	if _, err := ro.WriteAt(before, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to a read-only image: %v, want EROFS", err)
	}
	if err := ro.Flush(); err != nil {
		t.Errorf("Flush of a read-only image: %v", err)
	}
	if got := mustRead(t, ro, 0, 4096); !bytes.Equal(got, pattern(4096, 6)) {
		t.Error("read-only open does not see the head's data")
	}

	if _, err := c.OpenImage(ctx, name, OpenOptions{Snapshot: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("open at a missing snapshot: %v, want ErrNotFound", err)
	}
}

func TestOpenMissingImage(t *testing.T) {
	c := testConn(t)
	_, err := c.OpenImage(testContext(t), "rbdio-test-no-such-image", OpenOptions{})
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, syscall.ENOENT) ||
		!strings.Contains(err.Error(), "rbd/rbdio-test-no-such-image") || !strings.Contains(err.Error(), "rbd_open") {
		t.Fatalf("err = %v; want ErrNotFound naming the image and rbd_open", err)
	}
	t.Log(err)
}

// A read-write open holds the exclusive lock: a second writer is refused
// with a clear error instead of taking the image over.
func TestExclusiveLock(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := createImage(t, c, 4<<20)
	first := openImage(t, c, name, OpenOptions{})
	mustWrite(t, first, pattern(4096, 1), 0)

	other := testConn(t) // another client, as another process would be
	_, err := other.OpenImage(ctx, name, OpenOptions{})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "held by") {
		t.Fatalf("second read-write open: %v; want ErrLocked naming the holder", err)
	}
	t.Log(err)
	// The holder keeps writing.
	mustWrite(t, first, pattern(4096, 2), 4096)

	// Readers are welcome; they see what the holder flushed.
	if err := first.Flush(); err != nil {
		t.Fatal(err)
	}
	ro := openImage(t, other, name, OpenOptions{ReadOnly: true})
	if got := mustRead(t, ro, 0, 4096); !bytes.Equal(got, pattern(4096, 1)) {
		t.Error("reader does not see the holder's write")
	}

	// Once the holder closes, the other client gets it.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second := openImage(t, other, name, OpenOptions{})
	mustWrite(t, second, pattern(4096, 3), 0)
}

func TestClosedImage(t *testing.T) { eachSubmitMode(t, testClosedImage) }

func testClosedImage(t *testing.T, c *Conn) {
	name := createImage(t, c, 1<<20)
	im := openImage(t, c, name, OpenOptions{})
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if err := im.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	_, err := im.ReadAt(make([]byte, 512), 0)
	if !errors.Is(err, ErrClosed) || nbd.Errno(err) != nbd.ESHUTDOWN {
		t.Errorf("ReadAt after Close: %v (nbd %d), want ErrClosed/ESHUTDOWN", err, nbd.Errno(err))
	}
	if _, ok := <-im.SizeChanges(); ok {
		t.Error("SizeChanges not closed by Close")
	}

	// Conn.Close closes the images still open.
	c2 := testConn(t)
	im2, err := c2.OpenImage(testContext(t), name, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := im2.WriteAt(make([]byte, 512), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteAt after Conn.Close: %v, want ErrClosed", err)
	}
	if _, err := c2.ListImages(testContext(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("ListImages after Close: %v, want ErrClosed", err)
	}
}

// Shared opens leave the lock cooperative: two writers take turns
// (librbd passes the lock back and forth) instead of one being refused.
func TestSharedOpen(t *testing.T) {
	c := testConn(t)
	name := createImage(t, c, 4<<20)
	a := openImage(t, c, name, OpenOptions{Shared: true})
	b := openImage(t, testConn(t), name, OpenOptions{Shared: true})
	mustWrite(t, a, pattern(4096, 1), 0)
	mustWrite(t, b, pattern(4096, 2), 4096)
	mustWrite(t, a, pattern(4096, 3), 8192)
	// librbd may acknowledge a write before the OSDs have it (doc.go);
	// another client sees it after a flush, as with any disk cache.
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, b, 0, 12288); !bytes.Equal(got, append(append(pattern(4096, 1), pattern(4096, 2)...), pattern(4096, 3)...)) {
		t.Error("shared writers' data reads back wrong")
	}
}
