package rbdio

import (
	"context"
	"sort"

	"github.com/ceph/go-ceph/rbd"
)

// ListImages returns the names of the images in the pool (and
// namespace), sorted (rbd_list2).
func (c *Conn) ListImages(ctx context.Context) ([]string, error) {
	object := c.spec("", "")
	if err := c.check(ctx, "list images", object); err != nil {
		return nil, err
	}
	names, err := rbd.GetImageNames(c.ioctx)
	if err != nil {
		return nil, wrap(err, "list images", object, "rbd_list2")
	}
	sort.Strings(names)
	return names, nil
}

// ImageInfo describes an image.
type ImageInfo struct {
	Name       string
	Size       int64
	ObjectSize int64
	Features   Features
	// Parent is the clone parent; HasParent is false for an image that
	// is not a clone (or was flattened).
	Parent    ImageSpec
	HasParent bool
	Snapshots []SnapshotInfo
}

// Stat describes image (rbd_stat, rbd_get_features, rbd_get_parent,
// rbd_snap_list).
func (c *Conn) Stat(ctx context.Context, image string) (ImageInfo, error) {
	info := ImageInfo{Name: image}
	spec := c.spec(image, "")
	err := c.withImage(ctx, "stat image", image, "", true, func(img *rbd.Image) error {
		st, err := img.Stat()
		if err != nil {
			return wrap(err, "stat image", spec, "rbd_stat")
		}
		info.Size = int64(st.Size)
		info.ObjectSize = int64(st.Obj_size)
		f, err := img.GetFeatures()
		if err != nil {
			return wrap(err, "stat image", spec, "rbd_get_features")
		}
		info.Features = Features(f)
		if info.Parent, info.HasParent, err = parentOf(img, spec); err != nil {
			return err
		}
		info.Snapshots, err = snapshots(img, spec)
		return err
	})
	return info, err
}
