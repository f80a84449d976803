package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serveWith serves exports under opts on a unix socket until the test
// ends and returns the socket and the server's log.
func serveWith(t *testing.T, opts ServerOptions, exports ...Export) (string, *logBuffer) {
	t.Helper()
	log, buf := testLogger(t)
	opts.Logger = log
	s, err := NewServer(exports, opts)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(40 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return sock, buf
}

func dialT(t *testing.T, sock string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestServerMaxConnections(t *testing.T) {
	sock, log := serveWith(t, ServerOptions{MaxConnections: 2}, Export{Backend: NewMemory(1 << 20)})
	a, b := dialT(t, sock), dialT(t, sock)
	defer b.Close()
	// The third is closed before the greeting: a clean EOF, not a hang.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 8)); err != io.EOF {
		t.Fatalf("third client read %d bytes, %v; want EOF", n, err)
	}
	if !strings.Contains(log.String(), "too many connections") {
		t.Errorf("no log line for the refused client:\n%s", log.String())
	}
	// Room again once a client leaves.
	a.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d, err := Dial(ctx, "unix", sock, "")
		cancel()
		if err == nil {
			d.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no room after a client left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gatedReads holds every READ larger than 4 KiB until gate closes and
// records how many bytes of them the backend held at once.
type gatedReads struct {
	*Memory
	gate          chan struct{}
	started, held atomic.Int64
	peak          atomic.Int64
}

func (g *gatedReads) NonBlocking() bool { return false }

func (g *gatedReads) ReadAt(p []byte, off int64) (int, error) {
	if len(p) > 4096 {
		g.started.Add(1)
		h := g.held.Add(int64(len(p)))
		for {
			pk := g.peak.Load()
			if h <= pk || g.peak.CompareAndSwap(pk, h) {
				break
			}
		}
		<-g.gate
		g.held.Add(-int64(len(p)))
	}
	return g.Memory.ReadAt(p, off)
}

// The server's budget spans connections: with 1 MiB, a second
// connection's 1 MiB READ waits (it is not dropped) while the first
// holds the budget, and a small READ on a third connection still runs.
func TestServerInFlightBudgetAcrossConnections(t *testing.T) {
	g := &gatedReads{Memory: NewMemory(4 << 20), gate: make(chan struct{})}
	sock, _ := serveWith(t, ServerOptions{MaxInFlightBytes: 1 << 20}, Export{Backend: g})
	errs := make(chan error, 2)
	for i := range 2 {
		c := dialT(t, sock)
		defer c.Close()
		go func() {
			_, err := c.ReadAt(make([]byte, 1<<20), int64(i)<<20)
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for g.started.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // room for a wrongly admitted second READ
	if n := g.started.Load(); n != 1 {
		t.Errorf("%d large READs reached the backend under a 1 MiB budget, want 1", n)
	}
	small := dialT(t, sock)
	defer small.Close()
	start := time.Now()
	if _, err := small.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("small READ while the budget is held: %v", err)
	}
	t.Logf("small READ past a held budget took %v", time.Since(start))
	close(g.gate)
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatalf("large READ: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a large READ never completed")
		}
	}
	if pk := g.peak.Load(); pk > 1<<20 {
		t.Errorf("backend held %d bytes of READs at once, want at most 1 MiB", pk)
	}
}

// rawTransmission opens the default export on sock with
// NBD_OPT_EXPORT_NAME and returns the connection in the transmission
// phase, for a client that misbehaves on purpose.
func rawTransmission(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		t.Fatal(err)
	}
	msg := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
	msg = binary.BigEndian.AppendUint64(msg, magicOpt)
	msg = binary.BigEndian.AppendUint32(msg, OptExportName)
	msg = binary.BigEndian.AppendUint32(msg, 0)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var info [10]byte
	if _, err := io.ReadFull(c, info[:]); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// On an AsyncBackend every connection's completions come from one shared
// goroutine (librbd's completion thread for an rbd: image). Client A
// sends 64 READs of 1 MiB and never reads the replies; client B's 4 KiB
// READ must still be answered at once: A's full socket may only delay A.
func TestAsyncStalledReaderDelaysOnlyItself(t *testing.T) {
	a := newAsyncOver(t, NewMemory(64<<20), true)
	sock, _ := serveWith(t, ServerOptions{}, Export{Backend: a})
	stalled := rawTransmission(t, sock)
	defer stalled.Close()
	var req [RequestSize]byte
	for i := range 64 {
		(&Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i) << 20, Length: 1 << 20}).Encode(req[:])
		if _, err := stalled.Write(req[:]); err != nil {
			t.Fatal(err)
		}
	}
	// Let A's replies fill its socket and the completions back up.
	deadline := time.Now().Add(10 * time.Second)
	for a.starts.Load() < 64 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)

	b := dialT(t, sock)
	defer b.Close()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := b.ReadAt(make([]byte, 4096), 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("B's 4 KiB READ took %v while A stalls", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("B's 4 KiB READ not answered within 1 s while A does not read its replies")
	}
	// A still gets every reply once it reads.
	buf := make([]byte, SimpleReplySize+1<<20)
	stalled.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range 64 {
		if _, err := io.ReadFull(stalled, buf); err != nil {
			t.Fatalf("A's reply %d: %v", i, err)
		}
		var r SimpleReply
		if err := DecodeSimpleReply(buf[:SimpleReplySize], &r); err != nil || r.Errno != 0 {
			t.Fatalf("A's reply %d: %+v, %v", i, r, err)
		}
	}
}
