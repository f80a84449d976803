package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawConn speaks the transmission phase byte by byte, to test the
// server the way a real client (or a broken one) would.
type rawConn struct {
	t testing.TB
	c net.Conn
}

func (rc rawConn) send(h Request, payload []byte) {
	rc.t.Helper()
	b := make([]byte, RequestSize, RequestSize+len(payload))
	h.Encode(b)
	if _, err := rc.c.Write(append(b, payload...)); err != nil {
		rc.t.Fatalf("send %s: %v", CommandName(h.Type), err)
	}
}

// reply reads one reply; dataLen gives the READ length of each cookie
// (missing: no data).
func (rc rawConn) reply(dataLen map[uint64]int) (SimpleReply, []byte) {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [SimpleReplySize]byte
	if _, err := io.ReadFull(rc.c, h[:]); err != nil {
		rc.t.Fatalf("reading reply: %v", err)
	}
	var r SimpleReply
	if err := DecodeSimpleReply(h[:], &r); err != nil {
		rc.t.Fatal(err)
	}
	var data []byte
	if n := dataLen[r.Cookie]; n > 0 && r.Errno == 0 {
		data = make([]byte, n)
		if _, err := io.ReadFull(rc.c, data); err != nil {
			rc.t.Fatalf("reading %d bytes of reply data: %v", n, err)
		}
	}
	return r, data
}

// roundTrip sends one request and reads its reply.
func (rc rawConn) roundTrip(h Request, payload []byte) (uint32, []byte) {
	rc.t.Helper()
	rc.send(h, payload)
	lens := map[uint64]int{}
	if h.Type == CmdRead {
		lens[h.Cookie] = int(h.Length)
	}
	r, data := rc.reply(lens)
	if r.Cookie != h.Cookie {
		rc.t.Fatalf("reply cookie %d, want %d", r.Cookie, h.Cookie)
	}
	return r.Errno, data
}

// expectClosed asserts the server closed the connection.
func (rc rawConn) expectClosed() {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if n, err := rc.c.Read(b); err != io.EOF {
		rc.t.Fatalf("expected the server to close the connection, got %d bytes, %v", n, err)
	}
}

func TestReadWriteRoundTrip(t *testing.T) {
	m := NewMemory(1 << 20)
	c, done := serving(t, m, TransmissionOptions{})
	rc := rawConn{t, c}
	data := bytes.Repeat([]byte("0123456789abcdef"), 256)
	if e, _ := rc.roundTrip(Request{Type: CmdWrite, Cookie: 1, Offset: 8192, Length: 4096}, data); e != 0 {
		t.Fatalf("write errno %d", e)
	}
	e, got := rc.roundTrip(Request{Type: CmdRead, Cookie: 2, Offset: 8192, Length: 4096}, nil)
	if e != 0 || !bytes.Equal(got, data) {
		t.Fatalf("read back: errno %d, equal %v", e, bytes.Equal(got, data))
	}
	stored := make([]byte, 4096)
	m.ReadAt(stored, 8192)
	if !bytes.Equal(stored, data) {
		t.Fatal("backend does not hold the written data")
	}
	if e, _ := rc.roundTrip(Request{Type: CmdFlush, Cookie: 3}, nil); e != 0 {
		t.Fatalf("flush errno %d", e)
	}
	if e, _ := rc.roundTrip(Request{Type: CmdRead, Cookie: 4, Offset: 0, Length: 0}, nil); e != 0 {
		t.Fatalf("zero-length read errno %d", e)
	}
	rc.send(Request{Type: CmdDisc, Cookie: 5}, nil)
	rc.expectClosed()
	if err := waitErr(t, done); err != nil {
		t.Fatalf("ServeTransmission after DISC = %v, want nil", err)
	}
}

