package rbdio

import (
	"sync"
	"testing"
	"time"
)

// fuaCompleter does what nbd's session does for a FUA write on an
// AsyncBackend: when the write completes it starts a flush from the
// completion goroutine, and the request ends with the flush.
type fuaCompleter struct {
	im   *Image
	mu   sync.Mutex
	left map[uint64]bool // tag -> flush started
	done chan struct{}
}

func (f *fuaCompleter) Complete(tag uint64, n int, err error) {
	f.mu.Lock()
	flushing, ok := f.left[tag]
	if ok && !flushing && err == nil {
		f.left[tag] = true
		f.mu.Unlock()
		f.im.StartFlush(f, tag)
		return
	}
	delete(f.left, tag)
	last := len(f.left) == 0
	f.mu.Unlock()
	if last {
		close(f.done)
	}
}

func (f *fuaCompleter) FlushCompletions() {}

// TestCloseUnderFUALoad: Close while FUA writes are in flight (each
// write's completion starts a flush on the completion goroutine) always
// returns and every request ends. With a reader/writer lock guarding
// requests against Close, the flush waited for Close, which waited for
// the completion goroutine: a deadlock.
func TestCloseUnderFUALoad(t *testing.T) { eachSubmitMode(t, testCloseUnderFUALoad) }

func testCloseUnderFUALoad(t *testing.T, c *Conn) {
	name := createImage(t, c, 64<<20)
	buf := pattern(4096, 7)
	for round := range 20 {
		// Not openImage: its cleanup would Close again, and after a
		// deadlock that hangs the test binary instead of failing.
		im, err := c.OpenImage(testContext(t), name, OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		const n = 128
		f := &fuaCompleter{im: im, left: make(map[uint64]bool, n), done: make(chan struct{})}
		for tag := range uint64(n) {
			f.left[tag] = false
		}
		for tag := range uint64(n) {
			im.StartWriteAt(buf, int64(tag)*4096, f, tag)
		}
		closed := make(chan error, 1)
		go func() { closed <- im.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("round %d: Close: %v", round, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: Close did not return within 60s under FUA load (deadlock with the completion path)", round)
		}
		select {
		case <-f.done:
		case <-time.After(30 * time.Second):
			f.mu.Lock()
			t.Fatalf("round %d: %d requests never completed after Close", round, len(f.left))
		}
	}
}
