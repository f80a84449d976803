package rbdio

import (
	"context"
	"syscall"

	"github.com/ceph/go-ceph/rbd"
)

// ImageSpec names an image (and optionally a snapshot) anywhere in the
// cluster.
type ImageSpec struct {
	Pool      string
	Namespace string
	Image     string
	Snapshot  string
	// Trash is set for a child that was moved to the trash but still
	// depends on its parent.
	Trash bool
}

// String writes the spec as rbd(8) does: pool[/namespace]/image[@snap].
func (s ImageSpec) String() string {
	out := s.Pool + "/"
	if s.Namespace != "" {
		out += s.Namespace + "/"
	}
	out += s.Image
	if s.Snapshot != "" {
		out += "@" + s.Snapshot
	}
	if s.Trash {
		out += " (in trash)"
	}
	return out
}

// Clone makes child a copy-on-write clone of parent@snap in the same
// pool and namespace (rbd_clone3). The snapshot must be protected
// (ErrNotProtected otherwise): Clone asks for a v1 clone whatever the
// cluster's rbd_default_clone_format, which keeps clones usable by
// clients that predate clone v2, and lets librbd check the protection
// in the clone itself. opts.Size is ignored; Features
// defaults to DefaultFeatures. librbd removes a half-made clone itself
// when a step fails.
func (c *Conn) Clone(ctx context.Context, parent, snap, child string, opts CreateOptions) error {
	spec := c.spec(child, "")
	if err := c.check(ctx, "clone", spec); err != nil {
		return err
	}
	if err := validName("image", child); err != nil {
		return err
	}
	if err := validName("snapshot", snap); err != nil {
		return err
	}
	if err := validName("image", parent); err != nil {
		return err
	}
	rio, err := c.imageOptions("clone", spec, opts, true)
	if err != nil {
		return err
	}
	defer rio.Destroy()
	unlock := c.lockImageCtx()
	err = rbd.CloneImage(c.ioctx, parent, snap, c.ioctx, child, rio)
	unlock()
	if err == nil {
		return nil
	}
	e := wrap(err, "clone "+c.spec(parent, snap)+" to", spec, "rbd_clone3")
	if e.Errno == syscall.EEXIST {
		e.Hint = "pick another name, or remove the old image first"
		return e
	}
	// librbd says EINVAL for an unprotected snapshot and ENOENT for a
	// missing parent or snapshot: look, for the error that says which.
	if perr := c.checkCloneParent(ctx, parent, snap); perr != nil {
		return perr
	}
	return e
}

// checkCloneParent says why parent@snap cannot be cloned: ErrNotFound
// for a missing image or snapshot, ErrNotProtected for an unprotected
// snapshot; nil if it can be.
func (c *Conn) checkCloneParent(ctx context.Context, parent, snap string) error {
	return c.withImage(ctx, "clone", parent, "", true, func(img *rbd.Image) error {
		protected, err := img.GetSnapshot(snap).IsProtected()
		if err != nil {
			return snapError(err, "clone", c.spec(parent, snap), "rbd_snap_is_protected")
		}
		if !protected {
			return &Error{Op: "clone", Object: c.spec(parent, snap), Kind: ErrNotProtected,
				Hint: "protect the snapshot first (ProtectSnapshot, rbd snap protect)"}
		}
		return nil
	})
}

// Children lists the clones of image@snap (rbd_list_children3).
func (c *Conn) Children(ctx context.Context, image, snap string) ([]ImageSpec, error) {
	if err := validName("snapshot", snap); err != nil {
		return nil, err
	}
	var out []ImageSpec
	err := c.withImage(ctx, "list children", image, snap, true, func(img *rbd.Image) (err error) {
		out, err = children(img, c.spec(image, snap))
		return err
	})
	return out, err
}

// children lists the clones of the snapshot img is set to (spec names
// it for errors).
func children(img *rbd.Image, spec string) ([]ImageSpec, error) {
	kids, err := img.ListChildrenAttributes()
	if err != nil {
		return nil, wrap(err, "list children", spec, "rbd_list_children3")
	}
	out := make([]ImageSpec, 0, len(kids))
	for _, k := range kids {
		out = append(out, ImageSpec{Pool: k.PoolName, Namespace: k.PoolNamespace, Image: k.ImageName, Trash: k.Trash})
	}
	return out, nil
}

// Parent returns the clone parent of image; ok is false when the image
// is not a clone (or was flattened) (rbd_get_parent).
func (c *Conn) Parent(ctx context.Context, image string) (parent ImageSpec, ok bool, err error) {
	err = c.withImage(ctx, "get parent", image, "", true, func(img *rbd.Image) error {
		var e error
		parent, ok, e = parentOf(img, c.spec(image, ""))
		return e
	})
	return parent, ok, err
}

func parentOf(img *rbd.Image, spec string) (ImageSpec, bool, error) {
	p, err := img.GetParent()
	if err != nil {
		if code, _ := cephErrno(err); code == syscall.ENOENT {
			return ImageSpec{}, false, nil
		}
		return ImageSpec{}, false, wrap(err, "get parent", spec, "rbd_get_parent")
	}
	return ImageSpec{
		Pool:      p.Image.PoolName,
		Namespace: p.Image.PoolNamespace,
		Image:     p.Image.ImageName,
		Snapshot:  p.Snap.SnapName,
		Trash:     p.Image.Trash,
	}, true, nil
}
