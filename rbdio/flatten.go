package rbdio

/*
#include <stdlib.h>
#include <rbd/librbd.h>

int rbdio_flatten(rbd_image_t image, int *cancel);
void rbdio_flatten_cancel(int *cancel);
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"unsafe"
)

// Flatten copies into image every block it still reads from its clone
// parent, so it no longer depends on it. An image that is not a clone is
// left alone.
//
// A flatten never makes an open of the image wait for it. librbd hands
// the exclusive lock to a client that asks for it only once the
// maintenance operation holding it ends, so an OpenImage for writing used
// to wait for the whole flatten. Now, if the image is open for writing on
// this connection, the flatten runs through that handle, beside its IO,
// under the lock it already holds. Otherwise it runs on an image context
// of its own; an OpenImage for writing of the same image on this
// connection interrupts it, and once the open is done the flatten carries
// on through the new handle (objects already copied stay copied). Closing
// that handle hands the rest back to a context of its own.
// docs/2026-12-07-flatten-beside-attach.md has the measurements.
//
// Cancelling ctx stops the flatten after the objects in flight (librbd
// copies a few at a time): Flatten returns an error wrapping ctx.Err()
// and the image is still a clone, partly copied; flattening it again
// finishes the job.
//
// Wraps rbd_open, rbd_flatten_with_progress (its progress callback
// returns -ECANCELED once ctx is done or the run is interrupted) and
// rbd_close.
func (c *Conn) Flatten(ctx context.Context, image string) error {
	spec := c.spec(image, "")
	if err := c.check(ctx, "flatten", spec); err != nil {
		return err
	}
	if err := validName("image", image); err != nil {
		return err
	}
	for moves := 0; ; moves++ {
		var err error
		if im := c.openForFlatten(image); im != nil {
			err = im.flatten(ctx)
			im.leave()
		} else {
			err = c.flattenAlone(ctx, image, spec)
		}
		if !errors.Is(err, errFlattenMoved) {
			return err
		}
		if moves == maxFlattenMoves {
			return &Error{Op: "flatten", Object: spec, Kind: ErrBusy, Errno: syscall.EBUSY,
				Hint: fmt.Sprintf("interrupted %d times by opens and closes of the image; flattening again finishes it", moves+1)}
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("flatten %s: stopped part way; flattening again finishes it: %w", spec, err)
		}
	}
}

// maxFlattenMoves bounds how often one Flatten follows the image between
// handles (each move keeps the objects copied so far, so a bound is only
// against an image opened and closed without end).
const maxFlattenMoves = 16

// errFlattenMoved: the flatten stopped because its handle is needed
// elsewhere (an open for writing, a close); Flatten carries on.
var errFlattenMoved = errors.New("flatten moved to another handle")

// soloFlatten is a flatten running on an image context of its own, as
// Conn.flattens records it for OpenImage.
type soloFlatten struct {
	flag *cancelFlag
	// asked is set (under Conn.mu) by the first open that interrupts
	// the run; that open closes opened once its attempt ended, the
	// image registered if it succeeded.
	asked  bool
	opened chan struct{}
	// done is closed once the run's image context is closed.
	done chan struct{}
}

// flattenAlone flattens image on a context of its own, registered in
// c.flattens so an open for writing can interrupt it; it returns
// errFlattenMoved if one did (once that open has finished).
func (c *Conn) flattenAlone(ctx context.Context, image, spec string) error {
	flag, err := newCancelFlag(spec)
	if err != nil {
		return err
	}
	run := &soloFlatten{flag: flag, opened: make(chan struct{}), done: make(chan struct{})}
	c.mu.Lock()
	if prev := c.flattens[image]; prev != nil {
		// Another Flatten of the same image is under way: wait for it,
		// then look again (it has finished the job, or moved).
		c.mu.Unlock()
		flag.free()
		select {
		case <-prev.done:
			return errFlattenMoved
		case <-ctx.Done():
			return fmt.Errorf("flatten %s: waiting for another flatten of it: %w", spec, ctx.Err())
		}
	}
	if c.flattens == nil {
		c.flattens = make(map[string]*soloFlatten)
	}
	c.flattens[image] = run
	c.mu.Unlock()
	defer flag.free()

	ret, notClone, openErr := c.runSoloFlatten(ctx, run, image, spec)
	c.mu.Lock()
	delete(c.flattens, image)
	asked := run.asked // an open cancelled the run
	c.mu.Unlock()
	close(run.done)
	if (openErr != nil || ret < 0) && asked && ctx.Err() == nil {
		select {
		case <-run.opened:
		case <-ctx.Done():
		}
		return errFlattenMoved
	}
	if openErr != nil {
		return openErr
	}
	return flattenResult(ctx, ret, spec, notClone)
}

// runSoloFlatten opens image, flattens it and closes it. It returns
// librbd's result and whether an EINVAL meant the image is not a clone
// (notClone, looked up before the close), or why the open failed.
func (c *Conn) runSoloFlatten(ctx context.Context, run *soloFlatten, image, spec string) (ret C.int, notClone bool, openErr error) {
	cName := C.CString(image)
	defer C.free(unsafe.Pointer(cName))
	var img C.rbd_image_t
	unlock := c.lockImageCtx()
	ret = C.rbd_open(C.rados_ioctx_t(c.ioctx.Pointer()), cName, &img, nil)
	unlock()
	if ret < 0 {
		e := errnoErr(int(ret), "flatten", spec, "rbd_open")
		if e.Errno == syscall.ENOENT {
			e.Hint = "no such image"
		}
		return ret, false, e
	}
	defer func() {
		defer c.lockImageCtx()()
		C.rbd_close(img)
	}()
	stop := context.AfterFunc(ctx, run.flag.cancel)
	ret = C.rbdio_flatten(img, run.flag.p)
	stop()
	return ret, notAClone(img, ret), nil
}

// flatten flattens the image through this handle; the caller entered it
// (enter) and leaves it after. Close interrupts it (errFlattenMoved).
func (im *Image) flatten(ctx context.Context) error {
	flag, err := newCancelFlag(im.spec)
	if err != nil {
		return err
	}
	defer flag.free()
	im.flatMu.Lock()
	im.flatFlags = append(im.flatFlags, flag)
	im.flatMu.Unlock()
	defer func() {
		im.flatMu.Lock()
		for i, f := range im.flatFlags {
			if f == flag {
				im.flatFlags = append(im.flatFlags[:i], im.flatFlags[i+1:]...)
				break
			}
		}
		im.flatMu.Unlock()
	}()
	// A Close that began before the flag was listed did not see it.
	if im.users.Load()&closingBit != 0 {
		flag.cancel()
	}
	stop := context.AfterFunc(ctx, flag.cancel)
	ret := C.rbdio_flatten(im.img, flag.p)
	stop()
	if ret < 0 && ctx.Err() == nil && flag.cancelled() {
		return errFlattenMoved
	}
	return flattenResult(ctx, ret, im.spec, notAClone(im.img, ret))
}

// interruptFlattens stops the flattens running through im (Close).
func (im *Image) interruptFlattens() {
	im.flatMu.Lock()
	defer im.flatMu.Unlock()
	for _, f := range im.flatFlags {
		f.cancel()
	}
}

// openForFlatten returns an image open for writing at its head on c,
// entered, or nil.
func (c *Conn) openForFlatten(image string) *Image {
	c.mu.Lock()
	defer c.mu.Unlock()
	for im := range c.images {
		if im.name == image && im.snap == "" && !im.readOnly && im.enter("flatten") == nil {
			return im
		}
	}
	return nil
}

// interruptFlatten is OpenImage's side: it stops a flatten of image
// running on a context of its own and waits until that context is
// closed (its exclusive lock released). The returned function, called
// once the open ended, lets the flatten carry on.
func (c *Conn) interruptFlatten(ctx context.Context, image string) (func(), error) {
	c.mu.Lock()
	run := c.flattens[image]
	first := run != nil && !run.asked
	if run != nil {
		run.asked = true
		run.flag.cancel()
	}
	c.mu.Unlock()
	if run == nil {
		return func() {}, nil
	}
	opened := func() {}
	if first {
		opened = func() { close(run.opened) }
	}
	select {
	case <-run.done:
		return opened, nil
	case <-ctx.Done():
		opened()
		return nil, ctx.Err()
	}
}

// notAClone reports whether a flatten's EINVAL (ret) is librbd's answer
// for "not a clone": img has no parent (rbd_get_parent says ENOENT).
func notAClone(img C.rbd_image_t, ret C.int) bool {
	if ret != -C.int(syscall.EINVAL) {
		return false
	}
	var parent C.rbd_linked_image_spec_t
	var parentSnap C.rbd_snap_spec_t
	r := C.rbd_get_parent(img, &parent, &parentSnap)
	if r == 0 {
		C.rbd_linked_image_spec_cleanup(&parent)
		C.rbd_snap_spec_cleanup(&parentSnap)
	}
	return r == -C.int(syscall.ENOENT)
}

// flattenResult turns librbd's result into Flatten's.
func flattenResult(ctx context.Context, ret C.int, spec string, notClone bool) error {
	if ret >= 0 {
		return nil
	}
	e := errnoErr(int(ret), "flatten", spec, "rbd_flatten_with_progress")
	switch {
	case ctx.Err() != nil && (e.Errno == syscall.ECANCELED || e.Errno == syscall.ERESTART):
		return fmt.Errorf("%w: stopped part way; flattening again finishes it: %w", e, ctx.Err())
	case notClone:
		return nil
	}
	return e
}

// cancelFlag is the flag librbd's progress callback reads (C memory:
// librbd's threads read it), and the lock that orders a cancel against
// its free.
type cancelFlag struct {
	mu    sync.Mutex
	p     *C.int
	freed bool
}

func newCancelFlag(spec string) (*cancelFlag, error) {
	p := (*C.int)(C.calloc(1, C.sizeof_int))
	if p == nil {
		return nil, &Error{Op: "flatten", Object: spec, Errno: syscall.ENOMEM}
	}
	return &cancelFlag{p: p}, nil
}

func (f *cancelFlag) cancel() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.freed {
		C.rbdio_flatten_cancel(f.p)
	}
}

// cancelled reports whether cancel ran before free.
func (f *cancelFlag) cancelled() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.freed && *f.p != 0
}

func (f *cancelFlag) free() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.freed {
		f.freed = true
		C.free(unsafe.Pointer(f.p))
	}
}
