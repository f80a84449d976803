package rbdio

import (
	"context"
	"fmt"
	"strings"
	"syscall"

	"github.com/ceph/go-ceph/rbd"
)

// SnapshotInfo describes one snapshot of an image.
type SnapshotInfo struct {
	Name      string
	ID        uint64
	Size      int64 // the image size when the snapshot was taken
	Protected bool
}

// CreateSnapshot makes image@snap (rbd_snap_create). ErrExists if the
// snapshot exists.
func (c *Conn) CreateSnapshot(ctx context.Context, image, snap string) error {
	if err := validName("snapshot", snap); err != nil {
		return err
	}
	return c.withImage(ctx, "create snapshot", image, "", false, func(img *rbd.Image) error {
		if _, err := img.CreateSnapshot(snap); err != nil {
			e := wrap(err, "create snapshot", c.spec(image, snap), "rbd_snap_create")
			if e.Errno == syscall.EEXIST {
				e.Hint = "the snapshot already exists"
			}
			return e
		}
		return nil
	})
}

// ProtectSnapshot protects image@snap so it can be cloned
// (rbd_snap_protect). Protecting a protected snapshot does nothing.
func (c *Conn) ProtectSnapshot(ctx context.Context, image, snap string) error {
	return c.withImage(ctx, "protect snapshot", image, "", false, func(img *rbd.Image) error {
		s := img.GetSnapshot(snap)
		protected, err := s.IsProtected()
		if err != nil {
			return snapError(err, "protect snapshot", c.spec(image, snap), "rbd_snap_is_protected")
		}
		if protected {
			return nil
		}
		if err := s.Protect(); err != nil {
			return snapError(err, "protect snapshot", c.spec(image, snap), "rbd_snap_protect")
		}
		return nil
	})
}

// UnprotectSnapshot lifts the protection of image@snap
// (rbd_snap_unprotect). ErrHasChildren, naming them, while clones of it
// exist. Unprotecting an unprotected snapshot does nothing.
func (c *Conn) UnprotectSnapshot(ctx context.Context, image, snap string) error {
	spec := c.spec(image, snap)
	return c.withImage(ctx, "unprotect snapshot", image, "", false, func(img *rbd.Image) error {
		s := img.GetSnapshot(snap)
		protected, err := s.IsProtected()
		if err != nil {
			return snapError(err, "unprotect snapshot", spec, "rbd_snap_is_protected")
		}
		if !protected {
			return nil
		}
		if err := s.Unprotect(); err != nil {
			e := snapError(err, "unprotect snapshot", spec, "rbd_snap_unprotect")
			if e.Errno == syscall.EBUSY {
				children, _ := c.Children(ctx, image, snap)
				e.Kind = ErrHasChildren
				e.Hint = fmt.Sprintf("clones %s depend on it: flatten or remove them first", specList(children))
			}
			return e
		}
		return nil
	})
}

// RemoveSnapshot deletes image@snap (rbd_snap_remove). ErrProtected if
// it is protected: unprotect it first (which fails while it has clones).
func (c *Conn) RemoveSnapshot(ctx context.Context, image, snap string) error {
	spec := c.spec(image, snap)
	return c.withImage(ctx, "remove snapshot", image, "", false, func(img *rbd.Image) error {
		if err := img.GetSnapshot(snap).Remove(); err != nil {
			e := snapError(err, "remove snapshot", spec, "rbd_snap_remove")
			if e.Errno == syscall.EBUSY {
				e.Kind = ErrProtected
				e.Hint = "unprotect it first (UnprotectSnapshot); that fails while it has clones"
			}
			return e
		}
		return nil
	})
}

// Snapshots lists image's snapshots, oldest first (rbd_snap_list,
// rbd_snap_is_protected).
func (c *Conn) Snapshots(ctx context.Context, image string) ([]SnapshotInfo, error) {
	var out []SnapshotInfo
	err := c.withImage(ctx, "list snapshots", image, "", true, func(img *rbd.Image) error {
		var err error
		out, err = snapshots(img, c.spec(image, ""))
		return err
	})
	return out, err
}

func snapshots(img *rbd.Image, spec string) ([]SnapshotInfo, error) {
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return nil, wrap(err, "list snapshots", spec, "rbd_snap_list")
	}
	out := make([]SnapshotInfo, 0, len(snaps))
	for _, s := range snaps {
		protected, err := img.GetSnapshot(s.Name).IsProtected()
		if err != nil {
			return nil, wrap(err, "list snapshots", spec+"@"+s.Name, "rbd_snap_is_protected")
		}
		out = append(out, SnapshotInfo{Name: s.Name, ID: s.Id, Size: int64(s.Size), Protected: protected})
	}
	return out, nil
}

// snapError wraps a snapshot call's error; ENOENT names the snapshot.
func snapError(err error, op, spec, fn string) *Error {
	e := wrap(err, op, spec, fn)
	if e.Errno == syscall.ENOENT {
		e.Hint = "no such snapshot (rbd snap ls " + strings.SplitN(spec, "@", 2)[0] + ")"
	}
	return e
}

func specList(specs []ImageSpec) string {
	if len(specs) == 0 {
		return "(unknown)"
	}
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.String()
	}
	return strings.Join(names, ", ")
}
