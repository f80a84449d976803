package bench

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// counting counts every call that touches data.
type counting struct {
	nbd.Backend
	ios atomic.Int64
}

func (c *counting) ReadAt(p []byte, off int64) (int, error) {
	c.ios.Add(1)
	return c.Backend.ReadAt(p, off)
}

func (c *counting) WriteAt(p []byte, off int64) (int, error) {
	c.ios.Add(1)
	return c.Backend.WriteAt(p, off)
}

func TestExportTargetThroughRealSocket(t *testing.T) {
	mem := &counting{Backend: nbd.NewMemory(32 << 20)}
	tgt := Export{Backend: mem, Spec: "mem:32M", SocketDir: t.TempDir()}
	sess, err := tgt.Open(context.Background(), Setup{Connections: 3, QueueDepth: 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(sess.Backends) != 3 || sess.Connections != 3 || sess.Target != "export" {
		t.Fatalf("session: %d backends, %d connections, target %q", len(sess.Backends), sess.Connections, sess.Target)
	}
	res, err := Run(context.Background(), sess, Options{
		Workload: Workload{Pattern: RandRW, BlockSize: 4096, ReadPercent: 50, Seed: 2},
		IODepth:  6, TotalBytes: 8 << 20, Verify: true,
	})
	if cerr := sess.Close(); cerr != nil {
		t.Errorf("close: %v", cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Total.IOs != 8<<20/4096 || res.Connections != 3 || res.Target != "export" {
		t.Fatalf("result: %d IOs over %d connections via %q", res.Total.IOs, res.Connections, res.Target)
	}
	// Every IO went through the server to the backend (plus the
	// verify read-back), none around it.
	if got := mem.ios.Load(); got < int64(res.Total.IOs) {
		t.Fatalf("backend saw %d IOs, bench counted %d", got, res.Total.IOs)
	}
	if res.Verify == nil || res.Verify.ReadBack == 0 || res.Verify.Checked == 0 {
		t.Fatalf("verify through the export checked nothing: %+v", res.Verify)
	}
}

func TestExportTargetClosesCleanly(t *testing.T) {
	tgt := Export{Backend: nbd.NewMemory(1 << 20), Spec: "mem:1M"}
	sess, err := tgt.Open(context.Background(), Setup{Connections: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("closing the export session hung")
	}
}

func TestRawTargetRefusesConnections(t *testing.T) {
	_, err := Raw{Backend: nbd.NewMemory(1 << 20)}.Open(context.Background(), Setup{Connections: 2})
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Option != "connections" {
		t.Fatalf("raw with 2 connections: %v", err)
	}
}

func TestDeviceTargetFailsCleanlyWithoutKernelNBD(t *testing.T) {
	if kernelHasNBD() == nil {
		t.Skip("this kernel has NBD: the device target is exercised by the VM cross-check (bench/scripts/crosscheck-vm.sh)")
	}
	mem := &counting{Backend: nbd.NewMemory(1 << 20)}
	tgt := Device{Backend: mem, Spec: "mem:1M", IOSize: 4096}
	if err := tgt.Check(context.Background(), Setup{Connections: 1}); !errors.Is(err, nbd.ErrNoKernelSupport) {
		t.Fatalf("Check = %v, want ErrNoKernelSupport", err)
	}
	_, err := tgt.Open(context.Background(), Setup{Connections: 1})
	if !errors.Is(err, nbd.ErrNoKernelSupport) {
		t.Fatalf("Open = %v, want ErrNoKernelSupport", err)
	}
	if n := mem.ios.Load(); n != 0 {
		t.Fatalf("%d IOs reached the backend before the device target failed", n)
	}
}

func TestContainsModule(t *testing.T) {
	dep := []byte("kernel/drivers/block/loop.ko:\nkernel/drivers/block/nbd.ko.xz:\nkernel/fs/nbdfoo.ko:\n")
	if !containsModule(dep, "nbd.ko") || !containsModule(dep, "loop.ko") || containsModule(dep, "rbd.ko") {
		t.Fatal("containsModule misreads modules.dep")
	}
	if containsModule([]byte("kernel/fs/nbdfoo.ko:\n"), "nbd.ko") {
		t.Fatal("nbdfoo.ko taken for nbd.ko")
	}
}
