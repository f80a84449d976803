package rbdio

/*
#include <stdlib.h>
#include "aio_shim.h"
*/
import "C"

import (
	"io"
	"os"
	"runtime"
	"runtime/cgo"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// The data path. Each request is one librbd asynchronous call
// (rbd_aio_read, rbd_aio_write, rbd_aio_flush, rbd_aio_discard,
// rbd_aio_write_zeroes) made through aio_shim.c. Its completion callback,
// on a librbd thread, does not call into Go: it appends the result to
// the image's ring (C memory, a mutex) and, if the image's completion
// goroutine said it was going to sleep, writes the ring's eventfd. That
// goroutine waits on the eventfd through Go's netpoller, takes every
// queued result at once and delivers them: a synchronous caller
// (ReadAt, WriteAt, ...) parked on its request's channel is woken; an
// asynchronous one (StartReadAt, StartWriteAt, StartFlush: the
// nbd.AsyncBackend the IO loop uses) gets Complete, and after the batch
// one FlushCompletions per connection, so one writev answers the batch.
// doc.go has the measurements behind this design.

// aioRequest is one request in flight. Requests are recycled through a
// free list, each with a cgo.Handle (its token) and a C rbdio_req made
// once, so the hot path does not allocate.
type aioRequest struct {
	handle cgo.Handle
	creq   *C.rbdio_req
	pin    runtime.Pinner
	done   chan int64 // synchronous callers wait here

	// Asynchronous requests: what to report, and to whom.
	async  bool
	im     *Image
	op     C.int
	off    int64
	length int64
	c      nbd.Completer
	tag    uint64
	p      []byte // for Image.OnUnusable

	// handed is stored before the request goes to C and loaded when its
	// result comes back. The hand-off through C memory is ordered by C's
	// atomics and locks, which the race detector cannot see; this makes
	// the order visible to it, for the price of one atomic each way.
	handed atomic.Uint32
}

var aioFree struct {
	sync.Mutex
	list []*aioRequest
}

func getRequest() *aioRequest {
	aioFree.Lock()
	if n := len(aioFree.list); n > 0 {
		r := aioFree.list[n-1]
		aioFree.list = aioFree.list[:n-1]
		aioFree.Unlock()
		return r
	}
	aioFree.Unlock()
	r := &aioRequest{done: make(chan int64, 1)}
	r.handle = cgo.NewHandle(r)
	r.creq = (*C.rbdio_req)(C.calloc(1, C.sizeof_rbdio_req))
	if r.creq == nil {
		panic("rbdio: out of memory for a request")
	}
	r.creq.token = C.uintptr_t(r.handle)
	return r
}

func putRequest(r *aioRequest) {
	aioFree.Lock()
	aioFree.list = append(aioFree.list, r)
	aioFree.Unlock()
}

// completions is an image's ring (filled by librbd's threads) and the
// goroutine that empties it.
type completions struct {
	ring *C.rbdio_ring
	efd  *os.File
	raw  syscall.RawConn // efd's, for waitFn
	stop atomic.Bool
	done chan struct{}
	// waitFn is c.wait bound once (no closure per wait); count
	// receives the eventfd's value.
	waitFn func(fd uintptr) bool
	count  uint64
}

// completionRingLen is the capacity of an image's completion ring; more
// results at once (more requests in flight than that) spill into the
// ring's overflow list.
const completionRingLen = 1024

func newCompletions() (*completions, syscall.Errno) {
	ring, err := C.rbdio_ring_new(completionRingLen)
	if ring == nil {
		if e, ok := err.(syscall.Errno); ok && e != 0 {
			return nil, e
		}
		return nil, syscall.ENOMEM
	}
	// The eventfd is non-blocking, so os.NewFile puts it in the netpoller.
	c := &completions{ring: ring, efd: os.NewFile(uintptr(ring.efd), "rbdio-completions"), done: make(chan struct{})}
	raw, err := c.efd.SyscallConn()
	if err != nil {
		c.efd.Close()
		C.rbdio_ring_free(ring)
		return nil, syscall.EINVAL
	}
	c.raw = raw
	c.waitFn = c.wait
	go c.reap()
	return c, 0
}

// reap delivers results until close. It reads the ring through shared
// memory; only results that overflowed it cost a cgo call.
func (c *completions) reap() {
	defer close(c.done)
	ring := c.ring
	head := (*uint32)(unsafe.Pointer(&ring.head))
	tail := (*uint32)(unsafe.Pointer(&ring.tail))
	waiting := (*int32)(unsafe.Pointer(&ring.waiting))
	overflow := (*int32)(unsafe.Pointer(&ring.overflow))
	var spill [64]C.rbdio_done
	var completers []nbd.Completer
	for {
		h, t := atomic.LoadUint32(head), atomic.LoadUint32(tail)
		if h == t && atomic.LoadInt32(overflow) == 0 {
			// Nothing: say so, look once more, then sleep until a
			// producer that saw waiting writes efd.
			atomic.StoreInt32(waiting, 1)
			if atomic.LoadUint32(tail) == h && atomic.LoadInt32(overflow) == 0 {
				if c.stop.Load() {
					return
				}
				if err := c.raw.Read(c.waitFn); err != nil {
					return
				}
			} else {
				// Work came in after all. A producer that cleared
				// waiting meanwhile also wrote efd: the next wait
				// returns at once, harmlessly.
				atomic.StoreInt32(waiting, 0)
			}
			continue
		}
		for ; h != t; h++ {
			d := (*C.rbdio_done)(unsafe.Add(unsafe.Pointer(ring.q), uintptr(h&(completionRingLen-1))*C.sizeof_rbdio_done))
			completers = deliver(uintptr(d.token), int64(d.ret), completers)
		}
		atomic.StoreUint32(head, h)
		if atomic.LoadInt32(overflow) != 0 {
			n := int(C.rbdio_ring_take_overflow(ring, &spill[0], C.size_t(len(spill))))
			for _, d := range spill[:n] {
				completers = deliver(uintptr(d.token), int64(d.ret), completers)
			}
		}
		// The batch is done: each connection writes its replies.
		for i, cp := range completers {
			cp.FlushCompletions()
			completers[i] = nil
		}
		completers = completers[:0]
	}
}

// deliver hands one result to its request: it wakes a synchronous
// caller, or reports to an asynchronous one's Completer, which it adds
// to completers (once) for the FlushCompletions that ends the batch.
func deliver(token uintptr, ret int64, completers []nbd.Completer) []nbd.Completer {
	r := cgo.Handle(token).Value().(*aioRequest)
	r.handed.Load()
	if !r.async {
		r.done <- ret
		return completers
	}
	cp := r.c
	r.finish(ret)
	for _, x := range completers {
		if x == cp {
			return completers
		}
	}
	return append(completers, cp)
}

// wait is the RawConn callback that consumes the eventfd's count: false
// (wait in the netpoller) while it is zero. A raw read(2) of the
// non-blocking eventfd, because a regular one would enter the
// scheduler's syscall state and wake sysmon on every batch (nbd's
// sockread.go explains the cost).
func (c *completions) wait(fd uintptr) bool {
	for {
		_, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.count)), 8)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		return true
	}
}

