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
	"fmt"
	"sync"
	"syscall"
	"unsafe"
)

// Flatten copies into image every block it still reads from its clone
// parent, so it no longer depends on it. It may run while the image is
// open for IO elsewhere: librbd hands the work to the exclusive lock
// holder (and then a cancel only stops this caller's wait once the
// holder reports progress). An image that is not a clone is left alone.
//
// Cancelling ctx stops the flatten after the objects in flight (librbd
// copies a few at a time): Flatten returns an error wrapping ctx.Err()
// and the image is still a clone, partly copied; flattening it again
// finishes the job.
//
// Wraps rbd_open, rbd_flatten_with_progress (its progress callback
// returns -ECANCELED once ctx is done) and rbd_close.
func (c *Conn) Flatten(ctx context.Context, image string) error {
	spec := c.spec(image, "")
	if err := c.check(ctx, "flatten", spec); err != nil {
		return err
	}
	if err := validName("image", image); err != nil {
		return err
	}
	cName := C.CString(image)
	defer C.free(unsafe.Pointer(cName))
	var img C.rbd_image_t
	unlock := c.lockImageCtx()
	ret := C.rbd_open(C.rados_ioctx_t(c.ioctx.Pointer()), cName, &img, nil)
	unlock()
	if ret < 0 {
		e := errnoErr(int(ret), "flatten", spec, "rbd_open")
		if e.Errno == syscall.ENOENT {
			e.Hint = "no such image"
		}
		return e
	}
	defer func() {
		defer c.lockImageCtx()()
		C.rbd_close(img)
	}()

	// The flag lives in C memory: librbd's threads read it.
	flag := (*C.int)(C.calloc(1, C.sizeof_int))
	if flag == nil {
		return &Error{Op: "flatten", Object: spec, Errno: syscall.ENOMEM}
	}
	var mu sync.Mutex // orders the cancel against the free below
	freed := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !freed {
			C.rbdio_flatten_cancel(flag)
		}
	})
	ret = C.rbdio_flatten(img, flag)
	stop()
	mu.Lock()
	freed = true
	C.free(unsafe.Pointer(flag))
	mu.Unlock()

	if ret >= 0 {
		return nil
	}
	e := errnoErr(int(ret), "flatten", spec, "rbd_flatten_with_progress")
	switch {
	case ctx.Err() != nil && (e.Errno == syscall.ECANCELED || e.Errno == syscall.ERESTART):
		return fmt.Errorf("%w: stopped part way; flattening again finishes it: %w", e, ctx.Err())
	case e.Errno == syscall.EINVAL:
		// librbd's answer for "not a clone".
		var parent C.rbd_linked_image_spec_t
		var parentSnap C.rbd_snap_spec_t
		if r := C.rbd_get_parent(img, &parent, &parentSnap); r == -C.int(syscall.ENOENT) {
			return nil
		} else if r == 0 {
			C.rbd_linked_image_spec_cleanup(&parent)
			C.rbd_snap_spec_cleanup(&parentSnap)
		}
	}
	return e
}
