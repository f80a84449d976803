package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// AttachOptions configure a kernel NBD device served by this process.
type AttachOptions struct {
	Index           int           // IndexAny: any free device (the zero value means /dev/nbd0)
	Connections     int           // sockets per device (>1 sets CAN_MULTI_CONN); 0 means 1
	QueueDepth      int           // requests in flight per connection (0: the engine's default)
	BlockSize       uint32        // logical block size: 512..4096, power of two (0: 4096)
	ReadOnly        bool          // the kernel marks the device read-only; writes fail with EPERM/EROFS
	IOTimeout       time.Duration // a request the backend has not answered in this time fails with EIO (0: wait as long as it takes)
	DeadConnTimeout time.Duration // how long the kernel holds IO while all connections are dead, waiting for a Reattach
	BackendID       string        // NBD_ATTR_BACKEND_IDENTIFIER, shown in /sys/block/nbdN/backend; finds the device after a restart
	// MaxSectorsKB is the largest request the kernel sends, in KiB
	// (queue/max_sectors_kb), set when the device is attached: 0 means
	// DefaultMaxSectorsKB, -1 leaves the device's value. The kernel's nbd
	// driver starts every device at 128 KiB and keeps what the last
	// server set.
	MaxSectorsKB int
	Module       ModuleOptions // parameters if this call has to load the nbd module
	Logger       *slog.Logger  // nil: slog.Default()
	// ForceMode lets Reattach serve a device whose read-only state
	// differs from ReadOnly: it sets the device's state to ReadOnly.
	ForceMode bool
	// Observer, when set, sees every request on every connection of the
	// device (TransmissionOptions.Observer) and, if it is also a
	// ConnectionObserver, every connection replaced.
	Observer Observer
}

// IndexAny as AttachOptions.Index lets the kernel pick a free device.
const IndexAny = -1

// DefaultMaxSectorsKB is AttachOptions.MaxSectorsKB's default: a 1 MiB
// request costs the server one request's overhead (a read of the header,
// a librbd call, a reply) instead of the kernel default's eight of
// 128 KiB; docs/2026-12-06-large-io.md has the measurements.
const DefaultMaxSectorsKB = 1024

// maxHWSectorsKB is the nbd driver's max_hw_sectors_kb (65536 sectors):
// max_sectors_kb cannot go above it, and it equals DefaultMaxPayload, so
// every request the kernel may send fits the server's payload limit.
const maxHWSectorsKB = 32 << 10

