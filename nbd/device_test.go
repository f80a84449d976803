package nbd

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// kernelHasNBD reports whether this kernel can give us an NBD device
// without loading anything, or could load the module.
func kernelHasNBD() bool {
	if _, err := lookupFamily(); err == nil {
		return true
	}
	_, err := os.Stat("/sys/module/nbd")
	return err == nil
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// On a kernel without NBD (the machines that build this project) Attach
// must fail with ErrNoKernelSupport, say what is missing and where to
// read more, and leave nothing behind.
func TestAttachWithoutKernelSupport(t *testing.T) {
	if kernelHasNBD() {
		t.Skip("this kernel has NBD: the no-support path is covered by the VM suite's module loading instead")
	}
	if _, err := os.Stat("/lib/modules/" + uname(t) + "/kernel/drivers/block/nbd.ko"); err == nil {
		t.Skip("the nbd module is installed here; this test is about kernels without it")
	}
	fds, goroutines := openFDs(t), runtime.NumGoroutine()

	_, err := Attach(context.Background(), NewMemory(1<<20), AttachOptions{Index: IndexAny})
	if !errors.Is(err, ErrNoKernelSupport) {
		t.Fatalf("Attach error = %v, want one wrapping ErrNoKernelSupport", err)
	}
	t.Logf("Attach on this kernel: %v", err)
	for _, want := range []string{"CONFIG_BLK_DEV_NBD", "nbd module", "Kernel support", "README"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	_, err = Reattach(context.Background(), 0, NewMemory(1<<20), AttachOptions{})
	if !errors.Is(err, ErrNoKernelSupport) {
		t.Errorf("Reattach error = %v, want ErrNoKernelSupport", err)
	}

	// No devices exist without the module, and List says so without error.
	list, err := List(context.Background())
	if err != nil || len(list) != 0 {
		t.Errorf("List = %v, %v; want an empty list", list, err)
	}

	if got := openFDs(t); got != fds {
		t.Errorf("%d open descriptors after the failed attach, %d before", got, fds)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		t.Errorf("%d goroutines after the failed attach, %d before", got, goroutines)
	}
}

func uname(t *testing.T) string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestAttachOptionsValidation(t *testing.T) {
	for _, c := range []struct {
		name string
		opts AttachOptions
	}{
		{"block size not a power of two", AttachOptions{BlockSize: 1000}},
		{"block size too large", AttachOptions{BlockSize: 8192}},
		{"block size too small", AttachOptions{BlockSize: 256}},
		{"negative index", AttachOptions{Index: -2}},
		{"negative io timeout", AttachOptions{IOTimeout: -time.Second}},
		{"negative dead-connection timeout", AttachOptions{DeadConnTimeout: -time.Second}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Attach(context.Background(), NewMemory(1<<20), c.opts)
			if err == nil || errors.Is(err, ErrNoKernelSupport) {
				t.Fatalf("Attach = %v, want an option error before touching the kernel", err)
			}
		})
	}
	// A backend smaller than one block cannot be a device.
	_, err := Attach(context.Background(), NewMemory(100), AttachOptions{Index: IndexAny})
	if err == nil || !strings.Contains(err.Error(), "smaller than one block") {
		t.Errorf("Attach of a 100-byte backend = %v, want a size error", err)
	}

	o, err := AttachOptions{Index: IndexAny}.normalized()
	if err != nil {
		t.Fatal(err)
	}
	if o.Connections != 1 || o.BlockSize != 4096 || o.MaxSectorsKB != DefaultMaxSectorsKB || o.Logger == nil {
		t.Errorf("defaults: %+v", o)
	}
	// The largest request: the kernel's limits, and at least one block.
	for _, kb := range []int{-2, 2, 32<<10 + 1} {
		if _, err := (AttachOptions{Index: IndexAny, MaxSectorsKB: kb}).normalized(); err == nil || !strings.Contains(err.Error(), "largest request") {
			t.Errorf("MaxSectorsKB %d: %v, want a range error", kb, err)
		}
	}
	for _, kb := range []int{-1, 4, 32 << 10} {
		if o, err := (AttachOptions{Index: IndexAny, MaxSectorsKB: kb}).normalized(); err != nil || o.MaxSectorsKB != kb {
			t.Errorf("MaxSectorsKB %d: %d, %v", kb, o.MaxSectorsKB, err)
		}
	}
}

func TestOpErrorHints(t *testing.T) {
	e := &OpError{Op: "connect", Index: 2, Err: errEBUSY()}
	if !strings.Contains(e.Error(), "/dev/nbd2") || !strings.Contains(e.Error(), "already connected") {
		t.Errorf("EBUSY message %q lacks the device or the hint", e)
	}
	if !errors.Is(e, errEBUSY()) {
		t.Error("OpError does not unwrap to its errno")
	}
}

func errEBUSY() error { return unix.EBUSY }
