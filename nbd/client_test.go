package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startServer serves exports on a unix socket until the test ends.
func startServer(t *testing.T, exports ...Export) string {
	t.Helper()
	log, _ := testLogger(t)
	s, err := NewServer(exports, ServerOptions{Logger: log})
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
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return sock
}

func dial(t *testing.T, sock, name string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClientAsBackend(t *testing.T) {
	sock := startServer(t, Export{Name: "m", Backend: NewMemory(8<<20 + 123)})
	c := dial(t, sock, "m")
	if c.Size() != 8<<20+123 {
		t.Fatalf("size %d", c.Size())
	}
	backendSuite(t, c)
}

func TestClientConcurrentCalls(t *testing.T) {
	m := NewMemory(16 << 20)
	sock := startServer(t, Export{Name: "m", Backend: m, Options: TransmissionOptions{QueueDepth: 8}})
	c := dial(t, sock, "m")
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			p := make([]byte, 4096*(1+w%4))
			got := make([]byte, len(p))
			for i := range 50 {
				off := int64(w)*(1<<20) + int64(i%16)*int64(len(p))
				for j := range p {
					p[j] = byte(rng.Uint32())
				}
				if _, err := c.WriteAt(p, off); err != nil {
					t.Error(err)
					return
				}
				if _, err := c.ReadAt(got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, p) {
					t.Errorf("worker %d: read back differs at %d", w, off)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestClientLargeIOSplits(t *testing.T) {
	m := NewMemory(8 << 20)
	sock := startServer(t, Export{Name: "m", Backend: m, Options: TransmissionOptions{MaxPayload: 256 << 10, BlockSize: 512}})
	c := dial(t, sock, "m")
	if mn, pref, mx := c.BlockSizes(); mn != 512 || pref != 4096 || mx != 256<<10 {
		t.Fatalf("block sizes %d %d %d", mn, pref, mx)
	}
	p := make([]byte, 3<<20)
	for i := range p {
		p[i] = byte(i * 7)
	}
	if n, err := c.WriteAt(p, 1<<20); n != len(p) || err != nil {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	got := make([]byte, len(p))
	if n, err := c.ReadAt(got, 1<<20); n != len(p) || err != nil || !bytes.Equal(got, p) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
}

func TestClientErrors(t *testing.T) {
	sock := startServer(t,
		Export{Name: "m", Backend: NewMemory(1 << 20)},
		Export{Name: "ro", Backend: NewMemory(1 << 20), Options: TransmissionOptions{ReadOnly: true}},
	)
	c := dial(t, sock, "m")
	_, err := c.WriteAt(make([]byte, 4096), 1<<20-512)
	var re *ReplyError
	if !errors.As(err, &re) || !errors.Is(err, syscall.ENOSPC) || re.Command != CmdWrite {
		t.Fatalf("write past end: %v, want a ReplyError with ENOSPC", err)
	}
	if n, err := c.ReadAt(make([]byte, 100), 1<<20-10); n != 10 || err != io.EOF {
		t.Fatalf("read across the end = %d, %v; want 10, EOF", n, err)
	}
	// The connection is still fine.
	if _, err := c.WriteAt([]byte{1}, 0); err != nil {
		t.Fatal(err)
	}

	ro := dial(t, sock, "ro")
	if ro.Flags()&FlagReadOnly == 0 {
		t.Fatalf("flags %#x lack READ_ONLY", ro.Flags())
	}
	if _, err := ro.WriteAt([]byte{1}, 0); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write to read-only: %v, want EPERM", err)
	}
	if err := ro.Discard(0, 4096); !errors.Is(err, syscall.ENOTSUP) {
		t.Fatalf("discard on read-only: %v, want ENOTSUP (trim not advertised)", err)
	}

	_, err = Dial(context.Background(), "unix", sock, "missing")
	if !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("unknown export: %v, want ErrUnknownExport", err)
	}
}

func TestClientCloseWaitsForCallsInFlight(t *testing.T) {
	g := newGateBackend(1 << 20)
	sock := startServer(t, Export{Name: "g", Backend: g})
	c := dial(t, sock, "g")
	res := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 512), 0)
		res <- err
	}()
	<-g.entered
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	time.Sleep(20 * time.Millisecond)
	if _, err := c.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v, want ErrClosed", err)
	}
	g.open()
	if err := <-res; err != nil {
		t.Fatalf("call in flight during Close: %v", err)
	}
	<-closed
}

func TestClientServerGone(t *testing.T) {
	cli, srv := socketPair(t)
	s, _ := NewServer([]Export{{Name: "m", Backend: NewMemory(1 << 20)}}, ServerOptions{})
	go s.ServeConn(context.Background(), srv)
	c, err := NewClient(context.Background(), cli, "m")
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Fatal("read on a dead connection succeeded")
	}
	c.Close()
}

func TestServeStopsOnCancel(t *testing.T) {
	m := NewMemory(1 << 20)
	s, _ := NewServer([]Export{{Name: "m", Backend: m}}, ServerOptions{})
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	c, err := Dial(context.Background(), "unix", sock, "m")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := c.ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("connection still served after the server stopped")
	}
}