// TestErrorRepliesKeepStreamInSync sends every kind of bad request and
// checks each gets its error reply and the connection still serves a
// valid read afterwards, so no payload byte was misread as a header.
func TestErrorRepliesKeepStreamInSync(t *testing.T) {
	const size = 1 << 20
	big := make([]byte, 64<<10+512)
	for i := range big {
		big[i] = 0x25 // looks like the start of a request magic if misread
	}
	tests := []struct {
		name    string
		opts    TransmissionOptions
		backend Backend
		req     Request
		payload []byte
		want    uint32
	}{
		{"read past end", TransmissionOptions{}, nil, Request{Type: CmdRead, Offset: size - 512, Length: 1024}, nil, EINVAL},
		{"read offset overflow", TransmissionOptions{}, nil, Request{Type: CmdRead, Offset: ^uint64(0) - 100, Length: 4096}, nil, EINVAL},
		{"write past end", TransmissionOptions{}, nil, Request{Type: CmdWrite, Offset: size - 512, Length: 1024}, make([]byte, 1024), ENOSPC},
		{"write zeroes past end", TransmissionOptions{}, nil, Request{Type: CmdWriteZeroes, Offset: size, Length: 512}, nil, ENOSPC},
		{"trim past end", TransmissionOptions{}, nil, Request{Type: CmdTrim, Offset: size, Length: 512}, nil, EINVAL},
		{"misaligned read offset", TransmissionOptions{BlockSize: 512}, nil, Request{Type: CmdRead, Offset: 100, Length: 512}, nil, EINVAL},
		{"misaligned read length", TransmissionOptions{BlockSize: 512}, nil, Request{Type: CmdRead, Offset: 0, Length: 100}, nil, EINVAL},
		{"misaligned write", TransmissionOptions{BlockSize: 4096}, nil, Request{Type: CmdWrite, Offset: 512, Length: 512}, make([]byte, 512), EINVAL},
		{"unknown command", TransmissionOptions{}, nil, Request{Type: 99, Length: 512}, nil, EINVAL},
		{"block status not negotiated", TransmissionOptions{}, nil, Request{Type: CmdBlockStatus, Length: 512}, nil, EINVAL},
		{"unknown flag on read", TransmissionOptions{}, nil, Request{Type: CmdRead, Flags: 1 << 9, Length: 512}, nil, EINVAL},
		{"NO_HOLE on write", TransmissionOptions{}, nil, Request{Type: CmdWrite, Flags: CmdFlagNoHole, Length: 512}, make([]byte, 512), EINVAL},
		{"DF not negotiated", TransmissionOptions{}, nil, Request{Type: CmdRead, Flags: CmdFlagDF, Length: 512}, nil, EINVAL},
		{"FAST_ZERO not advertised", TransmissionOptions{}, nil, Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero, Length: 512}, nil, EINVAL},
		{"oversized read", TransmissionOptions{MaxPayload: 64 << 10}, nil, Request{Type: CmdRead, Length: 64<<10 + 512}, nil, EINVAL},
		{"oversized write", TransmissionOptions{MaxPayload: 64 << 10}, nil, Request{Type: CmdWrite, Length: uint32(len(big))}, big, EINVAL},
		{"write on read-only", TransmissionOptions{ReadOnly: true}, nil, Request{Type: CmdWrite, Length: 512}, big[:512], EPERM},
		{"trim on read-only", TransmissionOptions{ReadOnly: true}, nil, Request{Type: CmdTrim, Length: 512}, nil, EPERM},
		{"write zeroes on read-only", TransmissionOptions{ReadOnly: true}, nil, Request{Type: CmdWriteZeroes, Length: 512}, nil, EPERM},
		{"trim not advertised", TransmissionOptions{}, plainBackend{NewMemory(size)}, Request{Type: CmdTrim, Length: 512}, nil, EINVAL},
		{"backend error", TransmissionOptions{}, failingBackend{NewMemory(size)}, Request{Type: CmdRead, Length: 512}, nil, EIO},
	}
	for _, tt := range tests {
		for _, mode := range serveModes {
			t.Run(tt.name+"/"+mode, func(t *testing.T) {
				m := NewMemory(size)
				ref := bytes.Repeat([]byte{0x5a}, 4096)
				m.WriteAt(ref, 4096)
				b := Backend(m)
				if tt.backend != nil {
					b = tt.backend
					b.WriteAt(ref, 4096)
				}
				switch mode {
				case "workers":
					b = blockingBackend{b}
				case "async", "async-batched":
					b = inMode(t, b, mode)
				}
				c, done := serving(t, b, tt.opts)
				rc := rawConn{t, c}
				tt.req.Cookie = 77
				if e, data := rc.roundTrip(tt.req, tt.payload); e != tt.want || data != nil {
					t.Fatalf("errno %d (data %d bytes), want %d and no data", e, len(data), tt.want)
				}
				if tt.want != EIO {
					e, data := rc.roundTrip(Request{Type: CmdRead, Cookie: 78, Offset: 4096, Length: 4096}, nil)
					if e != 0 || !bytes.Equal(data, ref) {
						t.Fatalf("connection unusable after the error reply: errno %d", e)
					}
				}
				rc.send(Request{Type: CmdDisc}, nil)
				rc.expectClosed()
				if err := waitErr(t, done); err != nil {
					t.Fatalf("ServeTransmission = %v", err)
				}
			})
		}
	}
}