// kernelTimeout is NBD_ATTR_TIMEOUT for an IOTimeout. The server answers
// late requests itself (TransmissionOptions.RequestTimeout), so the
// kernel's timer only matters for requests no server will answer (the
// process died with them read but unanswered): it re-sends them on a
// live connection. With IOTimeout 0 the kernel keeps its 30 s timer,
// which on a single connection only warns, and on several marks the
// connection dead and re-sends; the Device then replaces the connection.
func kernelTimeout(io time.Duration) time.Duration {
	if io <= 0 {
		return 0
	}
	return io + 30*time.Second
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
	if o.Index < IndexAny {
		return o, fmt.Errorf("nbd: device index %d is negative (use IndexAny for any free device)", o.Index)
	}
	if o.IOTimeout < 0 || o.DeadConnTimeout < 0 {
		return o, errors.New("nbd: timeouts must not be negative")
	}
	if o.MaxSectorsKB == 0 {
		o.MaxSectorsKB = DefaultMaxSectorsKB
	}
	if o.MaxSectorsKB != -1 && (o.MaxSectorsKB < 4 || o.MaxSectorsKB > maxHWSectorsKB || o.MaxSectorsKB < int(o.BlockSize>>10)) {
		return o, fmt.Errorf("nbd: largest request %d KiB is out of range: want 4 to %d KiB, and at least one block", o.MaxSectorsKB, maxHWSectorsKB)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

func (o AttachOptions) transmission() TransmissionOptions {
	// The kernel only sends requests aligned to the logical block size;
	// telling the engine lets it refuse anything else.
	return TransmissionOptions{ReadOnly: o.ReadOnly, QueueDepth: o.QueueDepth, Logger: o.Logger, BlockSize: o.BlockSize,
		RequestTimeout: o.IOTimeout, Observer: o.Observer}
}

// Device is a kernel NBD device (/dev/nbdN) whose transmission phase this
// process serves: one ServeTransmission per connection, each on our end of
// a socketpair whose other end the kernel holds.
//
// Lifecycle: Attach (or Reattach) returns a served device. It ends when
// Detach is called or the context given to Attach is cancelled (the
// device is disconnected), when the kernel disconnects it (another
// process ran DISCONNECT, e.g. `rbd-nbd-graph unmap`), or when Release
// hands it over (the device stays configured in the kernel, which holds
// its IO for DeadConnTimeout until a new server reattaches). Wait blocks
// until then.
//
// A connection that ends without NBD_CMD_DISC (the kernel's request
// timer gave up on it during a slow period, or its socket failed) is
// replaced: a new socketpair goes to the kernel with RECONFIGURE, which
// swaps it in for the dead one, so the device keeps all its connections.
type Device struct {
	index   int
	backend Backend
	opts    AttachOptions
	topts   TransmissionOptions
	kernel  *genl
	log     *slog.Logger

	serveCtx    context.Context // the connection servers' context
	stopServing context.CancelFunc
	// servers counts connection servers and replacements under way;
	// a replacement is counted before the server it replaces returns,
	// so the count reaches zero only when the device is done.
	servers sync.WaitGroup

	connMu sync.Mutex
	conns  map[*devConn]struct{} // servers still running (live or draining)
	// young counts, per connection slot, the replacements in a row that
	// the kernel dropped within a second: it does so when it has no dead
	// connection to swap (a reattach offered more sockets than the
	// device has), and retrying forever would churn.
	young map[int]int

	errMu    sync.Mutex
	serveErr error // first unexpected error of a connection server

	live      atomic.Int32 // connections the kernel sends on
	replaced  atomic.Int64 // connections replaced so far
	discSeen  atomic.Bool  // the kernel sent NBD_CMD_DISC: it is disconnecting
	detaching atomic.Bool  // Detach has sent DISCONNECT
	releasing atomic.Bool  // Release: leave the device to the kernel

	detachOnce sync.Once
	detachErr  error
	done       chan struct{} // closed when every server returned (and the kernel was told)
}

// devConn is one socketpair end we serve.
type devConn struct {
	slot  int // which of the device's connections it is (for logs)
	conn  net.Conn
	mu    sync.Mutex
	live  bool      // the kernel took the other end and sends on it
	ended bool      // the server stopped reading
	since time.Time // when it went live
}

// ErrInFlight: a device was released or detached while requests were
// still running in the backend past the deadline. Their buffers may
// still be in use, so the backend must not be closed; exiting the
// process is safe (the kernel re-sends what was never answered).
var ErrInFlight = errors.New("requests still in flight in the backend")

// Path is the device node, /dev/nbdN.
func (d *Device) Path() string { return DevicePath(d.index) }

// Index is N in /dev/nbdN.
func (d *Device) Index() int { return d.index }

// DevicePath is the node of device index.
func DevicePath(index int) string { return fmt.Sprintf("/dev/nbd%d", index) }

// Connections reports how many connections the kernel is using now,
// how many the device was configured with, and how many were replaced
// since this process started serving it.
func (d *Device) Connections() (live, configured int, replaced int64) {
	return int(d.live.Load()), d.opts.Connections, d.replaced.Load()
}

// Attach connects backend b to a kernel NBD device and serves it until
// ctx is cancelled (then the device is detached cleanly: the kernel sends
// NBD_CMD_DISC on every connection, in-flight requests are answered),
// Detach or Release is called. It loads the nbd module when needed; on a
// kernel without NBD the error wraps ErrNoKernelSupport.
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
		Timeout:         kernelTimeout(opts.IOTimeout),
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
	d.goLive()
	d.setMaxSectors(opts.MaxSectorsKB)
	d.log.Info("attached", "size", size, "connections", opts.Connections, "read_only", opts.ReadOnly, "backend_id", opts.BackendID)
	d.run(ctx)
	return d, nil
}

// Reattach serves an NBD device that is still configured in the kernel
// but whose server died or handed it over (its connections are dead, the
// kernel holds IO for the dead-connection timeout): it hands the kernel
// new sockets with RECONFIGURE. When opts.BackendID is set it must match
// the device's (the kernel refuses otherwise). opts.Index is ignored;
// index names the device. The device keeps its logical block size
// (opts.BlockSize 0 takes it; another value is refused) and its
// read-only state (a different opts.ReadOnly is refused unless
// opts.ForceMode, which changes the device's state). The returned Device
// behaves as one from Attach.
func Reattach(ctx context.Context, index int, b Backend, opts AttachOptions) (*Device, error) {
	if index < 0 {
		return nil, fmt.Errorf("nbd: reattach needs a device index, got %d", index)
	}
	if bs, err := readSysInt(index, "queue/logical_block_size"); err == nil {
		if opts.BlockSize != 0 && int64(opts.BlockSize) != bs {
			return nil, fmt.Errorf("nbd: %s has %d-byte logical blocks, not %d: reattach without a block size to keep them",
				DevicePath(index), bs, opts.BlockSize)
		}
		opts.BlockSize = uint32(bs)
	}
	if opts.MaxSectorsKB == 0 {
		opts.MaxSectorsKB = -1 // as the block size: the device keeps its own
	}
	opts, err := opts.normalized()
	if err != nil {
		return nil, err
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
	if ro, err := readSysInt(index, "ro"); err == nil && (ro != 0) != opts.ReadOnly {
		if !opts.ForceMode {
			return nil, fmt.Errorf("nbd: %s is %s and would be served %s: %w (force it to change the device's mode)",
				DevicePath(index), modeName(ro != 0), modeName(opts.ReadOnly), ErrModeMismatch)
		}
		if err := setReadOnly(index, opts.ReadOnly); err != nil {
			return nil, err
		}
		opts.Logger.Warn("changed the device's mode on reattach", "device", DevicePath(index), "read_only", opts.ReadOnly)
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
		Timeout:         kernelTimeout(opts.IOTimeout),
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
	d.goLive()
	d.setMaxSectors(opts.MaxSectorsKB)
	d.log.Info("reattached", "connections", opts.Connections, "live", d.live.Load(), "backend_id", opts.BackendID)
	d.run(ctx)
	return d, nil
}

// ErrNotConnected: the device exists but no backend is connected to it.
var ErrNotConnected = errors.New("device not connected")

// ErrModeMismatch: a reattach would flip the device between read-only
// and read-write.
var ErrModeMismatch = errors.New("read-only mode differs")

func modeName(ro bool) string {
	if ro {
		return "read-only"
	}
	return "read-write"
}

// setReadOnly sets the device's read-only flag (BLKROSET).
// setMaxSectors sets the largest request the kernel sends the device
// (kb -1: leave it). A device that keeps its limit still works, only with
// more, smaller requests, so a failure is logged, not returned.
func (d *Device) setMaxSectors(kb int) {
	if kb == -1 {
		return
	}
	if err := writeSys(d.index, "queue/max_sectors_kb", strconv.Itoa(kb)); err != nil {
		d.log.Warn("cannot set the largest request size; the kernel's stays", "max_sectors_kb", kb, "err", err)
	}
}

func setReadOnly(index int, ro bool) error {
	f, err := os.OpenFile(DevicePath(index), os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("nbd: set read-only: %w", err)
	}
	defer f.Close()
	v := 0
	if ro {
		v = 1
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.BLKROSET, v); err != nil {
		return fmt.Errorf("nbd: BLKROSET on %s: %w", DevicePath(index), err)
	}
	return nil
}

// startDevice makes the socketpairs and starts serving our ends, so the
// kernel is answered from its very first request (it reads the partition
// table as soon as CONNECT succeeds). It returns the kernel ends.
func startDevice(b Backend, opts AttachOptions, kernel *genl) (*Device, []int, error) {
	d := &Device{
		index:   -1,
		backend: b,
		opts:    opts,
		topts:   opts.transmission(),
		kernel:  kernel,
		log:     opts.Logger,
		conns:   make(map[*devConn]struct{}),
		young:   make(map[int]int),
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
		d.serve(i, ours)
	}
	return d, kernelFDs, nil
}

// serve starts the server of one connection.
func (d *Device) serve(slot int, c net.Conn) *devConn {
	dc := &devConn{slot: slot, conn: c}
	d.connMu.Lock()
	d.conns[dc] = struct{}{}
	d.connMu.Unlock()
	topts := d.topts
	topts.ReadDone = func(disc bool) { d.readDone(dc, disc) }
	d.servers.Add(1)
	go func() {
		defer d.servers.Done()
		err := ServeTransmission(d.serveCtx, c, d.backend, topts)
		d.connMu.Lock()
		delete(d.conns, dc)
		d.connMu.Unlock()
		switch {
		case err == nil, errors.Is(err, context.Canceled), errors.Is(err, net.ErrClosed):
		case d.stopping() && (errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET)):
			// We asked for the disconnect: the kernel shut its end
			// down while replies were still going out.
			d.log.Debug("connection closed by the kernel during detach", "connection", slot, "err", err)
		case !d.stopping():
			// The connection is being replaced (readDone); the replies
			// that could not go out are re-sent by the kernel.
			d.log.Warn("connection ended", "connection", slot, "err", err)
		default:
			d.log.Error("connection server failed", "connection", slot, "err", err)
			d.errMu.Lock()
			if d.serveErr == nil {
				d.serveErr = fmt.Errorf("connection %d: %w", slot, err)
			}
			d.errMu.Unlock()
		}
	}()
	return dc
}

// goLive marks the connections handed over in CONNECT or RECONFIGURE as
// used by the kernel. One whose server already ended was not taken (a
// reattach offered more sockets than the device has dead connections)
// and is left alone.
func (d *Device) goLive() {
	d.connMu.Lock()
	var all []*devConn
	for dc := range d.conns {
		all = append(all, dc)
	}
	d.connMu.Unlock()
	for _, dc := range all {
		if !d.markLive(dc) {
			// The kernel did not take it (a reattach offered more
			// sockets than it had dead connections): nothing to do.
			d.log.Debug("connection not taken by the kernel", "connection", dc.slot)
		}
	}
}

// markLive records that the kernel took dc; false if dc's server already
// stopped reading (the kernel closed its end at once).
func (d *Device) markLive(dc *devConn) bool {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if dc.ended {
		return false
	}
	dc.live, dc.since = true, time.Now()
	d.live.Add(1)
	return true
}

func (d *Device) stopping() bool {
	return d.detaching.Load() || d.releasing.Load() || d.discSeen.Load() || d.serveCtx.Err() != nil
}

// readDone runs when dc's server stops reading. A live connection that
// ends without DISC, while nobody is stopping the device, was given up
// by the kernel (its request timer shut it down) or failed: it is
// replaced. It runs before dc's server waits for its requests in
// flight, which may take as long as the backend is slow.
func (d *Device) readDone(dc *devConn, disc bool) {
	dc.mu.Lock()
	wasLive, since := dc.live, dc.since
	dc.live, dc.ended = false, true
	dc.mu.Unlock()
	if !wasLive {
		return
	}
	d.live.Add(-1)
	if disc {
		d.discSeen.Store(true)
		return
	}
	if d.stopping() {
		return
	}
	// Make sure the kernel counts it dead (it does already when its
	// timer shut it down): RECONFIGURE only fills dead slots.
	if cw, ok := dc.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	d.log.Warn("the kernel dropped a connection; replacing it", "connection", dc.slot, "live", d.live.Load())
	delay := time.Duration(0)
	d.connMu.Lock()
	if time.Since(since) < time.Second {
		d.young[dc.slot]++
		delay = time.Second // it died young: do not spin
	} else {
		d.young[dc.slot] = 0
	}
	young := d.young[dc.slot]
	d.connMu.Unlock()
	if young > maxYoungReplacements {
		d.log.Error("the kernel keeps dropping this connection at once; not replacing it again", "connection", dc.slot,
			"times", young, "live", d.live.Load())
		return
	}
	d.servers.Add(1)
	go d.replace(dc.slot, delay)
}

// maxYoungReplacements is how many times in a row a connection is
// replaced after the kernel dropped it within a second.
const maxYoungReplacements = 5

// replace hands the kernel a new socket for connection slot, retrying
// with backoff until it is taken, the device stops, or it is gone.
func (d *Device) replace(slot int, delay time.Duration) {
	defer d.servers.Done()
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-d.serveCtx.Done():
				return
			}
		}
		if d.stopping() {
			return
		}
		err := d.replaceOnce(slot)
		if err == nil {
			n := d.replaced.Add(1)
			if co, ok := d.opts.Observer.(ConnectionObserver); ok {
				co.ConnectionReplaced()
			}
			d.log.Warn("replaced a connection", "connection", slot, "attempt", attempt, "live", d.live.Load(), "replaced_total", n)
			return
		}
		if st, serr := d.kernel.status(d.index); serr == nil && (len(st) == 0 || !st[0].Connected) {
			d.log.Info("not replacing a connection: the device is disconnected", "connection", slot)
			return
		}
		d.log.Warn("replacing a connection failed; retrying", "connection", slot, "attempt", attempt, "err", err)
		delay, backoff = backoff, min(backoff*2, 5*time.Second)
	}
}

