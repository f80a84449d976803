package rbdio

/*
#include "aio_shim.h"
*/
import "C"

import (
	"runtime/cgo"
)

// Size changes. librbd calls back (rbd_update_watch) whenever the image
// header changes: a resize, but also a snapshot or a metadata update.
// The callback only pokes a goroutine, which then asks librbd for the
// size (rbd_get_size) outside librbd's callback thread, publishes it to
// Size() and sends it on SizeChanges.

//export rbdioUpdated
func rbdioUpdated(token C.uintptr_t) {
	im := cgo.Handle(token).Value().(*Image)
	select {
	case im.updated <- struct{}{}:
	default: // a poke is already pending; it will read the latest size
	}
}

// SizeChanges returns a channel that receives the image's new size each
// time it changes, and is closed when the image is closed. A receiver
// that falls behind misses intermediate sizes, never the latest one:
// Size() is updated first in any case.
func (im *Image) SizeChanges() <-chan int64 { return im.sizeCh }

// startWatch registers the header watch and starts the goroutine that
// follows it.
func (im *Image) startWatch() error {
	im.updated = make(chan struct{}, 1)
	im.sizeCh = make(chan int64, 1)
	im.closing = make(chan struct{})
	im.watchDone = make(chan struct{})
	h := cgo.NewHandle(im)
	im.watchToken = uintptr(h)
	if ret := C.rbdio_update_watch(im.img, &im.watchHandle, C.uintptr_t(h)); ret < 0 {
		h.Delete()
		return errnoErr(int(ret), "watch image", im.spec, "rbd_update_watch")
	}
	im.watching = true
	go im.followSize()
	return nil
}

func (im *Image) followSize() {
	defer close(im.watchDone)
	defer close(im.sizeCh)
	for {
		select {
		case <-im.closing:
			return
		case <-im.updated:
		}
		var size C.uint64_t
		if C.rbd_get_size(im.img, &size) < 0 {
			continue
		}
		if im.size.Swap(int64(size)) == int64(size) {
			continue
		}
		// Replace an unread older size instead of blocking on it.
		select {
		case <-im.sizeCh:
		default:
		}
		select {
		case im.sizeCh <- int64(size):
		case <-im.closing:
			return
		}
	}
}

// stopWatch unregisters the watch (rbd_update_unwatch waits for a
// callback in progress) and stops the goroutine, which closes
// SizeChanges.
func (im *Image) stopWatch() {
	if !im.watching {
		return
	}
	im.watching = false
	C.rbd_update_unwatch(im.img, im.watchHandle)
	close(im.closing)
	<-im.watchDone
	cgo.Handle(im.watchToken).Delete()
}
