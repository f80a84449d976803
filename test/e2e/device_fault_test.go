//go:build vmtest

package e2e

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// stuckBackend is a memory backend whose requests touching [at, at+4096)
// hang until release: a cluster stuck on one object.
type stuckBackend struct {
	*nbd.Memory
	at      int64
	gate    chan struct{}
	once    sync.Once
	entered chan struct{}
}

func newStuckBackend(size, at int64) *stuckBackend {
	return &stuckBackend{Memory: nbd.NewMemory(size), at: at, gate: make(chan struct{}), entered: make(chan struct{}, 64)}
}

func (s *stuckBackend) wait(p []byte, off int64) {
	if off < s.at+4096 && off+int64(len(p)) > s.at {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-s.gate
	}
}

func (s *stuckBackend) ReadAt(p []byte, off int64) (int, error) {
	s.wait(p, off)
	return s.Memory.ReadAt(p, off)
}

func (s *stuckBackend) WriteAt(p []byte, off int64) (int, error) {
	s.wait(p, off)
	return s.Memory.WriteAt(p, off)
}

func (s *stuckBackend) release()          { s.once.Do(func() { close(s.gate) }) }
func (s *stuckBackend) NonBlocking() bool { return false }

// directRead reads n bytes at off with O_DIRECT, so the kernel sends a
// request rather than answering from its cache.
func directRead(dev string, off int64, n int) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	_, err = f.ReadAt(buf, off)
	return err
}