// close stops the goroutine and frees the ring; no request may be in
// flight.
func (c *completions) close() {
	c.stop.Store(true)
	var one [8]byte
	one[0] = 1
	c.efd.Write(one[:])
	<-c.done
	C.rbdio_ring_quiesce(c.ring)
	c.efd.Close()
	C.rbdio_ring_free(c.ring)
}

// submitQueueLen is the capacity of an image's submission queue; a
// request that finds it full is submitted by its caller instead.
const submitQueueLen = 4096

// submitter is an image's submission queue (C memory) and the C thread
// that empties it into librbd (aio_shim.c). Queueing a request is a few
// stores and, when the thread sleeps, one raw write(2) to its eventfd:
// no cgo call, which would enter the scheduler's syscall state and, the
// first time after the process went idle, wake sysmon, which then polls
// at 20 us for a while. Where sysmon is kept awake anyway, a request
// that would wake the thread is cheaper made by its caller
// (Config.Submit, submit.go).
type submitter struct {
	mu  sync.Mutex // serialises producers
	s   *C.rbdio_submitter
	one uint64 // the value written to wake the thread
}

func newSubmitter(img C.rbd_image_t) (*submitter, syscall.Errno) {
	s, err := C.rbdio_submitter_new(img, submitQueueLen)
	if s == nil {
		if e, ok := err.(syscall.Errno); ok && e != 0 {
			return nil, e
		}
		return nil, syscall.ENOMEM
	}
	return &submitter{s: s, one: 1}, 0
}

