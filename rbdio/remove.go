package rbdio

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/ceph/go-ceph/rbd"
)

// RemoveOptions modify RemoveImage.
type RemoveOptions struct {
	// Snapshots removes the image's snapshots too (unprotecting them).
	// Without it an image with snapshots is refused with ErrHasSnapshots.
	Snapshots bool
}

// RemoveImage deletes image (rbd_remove). It refuses, before changing
// anything:
//   - with ErrHasChildren, naming them, while clones of any of its
//     snapshots exist: flatten or remove those first;
//   - with ErrHasSnapshots while it has snapshots, unless opts.Snapshots;
//   - with ErrBusy while another client has it open (naming the
//     watchers).
func (c *Conn) RemoveImage(ctx context.Context, image string, opts RemoveOptions) error {
	spec := c.spec(image, "")
	snaps, err := c.Snapshots(ctx, image)
	if errors.Is(err, ErrNotFound) {
		// A removal interrupted half way (the process killed inside
		// rbd_remove) leaves the name listed with its header gone, so
		// it cannot be opened; rbd_remove finishes it. For a name that
		// does not exist at all it answers ENOENT, as before.
		return c.finishRemove(spec, image)
	}
	if err != nil {
		return err
	}
	if err := c.checkChildren(ctx, "remove image", image, snaps); err != nil {
		return err
	}
	if len(snaps) > 0 && !opts.Snapshots {
		names := make([]string, len(snaps))
		for i, s := range snaps {
			names[i] = s.Name
		}
		return &Error{Op: "remove image", Object: spec, Kind: ErrHasSnapshots,
			Hint: fmt.Sprintf("snapshots %s: remove them first, or pass RemoveOptions{Snapshots: true}", strings.Join(names, ", "))}
	}
	if busy := c.watchers(ctx, image); busy != "" {
		return &Error{Op: "remove image", Object: spec, Func: "rbd_watchers_list", Kind: ErrBusy,
			Hint: "open by " + busy + ": close it (unmap, stop the export) first"}
	}
	for _, s := range snaps {
		if s.Protected {
			if err := c.UnprotectSnapshot(ctx, image, s.Name); err != nil {
				return err
			}
		}
		if err := c.RemoveSnapshot(ctx, image, s.Name); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.finishRemove(spec, image)
}

// finishRemove is rbd_remove with its errors explained.
func (c *Conn) finishRemove(spec, image string) error {
	unlock := c.lockImageCtx()
	err := rbd.RemoveImage(c.ioctx, image)
	unlock()
	if err != nil {
		e := wrap(err, "remove image", spec, "rbd_remove")
		switch e.Errno {
		case syscall.ENOENT:
			e.Hint = "no such image (rbd ls)"
		case syscall.EBUSY:
			e.Hint = "another client has it open, or it has clones: close or flatten them first"
		case syscall.ENOTEMPTY:
			e.Kind = ErrHasSnapshots
			e.Hint = "a snapshot was made meanwhile: remove it first"
		}
		return e
	}
	return nil
}

// watchers describes the clients that have image open
// (rbd_watchers_list), "" when none or when it cannot tell.
func (c *Conn) watchers(ctx context.Context, image string) string {
	var desc []string
	_ = c.withImage(ctx, "list watchers", image, "", true, func(img *rbd.Image) error {
		ws, err := img.ListWatchers()
		if err != nil {
			return err
		}
		for _, w := range ws {
			desc = append(desc, fmt.Sprintf("client.%d at %s", w.Id, w.Addr))
		}
		return nil
	})
	return strings.Join(desc, ", ")
}