func (d *Device) replaceOnce(slot int) error {
	ours, theirs, err := kernelSocketPair()
	if err != nil {
		return err
	}
	dc := d.serve(slot, ours)
	err = d.kernel.reconfigure(connectConfig{Index: d.index, BackendID: d.opts.BackendID, SocketFDs: []int{theirs}})
	unix.Close(theirs)
	if err != nil {
		ours.Close()
		return err
	}
	if !d.markLive(dc) {
		// The kernel answers RECONFIGURE with success when it has no
		// dead connection to swap, and drops the socket.
		return errors.New("the kernel had no dead connection to swap yet")
	}
	return nil
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

// closeConns closes our end of every connection still served.
func (d *Device) closeConns() {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	for dc := range d.conns {
		dc.conn.Close()
	}
}

// abort stops the servers of a device the kernel never took.
func (d *Device) abort() {
	d.stopServing()
	d.closeConns()
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
		d.closeConns()
		d.stopServing()
		if d.releasing.Load() {
			// Handed over: the kernel keeps the device and holds its IO
			// until a new server reattaches.
			d.log.Info("released; the kernel holds the device's IO for the next server", "dead_conn_timeout", d.opts.DeadConnTimeout)
			close(d.done)
			return
		}
		// Every connection is gone: the kernel sent DISC (someone
		// disconnected the device), or we were asked to detach. It is a
		// no-op on a device already disconnected.
		if err := d.kernel.disconnect(d.index); err != nil && !errors.Is(err, unix.EINVAL) {
			d.log.Warn("disconnect after the last connection ended", "err", err)
		}
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
// ends first the connections are closed and Detach returns an error
// wrapping ErrInFlight when the backend still holds requests (then the
// backend must not be closed). Detach is idempotent; later calls return
// the first call's result.
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
		if err := d.await(ctx); err != nil && d.detachErr == nil {
			d.detachErr = fmt.Errorf("nbd: detach of %s: %w", d.Path(), err)
		}
	})
	return d.detachErr
}

