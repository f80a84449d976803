//go:build vmtest

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// countFDs is the number of descriptors this process has open.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settleGoroutines waits for the goroutine count to drop to at most n.
func settleGoroutines(n int) int {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	return runtime.NumGoroutine()
}

// directIO writes data at off through the block device with O_DIRECT (so
// the kernel really sends NBD requests) and reads it back the same way.
func directIO(t *testing.T, dev string, off int64, data []byte) []byte {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// O_DIRECT needs an aligned buffer: anonymous mmap memory is.
	buf, err := unix.Mmap(-1, 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	copy(buf, data)
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatalf("write %s: %v", dev, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", dev, err)
	}
	clear(buf)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	return bytes.Clone(buf)
}

// The Go API end to end: Attach a memory backend, do IO through
// /dev/nbdN, Detach (and, in the second case, cancel the context), and
// nothing is left: no goroutine, no descriptor, the device free again.
func TestAttachDetachNoLeaks(t *testing.T) {
	testkit.RequireKernelNBD(t)
	for _, c := range []struct {
		name    string
		conns   int
		byCtx   bool
		backend int64
	}{
		{"one connection, Detach", 1, false, 64 << 20},
		{"four connections, context cancel", 4, true, 64 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Warm up what lives for the whole process (netlink, slog)
			// so the counts below compare like with like.
			if _, err := nbd.List(context.Background()); err != nil {
				t.Fatal(err)
			}
			fds, goroutines := countFDs(t), runtime.NumGoroutine()

			mem := nbd.NewMemory(c.backend)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dev, err := nbd.Attach(ctx, mem, nbd.AttachOptions{Index: nbd.IndexAny, Connections: c.conns, BackendID: "e2e:" + t.Name()})
			if err != nil {
				t.Fatalf("Attach: %v", err)
			}
			t.Logf("attached %s", dev.Path())
			if got := deviceBytes(t, dev.Path()); got != c.backend {
				t.Errorf("device size %d, want %d", got, c.backend)
			}
			if got := sysBlock(t, dev.Path(), "backend"); got != "e2e:"+t.Name() {
				t.Errorf("sysfs backend %q, want our identifier", got)
			}
			st, err := nbd.Status(context.Background(), dev.Index())
			if err != nil || !st.Connected || st.PID != os.Getpid() {
				t.Errorf("Status = %+v, %v; want connected, pid %d", st, err, os.Getpid())
			}

			data := make([]byte, 1<<20)
			rand.Read(data)
			off := int64(5 << 20)
			if got := directIO(t, dev.Path(), off, data); !bytes.Equal(got, data) {
				t.Fatal("data read back through the device differs from what was written")
			}
			// The bytes reached our backend, not just the page cache.
			back := make([]byte, len(data))
			if _, err := mem.ReadAt(back, off); err != nil || !bytes.Equal(back, data) {
				t.Fatalf("the memory backend does not hold the written data (err %v)", err)
			}

			if c.byCtx {
				cancel()
				select {
				case <-dev.Done():
				case <-time.After(30 * time.Second):
					t.Fatal("the device was still served 30s after its context was cancelled")
				}
			} else if err := dev.Detach(context.Background()); err != nil {
				t.Fatalf("Detach: %v", err)
			}
			if err := dev.Wait(); err != nil {
				t.Errorf("Wait after a clean detach: %v", err)
			}
			wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer wcancel()
			if err := nbd.WaitFree(wctx, dev.Index()); err != nil {
				t.Errorf("device not free after detach: %v", err)
			}
			if got := settleGoroutines(goroutines); got > goroutines {
				buf := make([]byte, 1<<16)
				t.Errorf("%d goroutines after detach, %d before:\n%s", got, goroutines, buf[:runtime.Stack(buf, true)])
			}
			if got := countFDs(t); got != fds {
				t.Errorf("%d open descriptors after detach, %d before", got, fds)
			}
		})
	}
}

// Index any: two attaches at once get two different devices; a fixed
// index already in use is refused with EBUSY.
func TestAttachIndexes(t *testing.T) {
	testkit.RequireKernelNBD(t)
	ctx := context.Background()
	a, err := nbd.Attach(ctx, nbd.NewMemory(8<<20), nbd.AttachOptions{Index: nbd.IndexAny})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach(ctx)
	b, err := nbd.Attach(ctx, nbd.NewMemory(8<<20), nbd.AttachOptions{Index: nbd.IndexAny})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Detach(ctx)
	if a.Index() == b.Index() {
		t.Fatalf("two attaches got the same device %s", a.Path())
	}
	_, err = nbd.Attach(ctx, nbd.NewMemory(8<<20), nbd.AttachOptions{Index: a.Index()})
	if err == nil {
		t.Fatalf("a second attach to %s succeeded", a.Path())
	}
	if !errorsIsErrno(err, unix.EBUSY) {
		t.Errorf("attach to a busy device: %v, want EBUSY", err)
	}
}
