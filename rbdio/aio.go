package rbdio

/*
#include "aio_shim.h"
*/
import "C"

import (
	"io"
	"runtime"
	"runtime/cgo"
	"strconv"
	"sync"
	"syscall"
	"unsafe"
)

// The data path. Each call submits one librbd asynchronous request
// (rbd_aio_read, rbd_aio_write, rbd_aio_flush, rbd_aio_discard,
// rbd_aio_write_zeroes) through aio_shim.c and parks its goroutine until
// the completion callback, which runs on a librbd thread, hands back the
// result. No OS thread blocks in C while a request is in flight, unlike
// go-ceph's ReadAt/WriteAt (rbd_read/rbd_write); doc.go has the
// measurements behind this choice.

// aioRequest is one request's rendezvous with its completion. Requests
// are recycled through a free list, each with a cgo.Handle made once, so
// the hot path neither allocates nor touches cgo's handle map for
// writing.
type aioRequest struct {
	handle cgo.Handle
	done   chan int64
	pin    runtime.Pinner
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
	return r
}

func putRequest(r *aioRequest) {
	aioFree.Lock()
	aioFree.list = append(aioFree.list, r)
	aioFree.Unlock()
}

//export rbdioComplete
func rbdioComplete(token C.uintptr_t, ret C.int64_t) {
	r := cgo.Handle(token).Value().(*aioRequest)
	r.done <- int64(ret)
}

// aio runs one request and returns librbd's result (>= 0) or an error.
// p, if not empty, is pinned while librbd holds it.
func (im *Image) aio(op C.int, name string, p []byte, off, length int64) (int64, error) {
	if err := im.enter(name); err != nil {
		return 0, err
	}
	defer im.leave()
	r := getRequest()
	var buf *C.char
	if len(p) > 0 {
		r.pin.Pin(&p[0])
		buf = (*C.char)(unsafe.Pointer(&p[0]))
	}
	rc := C.rbdio_aio_submit(im.img, op, C.uint64_t(off), C.uint64_t(length), buf, C.uintptr_t(r.handle))
	var ret int64
	if rc < 0 {
		ret = int64(rc)
	} else {
		ret = <-r.done
	}
	r.pin.Unpin()
	putRequest(r)
	if ret < 0 {
		return 0, im.ioError(name, ret, off, length)
	}
	return ret, nil
}

func (im *Image) ioError(fn string, ret, off, length int64) error {
	code := syscall.Errno(-ret)
	e := &Error{Op: ioOpName(fn), Object: im.spec, Func: fn, Errno: code, Kind: kindOf(code), io: true}
	e.Hint = "offset " + itoa(off) + " length " + itoa(length)
	if code == syscall.EROFS || code == syscall.EPERM {
		e.Kind = ErrReadOnly
		e.Hint += "; the image is read-only here, or another client took the exclusive lock"
	}
	if code == syscall.ESHUTDOWN {
		e.Hint += "; this client was blocklisted by the cluster: reopen the image"
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
	n, err := im.aio(C.RBDIO_OP_READ, "rbd_aio_read", p, off, int64(len(p)))
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
	if _, err := im.aio(C.RBDIO_OP_WRITE, "rbd_aio_write", p, off, int64(len(p))); err != nil {
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
	_, err := im.aio(C.RBDIO_OP_FLUSH, "rbd_aio_flush", nil, 0, 0)
	return err
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
	_, err := im.aio(C.RBDIO_OP_DISCARD, "rbd_aio_discard", nil, off, length)
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
	_, err := im.aio(op, "rbd_aio_write_zeroes", nil, off, length)
	return err
}

func (im *Image) readOnlyError(fn string, off, length int64) error {
	why := "opened read-only"
	if im.snap != "" {
		why = "opened at snapshot " + im.snap
	}
	return &Error{Op: ioOpName(fn), Object: im.spec, Kind: ErrReadOnly, Errno: syscall.EROFS, io: true,
		Hint: "offset " + itoa(off) + " length " + itoa(length) + ": the image is " + why}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
