package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// asyncOver serves a Backend's synchronous methods as an AsyncBackend,
// the way rbdio.Image serves librbd's completions. With batched false
// each request runs on a goroutine of its own and is reported alone
// (completions in any order, from many goroutines at once, so the
// blocking test backends keep working); with batched true one goroutine
// runs the requests in the order started, takes whatever is queued as a
// batch, reports each and ends the batch with one FlushCompletions per
// Completer. It hides the wrapped backend's other abilities; withTrim
// adds TRIM and WRITE_ZEROES back.
type asyncOver struct {
	Backend
	batched bool
	ops     chan asyncOp
	starts  atomic.Int64
	batches atomic.Int64 // batches of more than one completion
}

type asyncOp struct {
	cmd uint16
	p   []byte
	off int64
	c   Completer
	tag uint64
}

func newAsyncOver(t testing.TB, b Backend, batched bool) *asyncOver {
	a := &asyncOver{Backend: b, batched: batched}
	if batched {
		a.ops = make(chan asyncOp, 1024)
		done := make(chan struct{})
		go a.complete(done)
		t.Cleanup(func() { close(a.ops); <-done })
	}
	return a
}

func (a *asyncOver) NonBlocking() bool { return false }

// withTrim serves a's TRIM and WRITE_ZEROES synchronously through the
// wrapped backend when it has them (Memory, or a type embedding it).
func (a *asyncOver) withTrim() Backend {
	if _, ok := a.Backend.(interface {
		Discarder
		ZeroWriter
	}); ok {
		return asyncTrim{a}
	}
	return a
}

type asyncTrim struct{ *asyncOver }

func (a asyncTrim) Discard(off, length int64) error {
	return a.Backend.(Discarder).Discard(off, length)
}

func (a asyncTrim) WriteZeroes(off, length int64, mayUnmap bool) error {
	return a.Backend.(ZeroWriter).WriteZeroes(off, length, mayUnmap)
}

func (a *asyncOver) StartReadAt(p []byte, off int64, c Completer, tag uint64) {
	a.start(asyncOp{CmdRead, p, off, c, tag})
}

func (a *asyncOver) StartWriteAt(p []byte, off int64, c Completer, tag uint64) {
	a.start(asyncOp{CmdWrite, p, off, c, tag})
}

func (a *asyncOver) StartFlush(c Completer, tag uint64) {
	a.start(asyncOp{CmdFlush, nil, 0, c, tag})
}

func (a *asyncOver) start(op asyncOp) {
	a.starts.Add(1)
	if a.batched {
		a.ops <- op
		return
	}
	go func() {
		n, err := a.run(op)
		op.c.Complete(op.tag, n, err)
		op.c.FlushCompletions()
	}()
}

func (a *asyncOver) run(op asyncOp) (int, error) {
	switch op.cmd {
	case CmdRead:
		return a.Backend.ReadAt(op.p, op.off)
	case CmdWrite:
		return a.Backend.WriteAt(op.p, op.off)
	}
	return 0, a.Backend.Flush()
}

func (a *asyncOver) complete(done chan struct{}) {
	defer close(done)
	var batch []asyncOp
	var completers []Completer
	for op := range a.ops {
		batch = append(batch[:0], op)
		for len(batch) < 64 && len(a.ops) > 0 {
			batch = append(batch, <-a.ops)
		}
		if len(batch) > 1 {
			a.batches.Add(1)
		}
		completers = completers[:0]
		for _, op := range batch {
			n, err := a.run(op)
			op.c.Complete(op.tag, n, err)
			seen := false
			for _, c := range completers {
				seen = seen || c == op.c
			}
			if !seen {
				completers = append(completers, op.c)
			}
		}
		for _, c := range completers {
			c.FlushCompletions()
		}
	}
}

// serveModes are the ways the IO loop can serve a backend: on the
// reading goroutine, through workers, through an AsyncBackend reporting
// each completion alone, or in batches.
var serveModes = []string{"inline", "workers", "async", "async-batched"}

// inMode wraps b so the loop serves it in the given mode.
func inMode(t testing.TB, b Backend, mode string) Backend {
	switch mode {
	case "workers":
		return asBlocking(b)
	case "async":
		return newAsyncOver(t, b, false).withTrim()
	case "async-batched":
		return newAsyncOver(t, b, true).withTrim()
	}
	return b
}

