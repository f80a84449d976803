package rbdio

import (
	"context"
	"fmt"
	"syscall"

	"github.com/ceph/go-ceph/rbd"
)

// withImage opens name (at snap, if set) through go-ceph for an
// administrative call and closes it afterwards. Read-only handles
// neither take the exclusive lock nor register a watch; read-write ones
// take the lock only if the operation needs it, and librbd forwards the
// operation to the current holder when another client (an open export)
// has it.
//
// Wraps rbd_open / rbd_open_read_only and rbd_close.
func (c *Conn) withImage(ctx context.Context, op, name, snap string, readOnly bool, fn func(img *rbd.Image) error) error {
	spec := c.spec(name, snap)
	if err := c.check(ctx, op, spec); err != nil {
		return err
	}
	if err := validName("image", name); err != nil {
		return err
	}
	if snap != "" {
		if err := validName("snapshot", snap); err != nil {
			return err
		}
	}
	var img *rbd.Image
	var err error
	fnName := "rbd_open"
	unlock := c.lockImageCtx()
	if readOnly {
		fnName = "rbd_open_read_only"
		img, err = rbd.OpenImageReadOnly(c.ioctx, name, snap)
	} else {
		img, err = rbd.OpenImage(c.ioctx, name, snap)
	}
	unlock()
	if err != nil {
		e := wrap(err, op, spec, fnName)
		if e.Errno == syscall.ENOENT {
			if snap != "" {
				e.Hint = fmt.Sprintf("image %s or its snapshot %s does not exist (rbd snap ls %s)", name, snap, c.spec(name, ""))
			} else {
				e.Hint = fmt.Sprintf("image %s does not exist (rbd ls)", c.spec(name, ""))
			}
		}
		return e
	}
	defer func() {
		defer c.lockImageCtx()()
		img.Close()
	}()
	return fn(img)
}