// Release hands the device over to the next server: it stops reading
// requests, answers those in flight, closes its sockets and leaves the
// device configured in the kernel, which holds new IO for
// DeadConnTimeout until Reattach (in this or another process) serves it
// again. Requests the kernel had sent but this process had not read are
// re-sent by the kernel once its request timer fires (30 s, or the
// IOTimeout plus 30 s). If ctx ends first the sockets are closed and the
// error wraps ErrInFlight: the backend may still use request buffers, so
// it must not be closed.
func (d *Device) Release(ctx context.Context) error {
	select {
	case <-d.done:
		return nil
	default:
	}
	if d.detaching.Load() {
		return d.Detach(ctx)
	}
	d.releasing.Store(true)
	d.stopServing()
	if err := d.await(ctx); err != nil {
		return fmt.Errorf("nbd: release of %s: %w", d.Path(), err)
	}
	return nil
}

// await waits for the servers to end, or until ctx ends: then it closes
// the connections, gives the servers a moment to return, and reports
// ErrInFlight if the backend still holds requests.
func (d *Device) await(ctx context.Context) error {
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
	}
	d.log.Warn("connections did not drain in time; closing them", "err", ctx.Err())
	d.stopServing()
	d.closeConns()
	select {
	case <-d.done:
		return nil
	case <-time.After(time.Second):
		return fmt.Errorf("%w (%v)", ErrInFlight, ctx.Err())
	}
}

// Wait blocks until the device is no longer served and returns the first
// error of a connection server (nil after a clean disconnect or release).
func (d *Device) Wait() error {
	<-d.done
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.serveErr
}

// Done is closed when the device is no longer served.
func (d *Device) Done() <-chan struct{} { return d.done }
