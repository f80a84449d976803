package nbdattach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// ImageOpener opens a layer image (or a snapshot, read-only) as an NBD
// backend; close releases it.
type ImageOpener func(ctx context.Context, ref graph.ImageRef, readOnly bool) (b nbd.Backend, close func() error, err error)

// Attacher is graph's Attacher for production: it opens the image in
// this process and serves it to the kernel through package nbd (netlink,
// socketpairs, the Go IO loop), no helper process and no krbd.
type Attacher struct {
	open  ImageOpener
	where string // POOL or POOL/NAMESPACE, part of every backend identifier
	opts  Options
	log   *slog.Logger
	// observe, set by ObserveDevices, gives each device its observer.
	observe func(name string) DeviceObserver
}

// DeviceObserver sees the requests of one device (metrics): the
// nbd.Observer the IO loop calls, told the device's path once it is
// attached and forgotten when the device ends.
type DeviceObserver interface {
	nbd.Observer
	SetPath(path string)
	Forget()
}

// ObserveDevices makes every device attached or adopted from now on
// report to observer(name), name being the image it serves (IMAGE or
// IMAGE@SNAP). Call it before the driver attaches anything.
func (a *Attacher) ObserveDevices(observer func(name string) DeviceObserver) {
	a.observe = observer
}

// New returns the attacher serving the images open opens, with the
// device options o. where (POOL or POOL/NAMESPACE) is part of every
// device's backend identifier: a restarted attacher finds only the
// devices of its own pool. A nil log means slog.Default().
func New(open ImageOpener, where string, o Options, log *slog.Logger) *Attacher {
	if log == nil {
		log = slog.Default()
	}
	return &Attacher{open: open, where: where, opts: o, log: log}
}

var (
	_ graph.Attacher        = (*Attacher)(nil)
	_ graph.DeviceDescriber = (*Attacher)(nil)
)

func (a *Attacher) attachOptions(req graph.AttachRequest, readOnly bool) nbd.AttachOptions {
	return nbd.AttachOptions{
		Index:           nbd.IndexAny,
		Connections:     a.opts.Connections,
		QueueDepth:      a.opts.QueueDepth,
		MaxSectorsKB:    a.opts.MaxSectorsKB,
		ReadOnly:        readOnly,
		IOTimeout:       a.opts.IOTimeout,
		DeadConnTimeout: a.opts.DeadConnTimeout,
		BackendID:       LayerID(req.Owner, a.where, req.Ref()),
		Logger:          a.log,
		Observer:        a.observer(req.Ref()),
	}
}

// observer is the observer of a device serving ref, or nil (a nil
// nbd.Observer, not a typed nil: the loop then counts nothing).
func (a *Attacher) observer(ref graph.ImageRef) nbd.Observer {
	if a.observe == nil {
		return nil
	}
	if o := a.observe(ref.String()); o != nil {
		return o
	}
	return nil
}

func (a *Attacher) Attach(ctx context.Context, req graph.AttachRequest) (graph.Device, error) {
	ro := req.ReadOnly || req.Snapshot != ""
	b, closeImage, err := a.open(ctx, req.Ref(), ro)
	if err != nil {
		return nil, err
	}
	// The device outlives the request that attached it: it ends by
	// Detach only, so it gets a context of its own.
	opts := a.attachOptions(req, ro)
	dev, err := nbd.Attach(context.WithoutCancel(ctx), b, opts)
	if err != nil {
		return nil, errors.Join(err, closeImage())
	}
	return a.track(dev, req.Ref(), closeImage, opts.Observer), nil
}

func (a *Attacher) track(dev *nbd.Device, ref graph.ImageRef, closeImage func() error, obs nbd.Observer) *nbdDevice {
	d := &nbdDevice{dev: dev, closeImage: closeImage}
	if o, ok := obs.(DeviceObserver); ok {
		o.SetPath(dev.Path())
		go func() {
			<-dev.Done()
			o.Forget()
		}()
	}
	// The kernel's sysfs pid names the process that sent CONNECT, dead
	// after an adoption: record who serves the device now, and its
	// connections, for `list`.
	if err := WriteServerPID(dev.Index()); err != nil {
		a.log.Warn("cannot record the serving pid", "device", dev.Path(), "err", err)
	}
	stopState := FollowConnections(dev, a.log)
	go func() {
		<-dev.Done()
		stopState()
		RemoveServerPID(dev.Index())
	}()
	go func() {
		// Someone else disconnecting our device (rbd-nbd-graph unmap)
		// breaks the mount on it: say so loudly.
		<-dev.Done()
		if !d.detaching() {
			a.log.Error("a layer device was disconnected from outside the driver; its mount now fails IO",
				"device", dev.Path(), "image", ref.String())
		}
	}()
	return d
}