func TestAsyncReadWriteFlush(t *testing.T) {
	for _, batched := range []bool{false, true} {
		t.Run(fmt.Sprintf("batched=%v", batched), func(t *testing.T) {
			m := NewMemory(1 << 20)
			a := newAsyncOver(t, m, batched)
			c, done := serving(t, a.withTrim(), TransmissionOptions{})
			rc := rawConn{t, c}
			data := bytes.Repeat([]byte("async!"), 700)[:4096]
			if e, _ := rc.roundTrip(Request{Type: CmdWrite, Cookie: 1, Offset: 4096, Length: 4096}, data); e != 0 {
				t.Fatalf("write errno %d", e)
			}
			if e, got := rc.roundTrip(Request{Type: CmdRead, Cookie: 2, Offset: 4096, Length: 4096}, nil); e != 0 || !bytes.Equal(got, data) {
				t.Fatalf("read back: errno %d, equal %v", e, bytes.Equal(got, data))
			}
			if e, _ := rc.roundTrip(Request{Type: CmdFlush, Cookie: 3}, nil); e != 0 {
				t.Fatalf("flush errno %d", e)
			}
			if e, _ := rc.roundTrip(Request{Type: CmdWrite, Flags: CmdFlagFUA, Cookie: 4, Offset: 0, Length: 512}, data[:512]); e != 0 {
				t.Fatalf("FUA write errno %d", e)
			}
			if e, _ := rc.roundTrip(Request{Type: CmdRead, Cookie: 5, Length: 0}, nil); e != 0 {
				t.Fatalf("zero-length read errno %d", e)
			}
			// TRIM goes to the synchronous Discard, through a worker.
			if e, _ := rc.roundTrip(Request{Type: CmdTrim, Cookie: 6, Offset: 4096, Length: 4096}, nil); e != 0 {
				t.Fatalf("trim errno %d", e)
			}
			rc.send(Request{Type: CmdDisc}, nil)
			if err := waitErr(t, done); err != nil {
				t.Fatal(err)
			}
			// write, read, flush, FUA write + its flush, empty read.
			if n := a.starts.Load(); n != 6 {
				t.Fatalf("%d requests started on the AsyncBackend, want 6", n)
			}
		})
	}
}

