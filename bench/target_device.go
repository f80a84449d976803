package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// Device attaches the backend to a kernel NBD device (/dev/nbdN, through
// nbd.Attach, served by this process) and drives the device with direct
// IO (O_DIRECT, no page cache): the whole path an application sees.
type Device struct {
	Backend nbd.Backend
	Spec    string
	Logger  *slog.Logger
	// IOSize is the workload's block size, to choose the device's
	// logical block size.
	IOSize int
	// ReadOnly attaches the device read-only (for read workloads on a
	// backend opened read-only).
	ReadOnly bool
}

// Name is "device".
func (Device) Name() string { return "device" }

// Check fails on a kernel without NBD before anything is opened (and so
// before any IO). nbd.Attach makes the same decision authoritatively (and
// loads the module); this is the early, cheap look: the module loaded or
// built in, or a module file it could load.
func (Device) Check(_ context.Context, s Setup) error {
	if err := checkConnections(s); err != nil {
		return err
	}
	return kernelHasNBD()
}

func kernelHasNBD() error {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return nil
	}
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err != nil {
		return err
	}
	release := utsString(uts.Release[:])
	dep, err := os.ReadFile("/lib/modules/" + release + "/modules.dep")
	if err == nil && containsModule(dep, "nbd.ko") {
		return nil
	}
	return fmt.Errorf("the device target needs a kernel NBD device: %w (kernel %s: no /sys/module/nbd, no nbd module in /lib/modules/%s)",
		nbd.ErrNoKernelSupport, release, release)
}

func utsString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// containsModule reports whether modules.dep lists the module name
// (".../nbd.ko" or a compressed ".../nbd.ko.xz" before the colon).
func containsModule(dep []byte, name string) bool {
	for _, line := range strings.Split(string(dep), "\n") {
		mod, _, _ := strings.Cut(line, ":")
		base := path.Base(mod)
		if base == name || strings.HasPrefix(base, name+".") {
			return true
		}
	}
	return false
}

// Open attaches the device and opens it with O_DIRECT.
func (t Device) Open(ctx context.Context, s Setup) (*Session, error) {
	if err := t.Check(ctx, s); err != nil {
		return nil, err
	}
	bsz := s.BlockSize
	if bsz == 0 {
		bsz = 4096
		if t.IOSize%4096 != 0 {
			bsz = 512 // O_DIRECT needs IO aligned to the logical block size
		}
	}
	// The device lives until Close: its context is not the caller's.
	devCtx, cancel := context.WithCancel(context.Background())
	dev, err := nbd.Attach(devCtx, t.Backend, nbd.AttachOptions{
		Index:       nbd.IndexAny,
		Connections: s.Connections,
		QueueDepth:  s.QueueDepth,
		BlockSize:   bsz,
		ReadOnly:    t.ReadOnly,
		BackendID:   "rbd-nbd-graph-bench:" + t.Spec,
		Logger:      t.Logger,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("device: attaching %s: %w", t.Spec, err)
	}
	detach := func() error {
		err := dev.Detach(context.Background())
		cancel()
		return err
	}
	f, err := openDirect(dev.Path(), t.ReadOnly)
	if err != nil {
		return nil, errors.Join(err, detach())
	}
	return &Session{
		Target: "device", Backend: t.Spec, Device: dev.Path(), Connections: s.Connections,
		Backends: []nbd.Backend{f},
		close:    func() error { return errors.Join(f.Close(), detach()) },
	}, nil
}

// directFile is a block device opened with O_DIRECT, as an nbd.Backend:
// each ReadAt/WriteAt is one pread/pwrite. Buffers must be aligned to the
// logical block size (the runner's are aligned to 4096).
type directFile struct {
	f    *os.File
	fd   int
	size int64
}

func openDirect(path string, readOnly bool) (*directFile, error) {
	mode := os.O_RDWR
	if readOnly {
		mode = os.O_RDONLY
	}
	f, err := os.OpenFile(path, mode|syscall.O_DIRECT, 0)
	if err != nil {
		return nil, fmt.Errorf("device: opening %s for direct IO: %w", path, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("device: size of %s: %w", path, err)
	}
	return &directFile{f: f, fd: int(f.Fd()), size: size}, nil
}

func (d *directFile) Size() int64 { return d.size }

func (d *directFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := syscall.Pread(d.fd, p, off)
	if err != nil {
		return max(n, 0), err
	}
	return n, nil
}

func (d *directFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := syscall.Pwrite(d.fd, p, off)
	if err != nil {
		return max(n, 0), err
	}
	return n, nil
}

func (d *directFile) Flush() error { return d.f.Sync() }

func (d *directFile) Close() error { return d.f.Close() }