// nbdDevice is an attached layer: the kernel device and the open image.
type nbdDevice struct {
	dev        *nbd.Device
	closeImage func() error

	mu   sync.Mutex
	off  bool
	once sync.Once
	err  error
}

func (d *nbdDevice) Path() string { return d.dev.Path() }

func (d *nbdDevice) detaching() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.off
}

// Detach disconnects the device, waits for requests in flight (up to a
// minute) and closes the image.
func (d *nbdDevice) Detach(ctx context.Context) error {
	d.once.Do(func() {
		d.mu.Lock()
		d.off = true
		d.mu.Unlock()
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		d.err = d.finish(d.dev.Detach(dctx))
	})
	return d.err
}

// Release stops serving the device and closes the image, leaving the
// device (and its mount) to the kernel for the next driver process to
// adopt. ctx bounds the wait for requests in flight.
func (d *nbdDevice) Release(ctx context.Context) error {
	d.once.Do(func() {
		d.mu.Lock()
		d.off = true
		d.mu.Unlock()
		d.err = d.finish(d.dev.Release(ctx))
	})
	return d.err
}

// finish closes the image after the device stopped serving it, unless
// requests are still in flight in librbd: closing would wait for them,
// and a hung cluster would hang the caller. The image is then left for
// the process's exit to release.
func (d *nbdDevice) finish(err error) error {
	if errors.Is(err, nbd.ErrInFlight) {
		return err
	}
	return errors.Join(err, d.closeImage())
}

// Stale finds this pool's layer devices that the kernel still has
// connected but no live server of this process serves: left by a driver
// that died.
func (a *Attacher) Stale(ctx context.Context) ([]graph.StaleDevice, error) {
	all, err := nbd.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []graph.StaleDevice
	for _, st := range all {
		req, ok := ParseLayerID(st.BackendID, a.where)
		if !ok || !st.Connected || st.PID == os.Getpid() {
			continue
		}
		req.ReadOnly = st.ReadOnly || req.Snapshot != ""
		out = append(out, &staleNBD{a: a, st: st, req: req})
	}
	return out, nil
}

type staleNBD struct {
	a   *Attacher
	st  nbd.DeviceStatus
	req graph.AttachRequest
}

func (s *staleNBD) Request() graph.AttachRequest { return s.req }
func (s *staleNBD) Path() string                 { return s.st.Path }

// Adopt serves the device again with new sockets (RECONFIGURE), so the
// mount on it carries on where the dead server left it.
func (s *staleNBD) Adopt(ctx context.Context) (graph.Device, error) {
	ref := s.req.Ref()
	b, closeImage, err := s.a.open(ctx, ref, s.req.ReadOnly)
	if err != nil {
		return nil, err
	}
	opts := s.a.attachOptions(s.req, s.req.ReadOnly)
	opts.BlockSize = 0 // keep the device's
	if s.req.Owner == "" {
		opts.BackendID = s.st.BackendID // recorded by an older version: the kernel wants it as it is
	}
	dev, err := nbd.Reattach(context.WithoutCancel(ctx), s.st.Index, b, opts)
	if err != nil {
		return nil, errors.Join(err, closeImage())
	}
	return s.a.track(dev, ref, closeImage, opts.Observer), nil
}

// Served reports whether a live process other than this one serves the
// device (by its recorded server or the kernel's pid).
func (s *staleNBD) Served() bool {
	pid := ServerPID(s.st)
	return pid > 0 && pid != os.Getpid()
}

func (s *staleNBD) Detach(ctx context.Context) error {
	return nbd.Disconnect(ctx, s.st.Index)
}

// DescribeDevices is the Status lines about the devices.
func (a *Attacher) DescribeDevices() [][2]string {
	orDefault := func(n int) string {
		if n == 0 {
			return "default"
		}
		return strconv.Itoa(n)
	}
	timeout := func(d time.Duration) string {
		if d == 0 {
			return "none"
		}
		return d.String()
	}
	conns := a.opts.Connections
	if conns == 0 {
		conns = 1
	}
	return [][2]string{
		{"Block Devices", fmt.Sprintf("kernel NBD, served in process (backend %sOWNER:%s/...)", layerPrefix, a.where)},
		{"NBD Connections Per Device", strconv.Itoa(conns)},
		{"NBD Queue Depth", orDefault(a.opts.QueueDepth)},
		{"NBD IO Timeout", timeout(a.opts.IOTimeout)},
		{"NBD Dead Connection Timeout", timeout(a.opts.DeadConnTimeout)},
	}
}