func (q *submitter) close() { C.rbdio_submitter_free(q.s) }

// submit hands r to librbd; p, if not empty, is pinned until r ends.
// The request goes through the submitter thread, or, when the image
// submits inline and the thread sleeps with nothing queued, is made
// here: then every request queued before it has been submitted already,
// and the thread is not woken. A full queue also makes the call here.
// It returns 0, or a negative errno if librbd refused the request at
// once (only when the call was made here).
func (im *Image) submit(r *aioRequest, op C.int, p []byte, off, length int64) C.int {
	var buf unsafe.Pointer
	if len(p) > 0 {
		r.pin.Pin(&p[0])
		buf = unsafe.Pointer(&p[0])
	}
	r.creq.ring = im.compl.ring
	r.handed.Store(1)
	q := im.sub
	s := q.s
	tail := (*uint32)(unsafe.Pointer(&s.tail))
	sleeping := (*int32)(unsafe.Pointer(&s.sleeping))
	q.mu.Lock()
	t := atomic.LoadUint32(tail)
	queued := t - atomic.LoadUint32((*uint32)(unsafe.Pointer(&s.head)))
	if queued >= submitQueueLen || (im.inline && queued == 0 && atomic.LoadInt32(sleeping) == 1) {
		q.mu.Unlock()
		return im.submitHere(r, op, buf, off, length)
	}
	e := (*C.rbdio_sub)(unsafe.Add(unsafe.Pointer(s.q), uintptr(t&(submitQueueLen-1))*C.sizeof_rbdio_sub))
	e.off, e.len, e.buf, e.req, e.op = C.uint64_t(off), C.uint64_t(length), C.uintptr_t(uintptr(buf)), r.creq, C.int32_t(op)
	atomic.StoreUint32(tail, t+1)
	wake := atomic.CompareAndSwapInt32(sleeping, 1, 0)
	q.mu.Unlock()
	if wake {
		// A raw call: it never blocks, and must not wake sysmon.
		syscall.RawSyscall(syscall.SYS_WRITE, uintptr(s.efd), uintptr(unsafe.Pointer(&q.one)), 8)
	}
	return 0
}

// submitHere makes librbd's call for r on this goroutine. librbd may
// complete the request, and the completion goroutine end it and leave
// the image, before rbd_aio_* returns here; the extra user keeps Close
// from closing the image under the call until it has returned (the
// submitter thread is safe the same way: Close joins it first).
func (im *Image) submitHere(r *aioRequest, op C.int, buf unsafe.Pointer, off, length int64) C.int {
	im.users.Add(1) // the caller is a user already: Close cannot be done
	rc := C.rbdio_aio_submit(im.img, r.creq, op, C.uint64_t(off), C.uint64_t(length), (*C.char)(buf))
	im.leave()
	return rc
}

// aio runs one request and waits for it: librbd's result (>= 0) or an
// error.
func (im *Image) aio(op C.int, p []byte, off, length int64) (int64, error) {
	name := opFunc(op)
	if err := im.enter(name); err != nil {
		return 0, err
	}
	defer im.leave()
	r := getRequest()
	r.async = false
	ret := int64(im.submit(r, op, p, off, length))
	if ret >= 0 {
		ret = <-r.done
	}
	r.pin.Unpin()
	putRequest(r)
	if ret < 0 {
		return 0, im.ioError(name, ret, off, length)
	}
	return ret, nil
}

// start submits one request for c without waiting; c.Complete gets the
// result on the image's completion goroutine, or here if librbd refuses
// the request at once.
func (im *Image) start(op C.int, p []byte, off, length int64, c nbd.Completer, tag uint64) {
	if err := im.enter(opFunc(op)); err != nil {
		if h := im.onUnusable; h == nil || !h(AsyncRequest{Op: asyncOp(op), P: p, Off: off, C: c, Tag: tag, Err: err}) {
			c.Complete(tag, 0, err)
		}
		c.FlushCompletions()
		return
	}
	r := getRequest()
	r.async, r.im, r.op, r.off, r.length, r.c, r.tag, r.p = true, im, op, off, length, c, tag, p
	if rc := im.submit(r, op, p, off, length); rc < 0 {
		r.finish(int64(rc))
		c.FlushCompletions()
	}
}

