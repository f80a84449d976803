package rbdio

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// completer records what an AsyncBackend reports, checking the
// contract on the way: one Complete per tag, FlushCompletions after
// every run of them.
type completer struct {
	t       testing.TB
	mu      sync.Mutex
	results map[uint64]result
	pending int // Complete calls not yet followed by FlushCompletions
	flushes int
	batched int // FlushCompletions that ended a run of more than one
	arrived chan struct{}
}

type result struct {
	n   int
	err error
}

func newCompleter(t testing.TB) *completer {
	return &completer{t: t, results: map[uint64]result{}, arrived: make(chan struct{}, 4096)}
}

func (c *completer) Complete(tag uint64, n int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.results[tag]; dup {
		c.t.Errorf("tag %d completed twice", tag)
	}
	c.results[tag] = result{n, err}
	c.pending++
}

func (c *completer) FlushCompletions() {
	c.mu.Lock()
	n := c.pending
	c.pending = 0
	c.flushes++
	if n > 1 {
		c.batched++
	}
	c.mu.Unlock()
	for range n {
		c.arrived <- struct{}{}
	}
}

// wait waits for n more completions announced by FlushCompletions.
func (c *completer) wait(n int) {
	c.t.Helper()
	for i := range n {
		select {
		case <-c.arrived:
		case <-time.After(30 * time.Second):
			c.t.Fatalf("%d of %d completions arrived (after FlushCompletions) within 30s", i, n)
		}
	}
}

func (c *completer) result(tag uint64) result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.results[tag]
}

func TestAsyncIO(t *testing.T) { eachSubmitMode(t, testAsyncIO) }

func testAsyncIO(t *testing.T, c *Conn) {
	const size = 8 << 20
	name := createImage(t, c, size)
	im := openImage(t, c, name, OpenOptions{})
	cp := newCompleter(t)

	// 64 writes in flight at once, a flush, then 64 reads back.
	const blocks = 64
	bufs := make([][]byte, blocks)
	for i := range blocks {
		bufs[i] = pattern(4096, byte(i+1))
		im.StartWriteAt(bufs[i], int64(i)*64<<10, cp, uint64(i))
	}
	cp.wait(blocks)
	im.StartFlush(cp, 1000)
	cp.wait(1)
	for i := range blocks {
		if r := cp.result(uint64(i)); r.n != 4096 || r.err != nil {
			t.Fatalf("write %d: %d, %v", i, r.n, r.err)
		}
	}
	if r := cp.result(1000); r.err != nil {
		t.Fatalf("flush: %v", r.err)
	}
	reads := make([][]byte, blocks)
	for i := range blocks {
		reads[i] = make([]byte, 4096)
		im.StartReadAt(reads[i], int64(i)*64<<10, cp, uint64(2000+i))
	}
	cp.wait(blocks)
	for i := range blocks {
		if r := cp.result(uint64(2000 + i)); r.n != 4096 || r.err != nil || !bytes.Equal(reads[i], bufs[i]) {
			t.Fatalf("read %d: %d, %v, data equal %v", i, r.n, r.err, bytes.Equal(reads[i], bufs[i]))
		}
	}
	if cp.batched == 0 {
		t.Logf("no completions batched in %d runs (a slow machine can deliver each alone)", cp.flushes)
	}
	// The synchronous API sees what the asynchronous one wrote.
	if got := mustRead(t, im, 5*64<<10, 4096); !bytes.Equal(got, bufs[5]) {
		t.Fatal("ReadAt does not see StartWriteAt's data")
	}

	// Across the end: the bytes before it and io.EOF, as ReadAt.
	p := make([]byte, 8192)
	im.StartReadAt(p, size-4096, cp, 3000)
	cp.wait(1)
	if r := cp.result(3000); r.n != 4096 || r.err != io.EOF {
		t.Errorf("StartReadAt across the end: %d, %v; want 4096, io.EOF", r.n, r.err)
	}
	im.StartReadAt(p, -4096, cp, 3001)
	cp.wait(1)
	if r := cp.result(3001); !errors.Is(r.err, syscall.EINVAL) {
		t.Errorf("StartReadAt(-4096): %v, want EINVAL", r.err)
	}

	// Read-only: writes refused with EROFS, flush a no-op.
	ro := openImage(t, c, name, OpenOptions{ReadOnly: true})
	ro.StartWriteAt(make([]byte, 512), 0, cp, 4000)
	ro.StartFlush(cp, 4001)
	cp.wait(2)
	if r := cp.result(4000); !errors.Is(r.err, ErrReadOnly) {
		t.Errorf("StartWriteAt on a read-only image: %v, want ErrReadOnly", r.err)
	}
	if r := cp.result(4001); r.err != nil {
		t.Errorf("StartFlush on a read-only image: %v", r.err)
	}

	// Close waits for requests in flight; later starts fail with ErrClosed.
	for i := range 16 {
		im.StartWriteAt(bufs[i], int64(i)*4096, cp, uint64(5000+i))
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	cp.wait(16)
	for i := range 16 {
		if r := cp.result(uint64(5000 + i)); r.err != nil {
			t.Fatalf("write %d in flight at Close: %v", i, r.err)
		}
	}
	im.StartReadAt(p, 0, cp, 6000)
	cp.wait(1)
	if r := cp.result(6000); !errors.Is(r.err, ErrClosed) {
		t.Errorf("StartReadAt after Close: %v, want ErrClosed", r.err)
	}
}

// BenchmarkAsyncIO drives StartReadAt/StartWriteAt at queue depth 16
// from one goroutine, as nbd's IO loop does: each completion starts the
// next request. Needs the test cluster (CEPH_CONF).
//
//	go test -tags pacific -run '^$' -bench AsyncIO -benchtime 20000x ./rbdio
func BenchmarkAsyncIO(b *testing.B) {
	const (
		region = 256 << 20
		bs     = 4096
		qd     = 16
	)
	_, _, im := filledImage(b, region)
	for _, rw := range []string{"randread", "randwrite"} {
		b.Run(rw, func(b *testing.B) {
			l := &loop{im: im, write: rw == "randwrite", n: b.N, done: make(chan error, 1)}
			for i := range qd {
				l.bufs[i] = pattern(bs, byte(i))
			}
			b.ReportAllocs()
			b.SetBytes(bs)
			b.ResetTimer()
			start := time.Now()
			for i := range qd {
				l.start(uint64(i))
			}
			if err := <-l.done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "IOPS")
		})
	}
}

