package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// AttachOptions configure a kernel NBD device served by this process.
type AttachOptions struct {
	Index           int           // -1: any free device (the zero value means /dev/nbd0; use -1 for "any")
	Connections     int           // sockets per device (>1 sets CAN_MULTI_CONN); 0 means 1
	QueueDepth      int           // requests in flight per connection (0: the engine's default)
	BlockSize       uint32        // logical block size: 512..4096, power of two (0: 4096)
	ReadOnly        bool          // the kernel marks the device read-only; writes fail with EPERM/EROFS
	IOTimeout       time.Duration // per-request timeout (0: none; the kernel only warns about slow requests)
	DeadConnTimeout time.Duration // how long the kernel holds IO while all connections are dead, waiting for a Reattach
	BackendID       string        // NBD_ATTR_BACKEND_IDENTIFIER, shown in /sys/block/nbdN/backend; finds the device after a restart
	Module          ModuleOptions // parameters if this call has to load the nbd module
	Logger          *slog.Logger  // nil: slog.Default()
}

func (o AttachOptions) normalized() (AttachOptions, error) {
	if o.Connections <= 0 {
		o.Connections = 1
	}
	if o.BlockSize == 0 {
		o.BlockSize = 4096
	}
	if o.BlockSize < 512 || o.BlockSize > 4096 || o.BlockSize&(o.BlockSize-1) != 0 {
		return o, fmt.Errorf("nbd: block size %d is not a power of two between 512 and 4096", o.BlockSize)
	}
	if o.Index < -1 {
		return o, fmt.Errorf("nbd: device index %d is negative (use -1 for any free device)", o.Index)
	}
	if o.IOTimeout < 0 || o.DeadConnTimeout < 0 {
		return o, errors.New("nbd: timeouts must not be negative")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

func (o AttachOptions) transmission() TransmissionOptions {
	// The kernel only sends requests aligned to the logical block size;
	// telling the engine lets it refuse anything else.
	return TransmissionOptions{ReadOnly: o.ReadOnly, QueueDepth: o.QueueDepth, Logger: o.Logger, BlockSize: o.BlockSize}
}

// Device is a kernel NBD device (/dev/nbdN) whose transmission phase this
// process serves: one ServeTransmission per connection, each on our end of
// a socketpair whose other end the kernel holds.
//
// Lifecycle: Attach (or Reattach) returns a served device; it ends when
// Detach is called, when the context given to Attach is cancelled, or
// when the kernel disconnects it (another process ran DISCONNECT, e.g.
// `rbd-nbd-graph unmap`). Wait blocks until then.
type Device struct {
	index   int
	backend Backend
	opts    AttachOptions
	kernel  *genl
	log     *slog.Logger

	serveCtx    context.Context // the connection servers' context
	stopServing context.CancelFunc
	servers     sync.WaitGroup
	conns       []net.Conn

	errMu    sync.Mutex
	serveErr error // first unexpected error of a connection server

	detaching  atomic.Bool // Detach has sent DISCONNECT
	detachOnce sync.Once
	detachErr  error
	done       chan struct{} // closed when every server returned and the kernel was told
}

// Path is the device node, /dev/nbdN.
func (d *Device) Path() string { return DevicePath(d.index) }

// Index is N in /dev/nbdN.
func (d *Device) Index() int { return d.index }

// DevicePath is the node of device index.
func DevicePath(index int) string { return fmt.Sprintf("/dev/nbd%d", index) }

// Attach connects backend b to a kernel NBD device and serves it until
// ctx is cancelled (then the device is detached cleanly: the kernel sends
// NBD_CMD_DISC on every connection, in-flight requests are answered) or
// Detach is called. It loads the nbd module when needed; on a kernel
// without NBD the error wraps ErrNoKernelSupport.
func Attach(ctx context.Context, b Backend, opts AttachOptions) (*Device, error) {
	opts, err := opts.normalized()
	if err != nil {
		return nil, err
	}
	size := b.Size()
	if size < int64(opts.BlockSize) {
		return nil, fmt.Errorf("nbd: backend size %d is smaller than one block (%d bytes)", size, opts.BlockSize)
	}
	if size%int64(opts.BlockSize) != 0 {
		opts.Logger.Warn("backend size is not a multiple of the block size: the device ends at the last whole block",
			"size", size, "block_size", opts.BlockSize)
	}
	kernel, err := openKernel(ctx, opts.Module, opts.Logger)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d, kernelFDs, err := startDevice(b, opts, kernel)
	if err != nil {
		return nil, err
	}
	topts := opts.transmission()
	index, err := kernel.connect(connectConfig{
		Index:           opts.Index,
		Size:            size,
		BlockSize:       opts.BlockSize,
		Timeout:         opts.IOTimeout,
		DeadConnTimeout: opts.DeadConnTimeout,
		ServerFlags:     ServerFlags(b, topts, opts.Connections > 1),
		BackendID:       opts.BackendID,
		SocketFDs:       kernelFDs,
	})
	closeFDs(kernelFDs) // the kernel holds its own references now (or failed)
	if err != nil {
		d.abort()
		return nil, err
	}
	d.index = index
	d.log = opts.Logger.With("device", d.Path())
	d.log.Info("attached", "size", size, "connections", opts.Connections, "read_only", opts.ReadOnly, "backend_id", opts.BackendID)
	d.run(ctx)
	return d, nil
}

// Reattach serves an NBD device that is still configured in the kernel
// but whose server died (its connections are dead, the kernel holds IO
// for the dead-connection timeout): it hands the kernel new sockets with
// RECONFIGURE. When opts.BackendID is set it must match the device's
// (the kernel refuses otherwise). opts.Index is ignored; index names the
// device. The returned Device behaves as one from Attach.
func Reattach(ctx context.Context, index int, b Backend, opts AttachOptions) (*Device, error) {
	opts, err := opts.normalized()
	if err != nil {
		return nil, err
	}
	if index < 0 {
		return nil, fmt.Errorf("nbd: reattach needs a device index, got %d", index)
	}
	kernel, err := openKernel(ctx, opts.Module, opts.Logger)
	if err != nil {
		return nil, err
	}
	st, err := kernel.status(index)
	if err != nil {
		return nil, err
	}
	if len(st) == 0 || !st[0].Connected {
		return nil, fmt.Errorf("nbd: %s is not connected, nothing to reattach (map it instead): %w", DevicePath(index), ErrNotConnected)
	}
	if opts.BackendID != "" {
		if cur := readBackendID(index); cur != "" && cur != opts.BackendID {
			return nil, fmt.Errorf("nbd: %s serves backend %q, not %q", DevicePath(index), cur, opts.BackendID)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d, kernelFDs, err := startDevice(b, opts, kernel)
	if err != nil {
		return nil, err
	}
	err = kernel.reconfigure(connectConfig{
		Index:           index,
		Size:            b.Size(),
		Timeout:         opts.IOTimeout,
		DeadConnTimeout: opts.DeadConnTimeout,
		BackendID:       opts.BackendID,
		SocketFDs:       kernelFDs,
	})
	// A socket the kernel did not take (it had fewer dead connections than
	// we offered) is closed here, so its server sees EOF and returns.
	closeFDs(kernelFDs)
	if err != nil {
		d.abort()
		return nil, err
	}
	d.index = index
	d.log = opts.Logger.With("device", d.Path())
	d.log.Info("reattached", "connections", opts.Connections, "backend_id", opts.BackendID)
	d.run(ctx)
	return d, nil
}

// ErrNotConnected: the device exists but no backend is connected to it.
var ErrNotConnected = errors.New("device not connected")

// startDevice makes the socketpairs and starts serving our ends, so the
// kernel is answered from its very first request (it reads the partition
// table as soon as CONNECT succeeds). It returns the kernel ends.
func startDevice(b Backend, opts AttachOptions, kernel *genl) (*Device, []int, error) {
	d := &Device{
		index:   -1,
		backend: b,
		opts:    opts,
		kernel:  kernel,
		log:     opts.Logger,
		done:    make(chan struct{}),
	}
	// The servers outlive the caller's context on purpose: cancelling it
	// asks for a clean detach, which needs them running until the kernel
	// has sent NBD_CMD_DISC.
	d.serveCtx, d.stopServing = context.WithCancel(context.Background())
	var kernelFDs []int
	for i := 0; i < opts.Connections; i++ {
		ours, theirs, err := kernelSocketPair()
		if err != nil {
			closeFDs(kernelFDs)
			d.abort()
			return nil, nil, err
		}
		kernelFDs = append(kernelFDs, theirs)
		d.conns = append(d.conns, ours)
	}
	topts := opts.transmission()
	log := opts.Logger
	for i, c := range d.conns {
		d.servers.Add(1)
		go func() {
			defer d.servers.Done()
			err := ServeTransmission(d.serveCtx, c, b, topts)
			if err != nil && d.detaching.Load() && (errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET)) {
				// We asked for the disconnect: the kernel shut its end
				// down while replies were still going out.
				log.Debug("connection closed by the kernel during detach", "connection", i, "err", err)
				return
			}
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, net.ErrClosed) {
				log.Error("connection server failed", "connection", i, "err", err)
				d.errMu.Lock()
				if d.serveErr == nil {
					d.serveErr = fmt.Errorf("connection %d: %w", i, err)
				}
				d.errMu.Unlock()
			}
		}()
	}
	return d, kernelFDs, nil
}

// kernelSocketPair returns our end as a net.Conn (on Go's poller) and the
// kernel's end as a raw descriptor to pass in NBD_SOCK_FD.
func kernelSocketPair() (net.Conn, int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, fmt.Errorf("nbd: socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "nbd-server")
	conn, err := net.FileConn(f) // dups the descriptor
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, -1, fmt.Errorf("nbd: socketpair: %w", err)
	}
	return conn, fds[1], nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// abort stops the servers of a device the kernel never took.
func (d *Device) abort() {
	d.stopServing()
	for _, c := range d.conns {
		c.Close()
	}
	d.servers.Wait()
	close(d.done)
}

// run starts the goroutines that follow the device's life: ctx
// cancellation, backend size changes, and the end of all servers.
func (d *Device) run(ctx context.Context) {
	serversDone := make(chan struct{})
	go func() {
		d.servers.Wait()
		close(serversDone)
	}()
	go func() {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := d.Detach(dctx); err != nil {
				d.log.Error("detach on cancel", "err", err)
			}
			cancel()
		case <-d.done:
		}
	}()
	if r, ok := d.backend.(Resizer); ok {
		go d.followSize(r.SizeChanges())
	}
	go func() {
		<-serversDone
		// Every connection is gone: the kernel sent DISC (someone
		// disconnected the device), or we were asked to detach, or the
		// servers failed. In the last case nobody in this process will
		// reattach, so disconnect now rather than leave IO hanging for
		// the dead-connection timeout. It is a no-op on a device already
		// disconnected.
		if err := d.kernel.disconnect(d.index); err != nil && !errors.Is(err, unix.EINVAL) {
			d.log.Warn("disconnect after the last connection ended", "err", err)
		}
		for _, c := range d.conns {
			c.Close()
		}
		d.stopServing()
		d.log.Info("detached")
		close(d.done)
	}()
}

// followSize passes backend size changes to the kernel (RECONFIGURE with
// the new NBD_ATTR_SIZE_BYTES), so a grown RBD image grows /dev/nbdN.
func (d *Device) followSize(changes <-chan int64) {
	for {
		select {
		case <-d.done:
			return
		case size, ok := <-changes:
			if !ok {
				return
			}
			if err := d.Resize(size); err != nil {
				d.log.Error("resize", "size", size, "err", err)
			}
		}
	}
}

// Resize tells the kernel the device now has size bytes.
func (d *Device) Resize(size int64) error {
	if size < int64(d.opts.BlockSize) {
		return fmt.Errorf("nbd: size %d is smaller than one block", size)
	}
	// A device with a backend identifier only takes RECONFIGURE that
	// names it ("must specify backend" otherwise).
	if err := d.kernel.reconfigure(connectConfig{Index: d.index, Size: size, BackendID: d.opts.BackendID}); err != nil {
		return err
	}
	d.log.Info("resized", "size", size)
	return nil
}

// Detach disconnects the device: the kernel sends NBD_CMD_DISC on each
// connection, the servers answer what is in flight and return. If ctx
// ends first the servers are stopped without waiting. Detach is
// idempotent; later calls return the first call's result.
func (d *Device) Detach(ctx context.Context) error {
	d.detachOnce.Do(func() {
		select {
		case <-d.done:
			return // already ended by the kernel
		default:
		}
		d.detaching.Store(true)
		if err := d.kernel.disconnect(d.index); err != nil && !errors.Is(err, unix.EINVAL) {
			d.detachErr = err
		}
		select {
		case <-d.done:
		case <-ctx.Done():
			d.log.Warn("detach: connections did not drain in time; closing them", "err", ctx.Err())
			d.stopServing()
			for _, c := range d.conns {
				c.Close()
			}
			<-d.done
			if d.detachErr == nil {
				d.detachErr = fmt.Errorf("nbd: detach of %s: %w", d.Path(), ctx.Err())
			}
		}
	})
	return d.detachErr
}

// Wait blocks until the device is no longer served and returns the first
// error of a connection server (nil after a clean disconnect).
func (d *Device) Wait() error {
	<-d.done
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.serveErr
}

// Done is closed when the device is no longer served.
func (d *Device) Done() <-chan struct{} { return d.done }