// asBlocking serves b through the worker pool: it claims to block and
// keeps b's trim and write-zeroes abilities.
func asBlocking(b Backend) Backend {
	if m, ok := b.(*Memory); ok {
		return blocking{m}
	}
	return blockingBackend{b}
}

type blockingBackend struct{ Backend }

func (blockingBackend) NonBlocking() bool { return false }

// TestInlineBurstBeyondQueueDepth: served inline, a burst of requests
// larger than the queue depth arrives in one read; the reader must write
// its deferred replies to free slots rather than wait for itself.
func TestInlineBurstBeyondQueueDepth(t *testing.T) {
	c, done := serving(t, NewMemory(1<<20), TransmissionOptions{QueueDepth: 2})
	burst, lens := readBurst(50)
	if _, err := c.Write(burst); err != nil {
		t.Fatal(err)
	}
	rc := rawConn{t, c}
	for i := range 50 {
		if r, data := rc.reply(lens); r.Errno != 0 || r.Cookie != uint64(i) || len(data) != 512 {
			t.Fatalf("reply %d: %+v (inline replies come in request order)", i, r)
		}
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// readBurst encodes n 512-byte READs (cookie i at offset i*512) for one
// write, with the reply lengths rawConn.reply needs.
func readBurst(n int) ([]byte, map[uint64]int) {
	var burst []byte
	lens := map[uint64]int{}
	for i := range n {
		r := make([]byte, RequestSize)
		(&Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i) * 512, Length: 512}).Encode(r)
		burst = append(burst, r...)
		lens[uint64(i)] = 512
	}
	return burst, lens
}

// plainBackend hides the optional abilities of the backend it wraps.
type plainBackend struct{ b Backend }

func (p plainBackend) ReadAt(b []byte, off int64) (int, error)  { return p.b.ReadAt(b, off) }
func (p plainBackend) WriteAt(b []byte, off int64) (int, error) { return p.b.WriteAt(b, off) }
func (p plainBackend) Flush() error                             { return p.b.Flush() }
func (p plainBackend) Size() int64                              { return p.b.Size() }

// failingBackend fails every read with an error that is no errno.
type failingBackend struct{ *Memory }

func (failingBackend) ReadAt([]byte, int64) (int, error) { return 0, errors.New("disk on fire") }

func TestProtocolViolationsCloseConnection(t *testing.T) {
	tests := []struct {
		name  string
		bytes func() []byte
		want  string // in the error and the log
	}{
		{"bad magic", func() []byte {
			b := make([]byte, RequestSize)
			(&Request{Type: CmdRead, Length: 512}).Encode(b)
			b[3] = 0x14
			return b
		}, "bad request magic 0x25609514"},
		{"truncated header", func() []byte {
			b := make([]byte, RequestSize)
			(&Request{Type: CmdRead, Length: 512}).Encode(b)
			return b[:20]
		}, "inside a request header"},
		{"truncated write payload", func() []byte {
			b := make([]byte, RequestSize)
			(&Request{Type: CmdWrite, Length: 4096}).Encode(b)
			return append(b, make([]byte, 1000)...)
		}, "inside the 4096-byte payload"},
		{"truncated refused payload", func() []byte {
			b := make([]byte, RequestSize)
			(&Request{Type: CmdWrite, Offset: 1 << 30, Length: 4096}).Encode(b)
			return append(b, make([]byte, 1000)...)
		}, "inside the 4096-byte payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMemory(1 << 20)
			log, logs := testLogger(t)
			// A second connection to the same backend must not notice.
			other, otherDone := serving(t, m, TransmissionOptions{Logger: log})
			c, done := serving(t, m, TransmissionOptions{Logger: log})
			if _, err := c.Write(tt.bytes()); err != nil {
				t.Fatal(err)
			}
			if tt.name != "bad magic" {
				c.(*net.UnixConn).CloseWrite()
			}
			err := waitErr(t, done)
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ServeTransmission = %v, want ErrProtocol mentioning %q", err, tt.want)
			}
			rawConn{t, c}.expectClosed()
			if !strings.Contains(logs.String(), tt.want) {
				t.Fatalf("log does not give the reason %q:\n%s", tt.want, logs)
			}
			orc := rawConn{t, other}
			if e, _ := orc.roundTrip(Request{Type: CmdWrite, Cookie: 1, Length: 512}, make([]byte, 512)); e != 0 {
				t.Fatalf("other connection: errno %d", e)
			}
			orc.send(Request{Type: CmdDisc}, nil)
			if err := waitErr(t, otherDone); err != nil {
				t.Fatalf("other connection ended with %v", err)
			}
		})
	}
}