// TestAsyncManyInFlight pipelines many reads and writes at full queue
// depth through the batched backend: every reply arrives once, with the
// right data, and completions were in fact batched.
func TestAsyncManyInFlight(t *testing.T) {
	const n, qd = 2000, 16
	m := NewMemory(1 << 20)
	for i := range 256 {
		m.WriteAt(bytes.Repeat([]byte{byte(i)}, 4096), int64(i)*4096)
	}
	a := newAsyncOver(t, m, true)
	c, done := serving(t, a, TransmissionOptions{QueueDepth: qd})
	rc := rawConn{t, c}
	lens := map[uint64]int{}
	go func() {
		for i := range n {
			off := uint64(i%256) * 4096
			if i%3 == 2 {
				rc.send(Request{Type: CmdWrite, Cookie: uint64(i), Offset: off, Length: 4096}, bytes.Repeat([]byte{byte(i % 256)}, 4096))
			} else {
				rc.send(Request{Type: CmdRead, Cookie: uint64(i), Offset: off, Length: 4096}, nil)
			}
		}
	}()
	for i := range n {
		if i%3 != 2 {
			lens[uint64(i)] = 4096
		}
	}
	seen := map[uint64]bool{}
	for range n {
		r, data := rc.reply(lens)
		if r.Errno != 0 || seen[r.Cookie] {
			t.Fatalf("reply %+v (seen before: %v)", r, seen[r.Cookie])
		}
		seen[r.Cookie] = true
		if want := byte(r.Cookie % 256); data != nil && !bytes.Equal(data, bytes.Repeat([]byte{want}, 4096)) {
			t.Fatalf("read %d returned the wrong data", r.Cookie)
		}
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
	if a.batches.Load() == 0 {
		t.Fatal("no batch of more than one completion: the test did not exercise batching")
	}
}

// manualAsync records started requests; the test completes them.
type manualAsync struct {
	*Memory
	started chan asyncOp
}

func (m *manualAsync) NonBlocking() bool { return false }
func (m *manualAsync) StartReadAt(p []byte, off int64, c Completer, tag uint64) {
	m.started <- asyncOp{CmdRead, p, off, c, tag}
}
func (m *manualAsync) StartWriteAt(p []byte, off int64, c Completer, tag uint64) {
	m.started <- asyncOp{CmdWrite, p, off, c, tag}
}
func (m *manualAsync) StartFlush(c Completer, tag uint64) {
	m.started <- asyncOp{CmdFlush, nil, 0, c, tag}
}

// TestAsyncRepliesWaitForFlushCompletions: replies of completed
// requests go out at FlushCompletions, all of them, not one by one.
func TestAsyncRepliesWaitForFlushCompletions(t *testing.T) {
	m := &manualAsync{Memory: NewMemory(1 << 20), started: make(chan asyncOp, 16)}
	c, done := serving(t, m, TransmissionOptions{})
	rc := rawConn{t, c}
	lens := map[uint64]int{}
	for i := range 3 {
		rc.send(Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i) * 512, Length: 512}, nil)
		lens[uint64(i)] = 512
	}
	var ops []asyncOp
	for range 3 {
		select {
		case op := <-m.started:
			ops = append(ops, op)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of 3 reads started", len(ops))
		}
	}
	for _, op := range ops {
		op.c.Complete(op.tag, len(op.p), nil)
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a reply was written before FlushCompletions (%d bytes, %v)", n, err)
	}
	ops[0].c.FlushCompletions()
	for range 3 {
		if r, data := rc.reply(lens); r.Errno != 0 || len(data) != 512 {
			t.Fatalf("reply %+v", r)
		}
	}
	// A failed start is answered from within the Start call.
	rc.send(Request{Type: CmdWrite, Cookie: 9, Length: 512}, make([]byte, 512))
	op := <-m.started
	op.c.Complete(op.tag, 0, errors.New("refused"))
	op.c.FlushCompletions()
	if r, _ := rc.reply(nil); r.Cookie != 9 || r.Errno != EIO {
		t.Fatalf("reply %+v, want EIO for cookie 9", r)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestAsyncDrainAndOrder(t *testing.T) {
	t.Run("disc drains", func(t *testing.T) {
		g := newGateBackend(1 << 20)
		testDiscDrains(t, g, newAsyncOver(t, g, false))
	})
	t.Run("queue depth bound", func(t *testing.T) {
		const qd = 4
		g := newGateBackend(1 << 20)
		defer g.open()
		c, done := serving(t, newAsyncOver(t, g, false), TransmissionOptions{QueueDepth: qd})
		rc := rawConn{t, c}
		lens := map[uint64]int{}
		for i := range 2 * qd {
			rc.send(Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i) * 4096, Length: 4096}, nil)
			lens[uint64(i)] = 4096
		}
		for range qd {
			<-g.entered
		}
		select {
		case off := <-g.entered:
			t.Fatalf("request at %d started beyond queue depth %d", off, qd)
		case <-time.After(100 * time.Millisecond):
		}
		g.open()
		for range 2 * qd {
			if r, _ := rc.reply(lens); r.Errno != 0 {
				t.Fatalf("reply %+v", r)
			}
		}
		rc.send(Request{Type: CmdDisc}, nil)
		if err := waitErr(t, done); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("out of order", func(t *testing.T) {
		o := &orderBackend{Memory: NewMemory(1 << 20), release: make(chan struct{})}
		testRepliesOutOfOrder(t, o, newAsyncOver(t, o, false))
	})
	t.Run("client vanishes", func(t *testing.T) {
		g := newGateBackend(1 << 20)
		c, done := serving(t, newAsyncOver(t, g, false), TransmissionOptions{})
		rc := rawConn{t, c}
		for i := range 4 {
			rc.send(Request{Type: CmdRead, Cookie: uint64(i), Length: 64 << 10}, nil)
			<-g.entered
		}
		c.Close()
		g.open()
		waitErr(t, done)
	})
}

// The request path benchmarks through an AsyncBackend completing in
// batches on one goroutine, as rbdio.Image does.
func BenchmarkServeTransmissionAsyncRead4K(b *testing.B) {
	benchTransmissionOn(b, newAsyncOver(b, NewMemory(64<<20), true).withTrim(), CmdRead, 4096, 16)
}
func BenchmarkServeTransmissionAsyncWrite4K(b *testing.B) {
	benchTransmissionOn(b, newAsyncOver(b, NewMemory(64<<20), true).withTrim(), CmdWrite, 4096, 16)
}
