package rbdio

/*
#include <errno.h>
#include <stdlib.h>
#include <stdint.h>
#include <rbd/librbd.h>

// rbdio_extents collects the allocated extents rbd_diff_iterate2
// reports: pairs of offset and length in v, n pairs of cap.
typedef struct {
	uint64_t *v;
	size_t n, cap;
} rbdio_extents;

// rbdio_extent_cb appends one extent (merged with the previous one when
// they touch), growing v. It stops the iteration with -E2BIG past
// max_pairs so a very fragmented image cannot take unbounded memory.
static int rbdio_extent_cb(uint64_t off, size_t len, int exists, void *arg) {
	rbdio_extents *e = arg;
	const size_t max_pairs = 1 << 20;
	if (!exists || len == 0)
		return 0;
	if (e->n > 0 && e->v[2*e->n-2] + e->v[2*e->n-1] == off) {
		e->v[2*e->n-1] += len;
		return 0;
	}
	if (e->n == e->cap) {
		size_t cap = e->cap ? 2*e->cap : 64;
		if (cap > max_pairs)
			return -E2BIG;
		uint64_t *v = realloc(e->v, cap * 2 * sizeof(uint64_t));
		if (!v)
			return -ENOMEM;
		e->v = v;
		e->cap = cap;
	}
	e->v[2*e->n] = off;
	e->v[2*e->n+1] = len;
	e->n++;
	return 0;
}

static int rbdio_allocated(rbd_image_t img, uint64_t off, uint64_t len, int whole_object, rbdio_extents *e) {
	return rbd_diff_iterate2(img, NULL, off, len, 1, whole_object, rbdio_extent_cb, e);
}
*/
import "C"

import (
	"cmp"
	"context"
	"slices"
	"syscall"
	"unsafe"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// Extents reports the allocated parts of [off, off+length) for
// NBD_CMD_BLOCK_STATUS (nbd.Extenter): librbd's diff iteration from the
// image's creation (no from-snapshot), parent included, so what it
// reports is every object range holding data. With fast-diff enabled it
// asks for whole objects, which librbd answers from the object map
// without touching the objects (it falls back to listing them itself
// when the map is invalid); without it each object is asked, and the
// extents are exact. Unallocated ranges read as zeroes. It blocks for
// the iteration (librbd has no asynchronous form), so the IO loop calls
// it on a worker.
func (im *Image) Extents(ctx context.Context, off, length int64, limit int) ([]nbd.Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if off < 0 || length < 0 {
		return nil, &Error{Op: "block status", Object: im.spec, Kind: ErrInvalid, Errno: syscall.EINVAL}
	}
	if err := im.enter("block status"); err != nil {
		return nil, err
	}
	defer im.leave()
	var features C.uint64_t
	if ret := C.rbd_get_features(im.img, &features); ret < 0 {
		return nil, errnoErr(int(ret), "block status", im.spec, "rbd_get_features")
	}
	whole := C.int(0)
	if features&C.RBD_FEATURE_FAST_DIFF != 0 {
		whole = 1
	}
	e := (*C.rbdio_extents)(C.calloc(1, C.size_t(unsafe.Sizeof(C.rbdio_extents{}))))
	if e == nil {
		return nil, &Error{Op: "block status", Object: im.spec, Kind: kindOf(syscall.ENOMEM), Errno: syscall.ENOMEM}
	}
	defer func() {
		C.free(unsafe.Pointer(e.v))
		C.free(unsafe.Pointer(e))
	}()
	if ret := C.rbdio_allocated(im.img, C.uint64_t(off), C.uint64_t(length), whole, e); ret < 0 {
		if ret == -C.E2BIG {
			// Too fragmented to list: all of it allocated is never wrong.
			return []nbd.Extent{{Offset: off, Length: length}}, nil
		}
		return nil, errnoErr(int(ret), "block status", im.spec, "rbd_diff_iterate2")
	}
	pairs := unsafe.Slice((*uint64)(unsafe.Pointer(e.v)), 2*int(e.n))
	ext := make([]nbd.Extent, 0, int(e.n))
	for i := 0; i < len(pairs); i += 2 {
		ext = append(ext, nbd.Extent{Offset: int64(pairs[i]), Length: int64(pairs[i+1])})
	}
	// The nbd side needs them in order and apart; librbd reports object
	// by object, whole objects possibly beyond the range: sort, clip and
	// merge before cutting to limit, so the cut never hides data.
	slices.SortFunc(ext, func(a, b nbd.Extent) int { return cmp.Compare(a.Offset, b.Offset) })
	out := ext[:0]
	for _, x := range ext {
		a, b := max(x.Offset, off), min(x.Offset+x.Length, off+length)
		if b <= a {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length >= a {
			out[n-1].Length = max(out[n-1].Offset+out[n-1].Length, b) - out[n-1].Offset
			continue
		}
		out = append(out, nbd.Extent{Offset: a, Length: b - a})
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