// gateBackend blocks each request until released and records how many
// were in the backend at once.
type gateBackend struct {
	*Memory
	gate       chan struct{}
	in         atomic.Int32
	maxIn      atomic.Int32
	entered    chan int64
	releaseAll sync.Once
}

func newGateBackend(size int64) *gateBackend {
	return &gateBackend{Memory: NewMemory(size), gate: make(chan struct{}), entered: make(chan int64, 1024)}
}

func (g *gateBackend) enter(off int64) {
	n := g.in.Add(1)
	for {
		m := g.maxIn.Load()
		if n <= m || g.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	g.entered <- off
	<-g.gate
	g.in.Add(-1)
}

func (g *gateBackend) ReadAt(p []byte, off int64) (int, error) {
	g.enter(off)
	return g.Memory.ReadAt(p, off)
}

func (g *gateBackend) WriteAt(p []byte, off int64) (int, error) {
	g.enter(off)
	return g.Memory.WriteAt(p, off)
}

func (g *gateBackend) open() { g.releaseAll.Do(func() { close(g.gate) }) }

// NonBlocking is false: the gate blocks, so requests go to workers.
func (g *gateBackend) NonBlocking() bool { return false }

func TestConcurrentRequestsUpToQueueDepth(t *testing.T) {
	const qd = 8
	g := newGateBackend(1 << 20)
	defer g.open()
	c, done := serving(t, g, TransmissionOptions{QueueDepth: qd})
	rc := rawConn{t, c}
	lens := map[uint64]int{}
	for i := range 2 * qd {
		rc.send(Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i) * 4096, Length: 4096}, nil)
		lens[uint64(i)] = 4096
	}
	// All qd requests reach the backend at once, and no more.
	for range qd {
		select {
		case <-g.entered:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d requests in the backend; want %d at once", g.in.Load(), qd)
		}
	}
	select {
	case off := <-g.entered:
		t.Fatalf("request at %d entered the backend beyond queue depth %d", off, qd)
	case <-time.After(100 * time.Millisecond):
	}
	g.open()
	seen := map[uint64]bool{}
	for range 2 * qd {
		r, data := rc.reply(lens)
		if r.Errno != 0 || len(data) != 4096 || seen[r.Cookie] {
			t.Fatalf("reply %+v with %d bytes (dup %v)", r, len(data), seen[r.Cookie])
		}
		seen[r.Cookie] = true
	}
	if m := g.maxIn.Load(); m != qd {
		t.Fatalf("max requests in the backend at once = %d, want %d", m, qd)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// orderBackend blocks reads at offset 0 until released.
type orderBackend struct {
	*Memory
	release chan struct{}
}

func (o *orderBackend) NonBlocking() bool { return false }

func (o *orderBackend) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		<-o.release
	}
	return o.Memory.ReadAt(p, off)
}

func TestRepliesOutOfOrder(t *testing.T) {
	o := &orderBackend{Memory: NewMemory(1 << 20), release: make(chan struct{})}
	testRepliesOutOfOrder(t, o, o)
}