// finish ends an asynchronous request that completed with ret: it
// unpins, recycles and leaves the image before reporting to the
// Completer, which may start the next request at once.
func (r *aioRequest) finish(ret int64) {
	im, op, off, length, c, tag, p := r.im, r.op, r.off, r.length, r.c, r.tag, r.p
	r.pin.Unpin()
	r.im, r.c, r.p = nil, nil, nil
	putRequest(r)
	im.leave()
	switch {
	case ret == -int64(syscall.ESHUTDOWN) && im.onUnusable != nil:
		err := im.ioError(opFunc(op), ret, off, length)
		if !im.onUnusable(AsyncRequest{Op: asyncOp(op), P: p, Off: off, C: c, Tag: tag, Err: err}) {
			c.Complete(tag, 0, err)
		}
	case ret < 0:
		c.Complete(tag, 0, im.ioError(opFunc(op), ret, off, length))
	case op == C.RBDIO_OP_READ && ret < length:
		c.Complete(tag, int(ret), io.EOF)
	default:
		c.Complete(tag, int(length), nil)
	}
}

// AsyncOp is the kind of an asynchronous request (nbd.AsyncBackend).
type AsyncOp int

const (
	AsyncRead AsyncOp = iota
	AsyncWrite
	AsyncFlush
)

func asyncOp(op C.int) AsyncOp {
	switch op {
	case C.RBDIO_OP_READ:
		return AsyncRead
	case C.RBDIO_OP_WRITE:
		return AsyncWrite
	}
	return AsyncFlush
}

// AsyncRequest is an asynchronous request that failed because its
// image can serve nothing any more (Image.OnUnusable): the cluster
// blocklisted this client (ESHUTDOWN), or the image was closed.
type AsyncRequest struct {
	Op  AsyncOp
	P   []byte // the caller's buffer, still the caller's: valid until C.Complete
	Off int64
	C   nbd.Completer
	Tag uint64
	Err error // what Complete would have been given
}

// OnUnusable sets h, called instead of Completer.Complete when an
// asynchronous request fails because the image can serve nothing any
// more: a request librbd failed with ESHUTDOWN (this client was
// blocklisted), or one started after Close began. If h returns true it
// has taken the request over and answers it (exactly once) itself, for
// instance by starting it on a new handle; false completes it with
// req.Err as usual. h runs on the completion goroutine or the caller's
// and must not block. Set it before the first request: it is read
// without synchronisation.
func (im *Image) OnUnusable(h func(req AsyncRequest) bool) { im.onUnusable = h }

func opFunc(op C.int) string {
	switch op {
	case C.RBDIO_OP_READ:
		return "rbd_aio_read"
	case C.RBDIO_OP_WRITE:
		return "rbd_aio_write"
	case C.RBDIO_OP_FLUSH:
		return "rbd_aio_flush"
	case C.RBDIO_OP_DISCARD:
		return "rbd_aio_discard"
	}
	return "rbd_aio_write_zeroes"
}

func (im *Image) ioError(fn string, ret, off, length int64) error {
	code := syscall.Errno(-ret)
	e := &Error{Op: ioOpName(fn), Object: im.spec, Func: fn, Errno: code, Kind: kindOf(code)}
	e.Hint = "offset " + itoa(off) + " length " + itoa(length)
	if code == syscall.EROFS || code == syscall.EPERM {
		e.Kind = ErrReadOnly
		e.Hint += "; the image is read-only here, or another client took the exclusive lock"
	}
	if code == syscall.ESHUTDOWN {
		e.Hint += "; this client was blocklisted by the cluster: reopen the image"
		if im.blocklisted != nil { // nil only in Images made by tests
			im.blocklistedOnce.Do(func() { close(im.blocklisted) })
		}
	}
	return e
}

func ioOpName(fn string) string {
	switch fn {
	case "rbd_aio_read":
		return "read"
	case "rbd_aio_write":
		return "write"
	case "rbd_aio_flush":
		return "flush"
	case "rbd_aio_discard":
		return "discard"
	}
	return "write zeroes"
}

// ReadAt reads len(p) bytes at off (rbd_aio_read). Reading past the end
// returns the bytes before it and io.EOF, as io.ReaderAt requires.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if off < 0 {
		return 0, im.ioError("rbd_aio_read", -int64(syscall.EINVAL), off, int64(len(p)))
	}
	n, err := im.aio(C.RBDIO_OP_READ, p, off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	if int(n) < len(p) {
		return int(n), io.EOF
	}
	return len(p), nil
}