// The kernel's request timer (30 s) shuts down a connection whose
// request is stuck and re-sends the request on another: the device
// hands the kernel a new socket for the dead one (RECONFIGURE), so it
// keeps both connections, and the stuck read completes without an IO
// error once the backend answers. Without the replacement a device
// loses a connection every 30 s of a slow cluster and fails its IO
// when the last one goes.
func TestLostConnectionsAreReplaced(t *testing.T) {
	testkit.RequireKernelNBD(t)
	mark := markKernelLog(t)
	since := func() string { return strings.Join(mark.since(), "\n") }
	b := newStuckBackend(64<<20, 8<<20)
	defer b.release()
	dev, err := nbd.Attach(context.Background(), b, nbd.AttachOptions{Index: nbd.IndexAny, Connections: 2, DeadConnTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Detach(context.Background())
	readErr := make(chan error, 1)
	go func() { readErr <- directRead(dev.Path(), 8<<20, 4096) }()
	<-b.entered
	// Past the kernel's 30 s timer: the first connection was dropped
	// and replaced, the read re-sent on the other one.
	deadline := time.Now().Add(90 * time.Second)
	for {
		_, _, replaced := dev.Connections()
		if replaced >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection replaced within 90s of a stuck request; kernel log:\n%s", since())
		}
		time.Sleep(500 * time.Millisecond)
	}
	live, configured, replaced := dev.Connections()
	t.Logf("after the kernel's timeout: %d/%d connections live, %d replaced", live, configured, replaced)
	b.release()
	select {
	case err := <-readErr:
		if err != nil {
			t.Fatalf("the stuck read failed: %v; kernel log:\n%s", err, since())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("the stuck read did not finish within 60s of the backend answering; kernel log:\n%s", since())
	}
	if err := directRead(dev.Path(), 0, 4096); err != nil {
		t.Fatalf("read after the slow period: %v", err)
	}
	testkit.Eventually(t, 10*time.Second, "both connections live", func() bool { l, _, _ := dev.Connections(); return l == 2 })
	log := since()
	if bad := ioErrorLines(mark.since()); len(bad) > 0 {
		t.Fatalf("IO errors in the kernel log:\n%s", strings.Join(bad, "\n"))
	}
	t.Logf("kernel log during the test:\n%s", log)
}

// IOTimeout: a request the backend does not answer in time fails with
// EIO, the device stays connected, other IO goes on, and the stuck
// block reads again once the backend answers.
func TestIOTimeoutFailsTheRequestNotTheDevice(t *testing.T) {
	testkit.RequireKernelNBD(t)
	b := newStuckBackend(64<<20, 8<<20)
	defer b.release()
	dev, err := nbd.Attach(context.Background(), b, nbd.AttachOptions{Index: nbd.IndexAny, IOTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Detach(context.Background())
	start := time.Now()
	err = directRead(dev.Path(), 8<<20, 4096)
	took := time.Since(start)
	if !errors.Is(err, unix.EIO) {
		t.Fatalf("read of a stuck block: %v after %v, want EIO", err, took)
	}
	if took < 2*time.Second || took > 20*time.Second {
		t.Fatalf("the stuck read failed after %v; want about the 2s io-timeout", took)
	}
	if err := directRead(dev.Path(), 0, 4096); err != nil {
		t.Fatalf("read elsewhere after the timeout: %v", err)
	}
	st, err := nbd.Status(context.Background(), dev.Index())
	if err != nil || !st.Connected {
		t.Fatalf("device after a timed-out request: %+v, %v", st, err)
	}
	b.release()
	if err := directRead(dev.Path(), 8<<20, 4096); err != nil {
		t.Fatalf("read of the block once the backend answers: %v", err)
	}
}

// Release hands the device over: it stays configured, its IO waits in
// the kernel, and Reattach (here in the same process, as a new server
// would) serves it again with the data intact.
func TestReleaseThenReattach(t *testing.T) {
	testkit.RequireKernelNBD(t)
	mem := nbd.NewMemory(16 << 20)
	dev, err := nbd.Attach(context.Background(), mem, nbd.AttachOptions{Index: nbd.IndexAny, DeadConnTimeout: time.Minute, BlockSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte(strings.Repeat("handover", 512))
	directIO(t, dev.Path(), 1<<20, want)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dev.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	st, err := nbd.Status(context.Background(), dev.Index())
	if err != nil || !st.Connected {
		t.Fatalf("after Release the device is %+v (%v); want it still configured", st, err)
	}
	readErr := make(chan error, 1)
	go func() { readErr <- directRead(dev.Path(), 1<<20, 4096) }()
	time.Sleep(time.Second) // the read waits in the kernel meanwhile
	// The device keeps its 512-byte blocks: a reattach without a block
	// size takes them, one with another size is refused.
	if _, err := nbd.Reattach(context.Background(), dev.Index(), mem, nbd.AttachOptions{BlockSize: 4096}); err == nil {
		t.Fatal("reattach with another block size succeeded")
	}
	if _, err := nbd.Reattach(context.Background(), dev.Index(), mem, nbd.AttachOptions{ReadOnly: true}); !errors.Is(err, nbd.ErrModeMismatch) {
		t.Fatalf("reattach read-only of a read-write device: %v, want ErrModeMismatch", err)
	}
	again, err := nbd.Reattach(context.Background(), dev.Index(), mem, nbd.AttachOptions{DeadConnTimeout: time.Minute})
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	defer again.Detach(context.Background())
	select {
	case err := <-readErr:
		if err != nil {
			t.Fatalf("the read issued during the handover failed: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the read issued during the handover did not finish within 60s of the reattach")
	}
	if got := directIO(t, again.Path(), 1<<20, want); string(got) != string(want) {
		t.Fatal("data differs after the handover")
	}
}

// A handover with the backend hung is bounded: Release returns
// ErrInFlight at its deadline instead of waiting for the backend.
func TestReleaseIsBoundedWhenTheBackendHangs(t *testing.T) {
	testkit.RequireKernelNBD(t)
	b := newStuckBackend(64<<20, 8<<20)
	defer b.release()
	dev, err := nbd.Attach(context.Background(), b, nbd.AttachOptions{Index: nbd.IndexAny, DeadConnTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	go directRead(dev.Path(), 8<<20, 4096)
	<-b.entered
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err = dev.Release(ctx)
	if !errors.Is(err, nbd.ErrInFlight) {
		t.Fatalf("Release with a hung request: %v, want ErrInFlight", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("Release took %v with a 2s deadline", took)
	}
	b.release()
	nbd.Disconnect(context.Background(), dev.Index())
}

// A reattach that offers more sockets than the device has connections:
// the kernel drops the extra socket at once (RECONFIGURE succeeds
// anyway). The device must settle with what the kernel took instead of
// handing it a new socket every second forever, and serve IO.
func TestReattachWithMoreSocketsSettles(t *testing.T) {
	testkit.RequireKernelNBD(t)
	mem := nbd.NewMemory(16 << 20)
	dev, err := nbd.Attach(context.Background(), mem, nbd.AttachOptions{Index: nbd.IndexAny, DeadConnTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dev.Release(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := nbd.Reattach(context.Background(), dev.Index(), mem, nbd.AttachOptions{Connections: 3, DeadConnTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Detach(context.Background())
	time.Sleep(12 * time.Second)
	_, _, settled := again.Connections()
	time.Sleep(5 * time.Second)
	live, _, replaced := again.Connections()
	if replaced != settled {
		t.Fatalf("still replacing connections the kernel drops at once: %d replacements, then %d 5s later", settled, replaced)
	}
	if live != 1 {
		t.Fatalf("%d connections live; the device has 1", live)
	}
	if got := directIO(t, again.Path(), 0, []byte(strings.Repeat("x", 4096))); string(got) != strings.Repeat("x", 4096) {
		t.Fatal("IO after the reattach returned other data")
	}
}