// testRepliesOutOfOrder checks that a fast READ is replied while a slow
// one (held by o, in b: o itself or a backend over it) is not.
func testRepliesOutOfOrder(t *testing.T, o *orderBackend, b Backend) {
	c, done := serving(t, b, TransmissionOptions{})
	rc := rawConn{t, c}
	lens := map[uint64]int{1: 512, 2: 512}
	rc.send(Request{Type: CmdRead, Cookie: 1, Offset: 0, Length: 512}, nil)
	rc.send(Request{Type: CmdRead, Cookie: 2, Offset: 4096, Length: 512}, nil)
	if r, _ := rc.reply(lens); r.Cookie != 2 {
		t.Fatalf("first reply is for cookie %d; the slow request blocked the fast one", r.Cookie)
	}
	close(o.release)
	if r, _ := rc.reply(lens); r.Cookie != 1 {
		t.Fatalf("second reply is for cookie %d", r.Cookie)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// journalBackend records the order of completed writes and flushes.
// inline chooses how the loop serves it.
type journalBackend struct {
	*Memory
	inline  bool
	mu      sync.Mutex
	written map[int64]bool // completed writes (by offset) not yet flushed
	durable map[int64]bool // writes covered by a completed flush
	flushes int
}

func newJournal(size int64) *journalBackend {
	return &journalBackend{Memory: NewMemory(size), written: map[int64]bool{}, durable: map[int64]bool{}}
}

func (j *journalBackend) NonBlocking() bool { return j.inline }

// journalIn serves j in mode: j.inline chooses inline or workers.
func journalIn(t *testing.T, j *journalBackend, mode string) Backend {
	j.inline = mode == "inline"
	if mode == "inline" || mode == "workers" {
		return j
	}
	return inMode(t, j, mode)
}

func (j *journalBackend) WriteAt(p []byte, off int64) (int, error) {
	// A little work so writes overlap with the flush.
	time.Sleep(time.Duration(off%7) * 100 * time.Microsecond)
	n, err := j.Memory.WriteAt(p, off)
	j.mu.Lock()
	j.written[off] = true
	j.mu.Unlock()
	return n, err
}

func (j *journalBackend) Flush() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for off := range j.written {
		j.durable[off] = true
	}
	clear(j.written)
	j.flushes++
	return nil
}

func (j *journalBackend) flushCount() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.flushes
}

func (j *journalBackend) isDurable(off int64) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.durable[off]
}

// TestFlushCoversCompletedWrites: every write whose reply the client
// had when it sent FLUSH is durable by the time FLUSH is answered, while
// writes keep flowing concurrently.
func TestFlushCoversCompletedWrites(t *testing.T) {
	for _, mode := range serveModes {
		t.Run(mode, func(t *testing.T) {
			j := newJournal(4 << 20)
			testFlushCovers(t, j, journalIn(t, j, mode))
		})
	}
}