// WriteAt writes p at off (rbd_aio_write). It fails with EROFS
// (ErrReadOnly) on an image opened read-only or at a snapshot.
func (im *Image) WriteAt(p []byte, off int64) (int, error) {
	if im.readOnly {
		return 0, im.readOnlyError("rbd_aio_write", off, int64(len(p)))
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off < 0 {
		return 0, im.ioError("rbd_aio_write", -int64(syscall.EINVAL), off, int64(len(p)))
	}
	if _, err := im.aio(C.RBDIO_OP_WRITE, p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush makes every write that completed before it durable on the OSDs
// (rbd_aio_flush).
func (im *Image) Flush() error {
	if im.readOnly {
		return nil
	}
	_, err := im.aio(C.RBDIO_OP_FLUSH, nil, 0, 0)
	return err
}

// StartReadAt starts reading len(p) bytes at off (rbd_aio_read) and
// returns at once: c.Complete gets the result, as ReadAt would return
// it, on the image's completion goroutine (nbd.AsyncBackend). p must
// not be touched until then.
func (im *Image) StartReadAt(p []byte, off int64, c nbd.Completer, tag uint64) {
	if len(p) == 0 || off < 0 {
		n, err := im.ReadAt(p, off) // nothing to read, or EINVAL
		c.Complete(tag, n, err)
		c.FlushCompletions()
		return
	}
	im.start(C.RBDIO_OP_READ, p, off, int64(len(p)), c, tag)
}

// StartWriteAt starts writing p at off (rbd_aio_write) and returns at
// once: c.Complete gets the result, as WriteAt would return it.
func (im *Image) StartWriteAt(p []byte, off int64, c nbd.Completer, tag uint64) {
	if im.readOnly || len(p) == 0 || off < 0 {
		n, err := im.WriteAt(p, off) // EROFS, nothing to write, or EINVAL
		c.Complete(tag, n, err)
		c.FlushCompletions()
		return
	}
	im.start(C.RBDIO_OP_WRITE, p, off, int64(len(p)), c, tag)
}

// StartFlush starts a flush (rbd_aio_flush) covering every write
// completed before it and returns at once: c.Complete gets the result.
func (im *Image) StartFlush(c nbd.Completer, tag uint64) {
	if im.readOnly {
		c.Complete(tag, 0, nil)
		c.FlushCompletions()
		return
	}
	im.start(C.RBDIO_OP_FLUSH, nil, 0, 0, c, tag)
}

// Discard deallocates the range (rbd_aio_discard). librbd may leave
// parts smaller than rbd_discard_granularity_bytes in place; NBD TRIM
// allows that.
func (im *Image) Discard(off, length int64) error {
	if im.readOnly {
		return im.readOnlyError("rbd_aio_discard", off, length)
	}
	if length == 0 {
		return nil
	}
	_, err := im.aio(C.RBDIO_OP_DISCARD, nil, off, length)
	return err
}

// WriteZeroes makes the range read as zeroes (rbd_aio_write_zeroes).
// With mayUnmap false the range stays allocated
// (RBD_WRITE_ZEROES_FLAG_THICK_PROVISION).
func (im *Image) WriteZeroes(off, length int64, mayUnmap bool) error {
	if im.readOnly {
		return im.readOnlyError("rbd_aio_write_zeroes", off, length)
	}
	if length == 0 {
		return nil
	}
	op := C.int(C.RBDIO_OP_WRITE_ZEROES)
	if !mayUnmap {
		op = C.RBDIO_OP_WRITE_ZEROES_THICK
	}
	_, err := im.aio(op, nil, off, length)
	return err
}

func (im *Image) readOnlyError(fn string, off, length int64) error {
	why := "opened read-only"
	if im.snap != "" {
		why = "opened at snapshot " + im.snap
	}
	return &Error{Op: ioOpName(fn), Object: im.spec, Kind: ErrReadOnly, Errno: syscall.EROFS,
		Hint: "offset " + itoa(off) + " length " + itoa(length) + ": the image is " + why}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// The IO loop finds the asynchronous path through this interface.
var _ nbd.AsyncBackend = (*Image)(nil)