// loop keeps 16 requests in flight: each completion starts another
// until n have been started, then reports when all have completed.
type loop struct {
	im    *Image
	write bool
	bufs  [16][]byte
	mu    sync.Mutex
	seq   uint64
	n     int
	ended int
	err   error
	done  chan error
}

// start starts one more request in slot tag, unless n were started.
func (l *loop) start(tag uint64) {
	l.mu.Lock()
	if int(l.seq) >= l.n {
		l.mu.Unlock()
		return
	}
	l.seq++
	off := int64(l.seq*2654435761%(256<<20/4096)) * 4096
	l.mu.Unlock()
	if l.write {
		l.im.StartWriteAt(l.bufs[tag], off, l, tag)
	} else {
		l.im.StartReadAt(l.bufs[tag], off, l, tag)
	}
}

func (l *loop) Complete(tag uint64, n int, err error) {
	l.mu.Lock()
	if err != nil && l.err == nil {
		l.err = err
	}
	l.ended++
	if l.ended == l.n {
		l.done <- l.err
	}
	l.mu.Unlock()
	l.start(tag)
}

func (l *loop) FlushCompletions() {}

// blockingCompleter holds up the completion goroutine in its first
// Complete until released, so results pile up in the ring.
type blockingCompleter struct {
	*completer
	first   sync.Once
	entered chan struct{}
	release chan struct{}
}

func (b *blockingCompleter) Complete(tag uint64, n int, err error) {
	b.first.Do(func() {
		close(b.entered)
		<-b.release
	})
	b.completer.Complete(tag, n, err)
}

// TestCompletionRingOverflow: more results than the completion ring
// holds arrive while its goroutine is busy; they spill into the
// overflow list and every one is still delivered once.
func TestCompletionRingOverflow(t *testing.T) { eachSubmitMode(t, testCompletionRingOverflow) }

func testCompletionRingOverflow(t *testing.T, c *Conn) {
	const n = 3 * completionRingLen
	name := createImage(t, c, n*4096)
	im := openImage(t, c, name, OpenOptions{})
	want := pattern(n*4096, 7)
	mustWrite(t, im, want, 0)
	b := &blockingCompleter{completer: newCompleter(t), entered: make(chan struct{}), release: make(chan struct{})}
	bufs := make([][]byte, n)
	for i := range n {
		bufs[i] = make([]byte, 4096)
		im.StartReadAt(bufs[i], int64(i)*4096, b, uint64(i))
	}
	select {
	case <-b.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("no completion within 30s")
	}
	// Let librbd finish the rest while the goroutine is held up.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if t, h := atomic.LoadUint32((*uint32)(unsafe.Pointer(&im.compl.ring.tail))), atomic.LoadUint32((*uint32)(unsafe.Pointer(&im.compl.ring.head))); t-h >= completionRingLen && atomic.LoadInt32((*int32)(unsafe.Pointer(&im.compl.ring.overflow))) != 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if atomic.LoadInt32((*int32)(unsafe.Pointer(&im.compl.ring.overflow))) == 0 {
		t.Fatal("the ring never overflowed: the test did not exercise the overflow list")
	}
	close(b.release)
	b.wait(n)
	for i := range n {
		if r := b.result(uint64(i)); r.n != 4096 || r.err != nil || !bytes.Equal(bufs[i], want[i*4096:(i+1)*4096]) {
			t.Fatalf("read %d: %d, %v, data right %v", i, r.n, r.err, bytes.Equal(bufs[i], want[i*4096:(i+1)*4096]))
		}
	}
}
