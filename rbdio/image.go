package rbdio

/*
#cgo LDFLAGS: -lrbd -lrados
#include <stdlib.h>
#include <rbd/librbd.h>
*/
import "C"

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// OpenOptions says how to open an image.
type OpenOptions struct {
	// ReadOnly opens the image without write access; writes fail with
	// EROFS. Opening at a snapshot is always read-only.
	ReadOnly bool
	// Snapshot opens the image as it was at this snapshot.
	Snapshot string
	// Shared leaves the exclusive lock cooperative: another client that
	// writes takes the lock over (librbd's default). Without it, a
	// read-write open takes the lock for good, as rbd-nbd --exclusive
	// does, and fails with ErrLocked while another client holds it;
	// other clients' writes then fail instead of interleaving with ours.
	Shared bool
}

// Image is an open RBD image: the block store behind an NBD export or
// device. It implements nbd.Backend, nbd.Discarder, nbd.ZeroWriter and
// nbd.Resizer; its IO methods are safe for concurrent use and go through
// librbd's asynchronous API (see aio.go and doc.go). Like a disk with a
// volatile cache, a completed write is durable, and visible to other
// clients, once Flush returns (librbd's cache may hold it until then;
// Close flushes).
type Image struct {
	conn     *Conn
	name     string
	snap     string
	readOnly bool
	spec     string

	img C.rbd_image_t
	// sub takes the image's requests to librbd, compl brings their
	// completions back (aio.go).
	sub   *submitter
	compl *completions
	// inline: a request that finds the submitter asleep and its queue
	// empty is submitted by its caller (Config.Submit).
	inline bool

	// users counts requests in flight, plus closingBit once Close has
	// begun: from then on new requests are refused and the last one to
	// leave closes idle. A counter and not an RWMutex: a request started
	// from a completion (the flush after a FUA write) must never wait
	// for Close, which waits for that very completion goroutine.
	users atomic.Int64
	idle  chan struct{}
	idled sync.Once

	size atomic.Int64

	// flatFlags cancel the flattens running through this handle, for
	// Close (flatten.go).
	flatMu    sync.Mutex
	flatFlags []*cancelFlag

	// Size changes (watch.go).
	watchHandle C.uint64_t
	watching    bool
	watchToken  uintptr
	updated     chan struct{}
	sizeCh      chan int64
	closing     chan struct{}
	watchDone   chan struct{}

	// blocklisted is closed at the first request librbd fails with
	// ESHUTDOWN: the cluster blocklisted this client, and no request on
	// this handle will succeed again.
	blocklisted     chan struct{}
	blocklistedOnce sync.Once

	// onUnusable, if set, may take over failed asynchronous requests
	// (OnUnusable).
	onUnusable func(AsyncRequest) bool
}

// Blocklisted is closed once a request failed with ESHUTDOWN: the
// cluster blocklisted this client (ceph osd blocklist), librados does not
// recover, and only a new connection and a new open serve again.
func (im *Image) Blocklisted() <-chan struct{} { return im.blocklisted }

// OpenImage opens name (or name@opts.Snapshot) for IO.
//
// A read-write open of an image whose lock holder died without releasing
// it (SIGKILL, power loss) waits until the dead client's watch times out
// (osd_client_watch_timeout, 30 s by default), then breaks the lock and
// succeeds; a live holder makes it fail at once with ErrLocked. librbd
// cannot be interrupted during that wait: ctx is checked before. A
// Flatten of the image running on this connection does not make it wait:
// the flatten stops and carries on through the new handle (flatten.go).
//
// Wraps rbd_open / rbd_open_read_only, rbd_lock_acquire (exclusive mode,
// unless opts.Shared or read-only) and rbd_update_watch.
func (c *Conn) OpenImage(ctx context.Context, name string, opts OpenOptions) (*Image, error) {
	spec := c.spec(name, opts.Snapshot)
	if err := c.check(ctx, "open image", spec); err != nil {
		return nil, err
	}
	if err := validName("image", name); err != nil {
		return nil, err
	}
	readOnly := opts.ReadOnly || opts.Snapshot != ""
	cName := C.CString(name)
	defer C.free(unsafe.Pointer(cName))
	var cSnap *C.char
	if opts.Snapshot != "" {
		if err := validName("snapshot", opts.Snapshot); err != nil {
			return nil, err
		}
		cSnap = C.CString(opts.Snapshot)
		defer C.free(unsafe.Pointer(cSnap))
	}
	im := &Image{conn: c, name: name, snap: opts.Snapshot, readOnly: readOnly, spec: spec, idle: make(chan struct{}),
		blocklisted: make(chan struct{}), inline: c.inline}
	if !readOnly && !opts.Shared {
		// A flatten of this image on a context of our own would keep the
		// exclusive lock until it ends: move it onto this handle.
		opened, err := c.interruptFlatten(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("open image %s: waiting for its flatten to stop: %w", spec, err)
		}
		defer opened()
	}
	ioctx := C.rados_ioctx_t(c.ioctx.Pointer())
	var ret C.int
	fn := "rbd_open"
	unlock := c.lockImageCtx()
	if readOnly {
		fn = "rbd_open_read_only"
		ret = C.rbd_open_read_only(ioctx, cName, &im.img, cSnap)
	} else {
		ret = C.rbd_open(ioctx, cName, &im.img, cSnap)
	}
	unlock()
	if ret < 0 {
		e := errnoErr(int(ret), "open image", spec, fn)
		if e.Errno == syscall.ENOENT {
			if opts.Snapshot != "" {
				e.Hint = fmt.Sprintf("check that image %s and snapshot %s exist (rbd snap ls %s)", name, opts.Snapshot, c.spec(name, ""))
			} else {
				e.Hint = fmt.Sprintf("no image %s in %s (rbd ls %s); create it first", name, strings.TrimSuffix(c.spec("", ""), "/"), strings.TrimSuffix(c.spec("", ""), "/"))
			}
		}
		return nil, e
	}
	ok := false
	defer func() {
		if !ok {
			C.rbd_close(im.img)
		}
	}()
	if !readOnly && !opts.Shared {
		if err := im.lockExclusive(); err != nil {
			return nil, err
		}
	}
	var size C.uint64_t
	if ret := C.rbd_get_size(im.img, &size); ret < 0 {
		return nil, errnoErr(int(ret), "get size", spec, "rbd_get_size")
	}
	im.size.Store(int64(size))
	compl, errno := newCompletions()
	if errno != 0 {
		return nil, &Error{Op: "open image", Object: spec, Func: "eventfd", Kind: kindOf(errno), Errno: errno,
			Hint: "no completion queue for the image's IO: raise the open-file limit (ulimit -n) or free memory"}
	}
	im.compl = compl
	sub, errno := newSubmitter(im.img)
	if errno != 0 {
		im.compl.close()
		return nil, &Error{Op: "open image", Object: spec, Func: "pthread_create", Kind: kindOf(errno), Errno: errno,
			Hint: "no submission thread for the image's IO: raise the thread or open-file limit, or free memory"}
	}
	im.sub = sub
	if err := im.startWatch(); err != nil {
		im.sub.close()
		im.compl.close()
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		im.stopWatch()
		im.sub.close()
		im.compl.close()
		return nil, &Error{Op: "open image", Object: spec, Kind: ErrClosed, Errno: syscall.ESHUTDOWN}
	}
	c.images[im] = struct{}{}
	c.mu.Unlock()
	ok = true
	return im, nil
}