// testFlushCovers serves j as b (j itself, or a wrapper around it).
func testFlushCovers(t *testing.T, j *journalBackend, b Backend) {
	c, done := serving(t, b, TransmissionOptions{QueueDepth: 16})
	rc := rawConn{t, c}
	payload := make([]byte, 4096)
	var mu sync.Mutex
	acked := map[uint64]bool{} // write cookies replied so far
	flushCovers := map[uint64][]uint64{}
	replies := make(chan SimpleReply, 1024)
	go func() {
		for {
			var h [SimpleReplySize]byte
			if _, err := io.ReadFull(c, h[:]); err != nil {
				close(replies)
				return
			}
			var r SimpleReply
			DecodeSimpleReply(h[:], &r)
			if r.Cookie < 1000 {
				mu.Lock()
				acked[r.Cookie] = true
				mu.Unlock()
			}
			replies <- r
		}
	}()
	const writes, flushEvery = 400, 25
	cookie := uint64(1000)
	for i := range writes {
		rc.send(Request{Type: CmdWrite, Cookie: uint64(i), Offset: uint64(i) * 4096, Length: 4096}, payload)
		if i%flushEvery == flushEvery-1 {
			cookie++
			mu.Lock()
			for k := range acked {
				flushCovers[cookie] = append(flushCovers[cookie], k)
			}
			mu.Unlock()
			rc.send(Request{Type: CmdFlush, Cookie: cookie}, nil)
		}
	}
	flushesChecked := 0
	covered := 0
	for got := 0; got < writes+writes/flushEvery; got++ {
		r, ok := <-replies
		if !ok {
			t.Fatal("connection closed early")
		}
		if r.Errno != 0 {
			t.Fatalf("reply %+v", r)
		}
		if r.Cookie > 1000 {
			for _, w := range flushCovers[r.Cookie] {
				if !j.isDurable(int64(w) * 4096) {
					t.Fatalf("FLUSH %d replied before write %d (acknowledged before the flush was sent) was durable", r.Cookie, w)
				}
				covered++
			}
			flushesChecked++
		}
	}
	if flushesChecked != writes/flushEvery || covered == 0 {
		t.Fatalf("checked %d flushes covering %d writes", flushesChecked, covered)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestFUAWriteIsDurableWhenReplied(t *testing.T) {
	for _, mode := range serveModes {
		t.Run(mode, func(t *testing.T) {
			j := newJournal(1 << 20)
			testFUA(t, j, journalIn(t, j, mode))
		})
	}
}

func testFUA(t *testing.T, j *journalBackend, b Backend) {
	c, done := serving(t, b, TransmissionOptions{})
	rc := rawConn{t, c}
	for i, flags := range []uint16{0, CmdFlagFUA} {
		off := uint64(i+1) * 8192
		if e, _ := rc.roundTrip(Request{Type: CmdWrite, Flags: flags, Cookie: 1, Offset: off, Length: 512}, make([]byte, 512)); e != 0 {
			t.Fatalf("errno %d", e)
		}
		if got, want := j.isDurable(int64(off)), flags == CmdFlagFUA; got != want {
			t.Fatalf("write flags %#x: durable when replied = %v, want %v", flags, got, want)
		}
	}
	// FUA on WRITE_ZEROES and TRIM flushes too.
	before := j.flushCount()
	rc.roundTrip(Request{Type: CmdWriteZeroes, Flags: CmdFlagFUA, Cookie: 2, Length: 512}, nil)
	rc.roundTrip(Request{Type: CmdTrim, Flags: CmdFlagFUA, Cookie: 3, Length: 512}, nil)
	if n := j.flushCount(); n != before+2 {
		t.Fatalf("FUA on WRITE_ZEROES and TRIM flushed %d times, want 2", n-before)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// zeroRecorder records how WRITE_ZEROES and TRIM reach the backend.
type zeroRecorder struct {
	*Memory
	calls []string
}

func (z *zeroRecorder) WriteZeroes(off, length int64, mayUnmap bool) error {
	z.calls = append(z.calls, fmt.Sprintf("zero %d+%d unmap=%v", off, length, mayUnmap))
	return z.Memory.WriteZeroes(off, length, mayUnmap)
}

func (z *zeroRecorder) Discard(off, length int64) error {
	z.calls = append(z.calls, fmt.Sprintf("discard %d+%d", off, length))
	return z.Memory.Discard(off, length)
}

func TestTrimAndWriteZeroes(t *testing.T) {
	z := &zeroRecorder{Memory: NewMemory(1 << 20)}
	c, done := serving(t, z, TransmissionOptions{})
	rc := rawConn{t, c}
	rc.roundTrip(Request{Type: CmdWriteZeroes, Cookie: 1, Offset: 4096, Length: 8192}, nil)
	rc.roundTrip(Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole, Cookie: 2, Offset: 0, Length: 512}, nil)
	rc.roundTrip(Request{Type: CmdTrim, Cookie: 3, Offset: 65536, Length: 65536}, nil)
	rc.send(Request{Type: CmdDisc}, nil)
	waitErr(t, done)
	want := []string{"zero 4096+8192 unmap=true", "zero 0+512 unmap=false", "discard 65536+65536"}
	if fmt.Sprint(z.calls) != fmt.Sprint(want) {
		t.Fatalf("backend calls %q, want %q", z.calls, want)
	}

	// Without ZeroWriter the loop writes zeroes itself.
	m := NewMemory(1 << 20)
	m.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 0)
	c, done = serving(t, plainBackend{m}, TransmissionOptions{})
	rc = rawConn{t, c}
	if e, _ := rc.roundTrip(Request{Type: CmdWriteZeroes, Cookie: 1, Offset: 1000, Length: 300000}, nil); e != 0 {
		t.Fatalf("errno %d", e)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	waitErr(t, done)
	got := make([]byte, 1<<20)
	m.ReadAt(got, 0)
	for i, v := range got {
		if want := byte(1); i >= 1000 && i < 301000 {
			want = 0
			if v != want {
				t.Fatalf("byte %d = %d, want %d", i, v, want)
			}
		} else if v != want {
			t.Fatalf("byte %d = %d, want %d", i, v, want)
		}
	}
}

// TestDiscDrainsInFlight: requests in flight when DISC arrives are
// still served and replied before the connection closes.
func TestDiscDrainsInFlight(t *testing.T) {
	g := newGateBackend(1 << 20)
	testDiscDrains(t, g, g)
}

// testDiscDrains checks that the 4 reads held by g in b (g itself, or a
// backend over it) are replied after DISC, and only then the connection
// closes.
func testDiscDrains(t *testing.T, g *gateBackend, b Backend) {
	c, done := serving(t, b, TransmissionOptions{})
	rc := rawConn{t, c}
	lens := map[uint64]int{}
	for i := range 4 {
		rc.send(Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i) * 512, Length: 512}, nil)
		lens[uint64(i)] = 512
		<-g.entered
	}
	rc.send(Request{Type: CmdDisc}, nil)
	select {
	case err := <-done:
		t.Fatalf("ServeTransmission returned %v with 4 requests in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.open()
	for range 4 {
		if r, data := rc.reply(lens); r.Errno != 0 || len(data) != 512 {
			t.Fatalf("reply %+v", r)
		}
	}
	rc.expectClosed()
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestCancelDrainsInFlight(t *testing.T) {
	g := newGateBackend(1 << 20)
	cli, srv := socketPair(t)
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeTransmission(ctx, srv, g, TransmissionOptions{}) }()
	rc := rawConn{t, cli}
	rc.send(Request{Type: CmdWrite, Cookie: 9, Length: 512}, make([]byte, 512))
	<-g.entered
	cancel()
	select {
	case err := <-done:
		t.Fatalf("returned %v before the write in flight finished", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.open()
	if r, _ := rc.reply(nil); r.Cookie != 9 || r.Errno != 0 {
		t.Fatalf("reply %+v", r)
	}
	if err := waitErr(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("ServeTransmission = %v, want context.Canceled", err)
	}
	rc.expectClosed()
}

// TestClientVanishes: the client closes with requests in flight; the
// loop must notice the failed reply writes and return, not hang.
func TestClientVanishes(t *testing.T) {
	g := newGateBackend(1 << 20)
	c, done := serving(t, g, TransmissionOptions{})
	rc := rawConn{t, c}
	for i := range 4 {
		rc.send(Request{Type: CmdRead, Cookie: uint64(i), Length: 64 << 10}, nil)
		<-g.entered
	}
	c.Close()
	g.open()
	waitErr(t, done)
}

func TestServeTransmissionOverPipe(t *testing.T) {
	// net.Pipe has no file descriptor: the fallback writer must work.
	cli, srv := net.Pipe()
	defer cli.Close()
	done := make(chan error, 1)
	go func() { done <- ServeTransmission(context.Background(), srv, NewMemory(1<<20), TransmissionOptions{}) }()
	rc := rawConn{t, cli}
	data := bytes.Repeat([]byte{7}, 4096)
	rc.roundTrip(Request{Type: CmdWrite, Cookie: 1, Length: 4096}, data)
	if e, got := rc.roundTrip(Request{Type: CmdRead, Cookie: 2, Length: 4096}, nil); e != 0 || !bytes.Equal(got, data) {
		t.Fatalf("errno %d", e)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []TransmissionOptions{{BlockSize: 3}, {BlockSize: 128 << 10}, {BlockSize: 4096, MaxPayload: 512}} {
		cli, srv := socketPair(t)
		err := ServeTransmission(context.Background(), srv, NewMemory(1<<20), o)
		if err == nil {
			t.Errorf("options %+v accepted", o)
		}
		cli.Close()
	}
}

func TestServerFlags(t *testing.T) {
	m := NewMemory(1 << 20)
	tests := []struct {
		b     Backend
		opts  TransmissionOptions
		multi bool
		want  uint16
	}{
		{m, TransmissionOptions{}, false, FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes},
		{m, TransmissionOptions{}, true, FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn},
		{m, TransmissionOptions{ReadOnly: true}, false, FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagReadOnly},
		{plainBackend{m}, TransmissionOptions{}, false, FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendWriteZeroes},
	}
	for _, tt := range tests {
		if got := ServerFlags(tt.b, tt.opts, tt.multi); got != uint64(tt.want) {
			t.Errorf("ServerFlags(%T, %+v, %v) = %#x, want %#x", tt.b, tt.opts, tt.multi, got, tt.want)
		}
	}
}

// fuaRecorder has its own durable write.
type fuaRecorder struct {
	*Memory
	mu          sync.Mutex
	fuaWrites   int
	flushes     int
	plainWrites int
}

func (f *fuaRecorder) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.plainWrites++
	f.mu.Unlock()
	return f.Memory.WriteAt(p, off)
}

func (f *fuaRecorder) WriteAtFUA(p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.fuaWrites++
	f.mu.Unlock()
	return f.Memory.WriteAt(p, off)
}

func (f *fuaRecorder) Flush() error {
	f.mu.Lock()
	f.flushes++
	f.mu.Unlock()
	return nil
}

func TestFUAUsesFUAWriter(t *testing.T) {
	f := &fuaRecorder{Memory: NewMemory(1 << 20)}
	c, done := serving(t, f, TransmissionOptions{})
	rc := rawConn{t, c}
	rc.roundTrip(Request{Type: CmdWrite, Flags: CmdFlagFUA, Cookie: 1, Length: 512}, make([]byte, 512))
	rc.roundTrip(Request{Type: CmdWrite, Cookie: 2, Length: 512}, make([]byte, 512))
	rc.send(Request{Type: CmdDisc}, nil)
	waitErr(t, done)
	if f.fuaWrites != 1 || f.plainWrites != 1 || f.flushes != 0 {
		t.Fatalf("FUA writes %d, plain writes %d, flushes %d; want 1, 1, 0", f.fuaWrites, f.plainWrites, f.flushes)
	}
}

// stallAt is an inline (NonBlocking) memory that holds the READ at one
// offset until released, to look at the replies written meanwhile.
type stallAt struct {
	*Memory
	off     int64
	stalled chan struct{}
	release chan struct{}
}

func (s *stallAt) ReadAt(p []byte, off int64) (int, error) {
	if off == s.off {
		close(s.stalled)
		<-s.release
	}
	return s.Memory.ReadAt(p, off)
}

// An inline session does not hold every reply of a burst until the burst
// is served: the first maxDeferredReplies go out while later requests
// are still being served, so the client can refill its queue.
func TestInlineRepliesGoOutDuringABurst(t *testing.T) {
	const n = maxDeferredReplies + 4
	b := &stallAt{Memory: NewMemory(1 << 20), off: (maxDeferredReplies + 1) * 512,
		stalled: make(chan struct{}), release: make(chan struct{})}
	c, done := serving(t, b, TransmissionOptions{QueueDepth: 2 * n})
	burst, lens := readBurst(n)
	if _, err := c.Write(burst); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the server never reached the stalled request")
	}
	rc := rawConn{t, c}
	// The stalled request is the (maxDeferredReplies+2)th: the first
	// maxDeferredReplies replies must already be out.
	for i := range maxDeferredReplies {
		if r, _ := rc.reply(lens); r.Errno != 0 || r.Cookie != uint64(i) {
			close(b.release)
			t.Fatalf("reply %d while a later request is served: %+v", i, r)
		}
	}
	close(b.release)
	for i := maxDeferredReplies; i < n; i++ {
		if r, _ := rc.reply(lens); r.Errno != 0 || r.Cookie != uint64(i) {
			t.Fatalf("reply %d: %+v", i, r)
		}
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// An inline WRITE whose payload comes in pieces waits for the rest in
// the read buffer; the replies it holds back meanwhile must go out first,
// since the client may want them before it sends more.
func TestInlineWriteArrivingInPieces(t *testing.T) {
	m := NewMemory(1 << 20)
	c, done := serving(t, m, TransmissionOptions{})
	rc := rawConn{t, c}
	read := make([]byte, RequestSize)
	(&Request{Type: CmdRead, Cookie: 1, Length: 512}).Encode(read)
	payload := bytes.Repeat([]byte("piecemeal"), 4096/9+1)[:4096]
	write := make([]byte, RequestSize)
	(&Request{Type: CmdWrite, Cookie: 2, Offset: 8192, Length: 4096}).Encode(write)
	write = append(write, payload[:1000]...)
	if _, err := c.Write(append(read, write...)); err != nil {
		t.Fatal(err)
	}
	// The READ's reply comes while the WRITE's payload is incomplete.
	if r, _ := rc.reply(map[uint64]int{1: 512}); r.Errno != 0 || r.Cookie != 1 {
		t.Fatalf("READ reply %+v", r)
	}
	if _, err := c.Write(payload[1000:]); err != nil {
		t.Fatal(err)
	}
	if r, _ := rc.reply(nil); r.Errno != 0 || r.Cookie != 2 {
		t.Fatalf("WRITE reply %+v", r)
	}
	got := make([]byte, 4096)
	if _, err := m.ReadAt(got, 8192); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("written data differs (%v)", err)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}
