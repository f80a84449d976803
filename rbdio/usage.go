package rbdio

import (
	"context"

	"github.com/ceph/go-ceph/rbd"
)

// DiskUsage is the bytes image has written itself (not read through
// from a clone parent), what `rbd du` reports as USED: the extents that
// rbd_diff_iterate2 finds since the image was created, whole objects at
// a time (cheap with the object map).
//
// Wraps rbd_diff_iterate2.
func (c *Conn) DiskUsage(ctx context.Context, image string) (int64, error) {
	var used int64
	spec := c.spec(image, "")
	err := c.withImage(ctx, "disk usage", image, "", true, func(img *rbd.Image) error {
		st, err := img.Stat()
		if err != nil {
			return wrap(err, "disk usage", spec, "rbd_stat")
		}
		err = img.DiffIterate(rbd.DiffIterateConfig{
			Offset: 0, Length: st.Size,
			IncludeParent: rbd.ExcludeParent, WholeObject: rbd.EnableWholeObject,
			Callback: func(_, length uint64, exists int, _ interface{}) int {
				if exists != 0 {
					used += int64(length)
				}
				return 0
			},
		})
		if err != nil {
			return wrap(err, "disk usage", spec, "rbd_diff_iterate2")
		}
		return nil
	})
	return used, err
}

// RenameImage gives image from the name to, atomically; ErrExists when
// to is taken (and nothing changes). Clones and snapshots keep working:
// RBD links them by image ID, not by name.
//
// Wraps rbd_rename.
func (c *Conn) RenameImage(ctx context.Context, from, to string) error {
	spec := c.spec(from, "")
	if err := c.check(ctx, "rename image", spec); err != nil {
		return err
	}
	if err := validName("image", from); err != nil {
		return err
	}
	if err := validName("image", to); err != nil {
		return err
	}
	unlock := c.lockImageCtx()
	err := rbd.GetImage(c.ioctx, from).Rename(to)
	unlock()
	if err != nil {
		return wrap(err, "rename image to "+to, spec, "rbd_rename")
	}
	return nil
}