// Name is the image name; Snapshot the snapshot it was opened at, if any.
func (im *Image) Name() string     { return im.name }
func (im *Image) Snapshot() string { return im.snap }

// ReadOnly reports whether writes are refused (read-only or snapshot open).
func (im *Image) ReadOnly() bool { return im.readOnly }

// String is the image's spec, pool[/namespace]/image[@snap].
func (im *Image) String() string { return im.spec }

// Size is the image size in bytes, kept current by a watch on the image
// header (rbd_update_watch): a resize by any client shows here.
func (im *Image) Size() int64 { return im.size.Load() }

// Close waits for requests in flight, stops the watch, and closes the
// image (rbd_close), releasing the exclusive lock. Later calls fail with
// ErrClosed. Closing twice is harmless.
func (im *Image) Close() error {
	for {
		n := im.users.Load()
		if n&closingBit != 0 {
			return nil
		}
		if im.users.CompareAndSwap(n, n|closingBit) {
			if n == 0 {
				im.idled.Do(func() { close(im.idle) })
			}
			break
		}
	}
	im.interruptFlattens()
	<-im.idle

	im.stopWatch()
	// No request is in flight (mu was free): the queues can go.
	im.sub.close()
	im.compl.close()
	c := im.conn
	unlock := c.lockImageCtx()
	ret := C.rbd_close(im.img)
	unlock()
	c.mu.Lock()
	delete(c.images, im)
	c.mu.Unlock()
	if ret < 0 {
		return errnoErr(int(ret), "close image", im.spec, "rbd_close")
	}
	return nil
}

// lockExclusive takes the exclusive lock for good (rbd_lock_acquire in
// RBD_LOCK_MODE_EXCLUSIVE). Images without the exclusive-lock feature
// have no lock to take.
func (im *Image) lockExclusive() error {
	var features C.uint64_t
	if ret := C.rbd_get_features(im.img, &features); ret < 0 {
		return errnoErr(int(ret), "get features", im.spec, "rbd_get_features")
	}
	if features&C.RBD_FEATURE_EXCLUSIVE_LOCK == 0 {
		return nil
	}
	ret := C.rbd_lock_acquire(im.img, C.RBD_LOCK_MODE_EXCLUSIVE)
	if ret == 0 {
		return nil
	}
	e := errnoErr(int(ret), "take exclusive lock", im.spec, "rbd_lock_acquire")
	switch e.Errno {
	case syscall.EROFS, syscall.EBUSY, syscall.EAGAIN, syscall.ETIMEDOUT:
		owners := im.lockOwners()
		e.Kind = ErrLocked
		e.Hint = fmt.Sprintf("held by %s; stop that client, open read-only, or open shared (OpenOptions.Shared)", owners)
	}
	return e
}

// lockOwners describes the holders of the exclusive lock
// (rbd_lock_get_owners), for messages.
func (im *Image) lockOwners() string {
	var mode C.rbd_lock_mode_t
	owners := make([]*C.char, 8)
	n := C.size_t(len(owners))
	if ret := C.rbd_lock_get_owners(im.img, &mode, &owners[0], &n); ret < 0 || n == 0 {
		return "another client"
	}
	defer C.rbd_lock_get_owners_cleanup(&owners[0], n)
	names := make([]string, 0, int(n))
	for _, o := range owners[:n] {
		names = append(names, C.GoString(o))
	}
	return "client " + strings.Join(names, ", ")
}

// enter admits a request unless the image is closed; leave ends it.
func (im *Image) enter(op string) error {
	if im.users.Add(1)&closingBit != 0 {
		im.leave()
		return &Error{Op: op, Object: im.spec, Kind: ErrClosed, Errno: syscall.ESHUTDOWN}
	}
	return nil
}

func (im *Image) leave() {
	if im.users.Add(-1) == closingBit {
		im.idled.Do(func() { close(im.idle) })
	}
}

// closingBit marks Image.users once Close has begun.
const closingBit = 1 << 62
