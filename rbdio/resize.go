package rbdio

import (
	"context"
	"fmt"

	"github.com/ceph/go-ceph/rbd"
)

// ResizeOptions modify Resize.
type ResizeOptions struct {
	// AllowShrink permits a smaller size; the data past it is lost.
	AllowShrink bool
}

// Resize changes image's size (rbd_resize2). It refuses to shrink unless
// opts.AllowShrink. It may run while the image is open for IO elsewhere:
// librbd hands the work to the exclusive lock holder, and every open
// Image of it sees the new size (Size, SizeChanges). Cancelling ctx
// stops a long shrink between objects.
func (c *Conn) Resize(ctx context.Context, image string, size int64, opts ResizeOptions) error {
	spec := c.spec(image, "")
	if size <= 0 {
		return &Error{Op: "resize", Object: spec, Kind: ErrInvalid,
			Hint: fmt.Sprintf("size %d: want a positive number of bytes", size)}
	}
	return c.withImage(ctx, "resize", image, "", false, func(img *rbd.Image) error {
		cur, err := img.GetSize()
		if err != nil {
			return wrap(err, "resize", spec, "rbd_get_size")
		}
		if uint64(size) == cur {
			return nil
		}
		if uint64(size) < cur && !opts.AllowShrink {
			return &Error{Op: "resize", Object: spec, Kind: ErrInvalid,
				Hint: fmt.Sprintf("shrinking from %d to %d bytes loses data: pass ResizeOptions{AllowShrink: true}", cur, size)}
		}
		// The progress callback aborts the resize when ctx ends.
		abort := func(_, _ uint64, _ interface{}) int {
			if ctx.Err() != nil {
				return -1
			}
			return 0
		}
		if err := img.Resize2(uint64(size), opts.AllowShrink, abort, nil); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return wrap(err, "resize", spec, "rbd_resize2")
		}
		return nil
	})
}
