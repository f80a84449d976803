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
	st, err := c.removalState(ctx, image)
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
	if len(st.children) > 0 {
		return &Error{Op: "remove image", Object: spec, Kind: ErrHasChildren,
			Hint: fmt.Sprintf("clones %s depend on snapshot(s) %v: flatten or remove them first", specList(st.children), st.from)}
	}
	if len(st.snaps) > 0 && !opts.Snapshots {
		names := make([]string, len(st.snaps))
		for i, s := range st.snaps {
			names[i] = s.Name
		}
		return &Error{Op: "remove image", Object: spec, Kind: ErrHasSnapshots,
			Hint: fmt.Sprintf("snapshots %s: remove them first, or pass RemoveOptions{Snapshots: true}", strings.Join(names, ", "))}
	}
	if st.watchers != "" {
		return &Error{Op: "remove image", Object: spec, Func: "rbd_watchers_list", Kind: ErrBusy,
			Hint: "open by " + st.watchers + ": close it (unmap, stop the export) first"}
	}
	for _, s := range st.snaps {
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

// removalState is what RemoveImage looks at before it changes anything.
type removalState struct {
	snaps    []SnapshotInfo
	children []ImageSpec // clones of any of the snapshots
	from     []string    // the snapshots they are clones of
	watchers string      // the clients that have the image open, "" if none or unknown
}

// removalState reads image's snapshots, their clones and the image's
// watchers in one read-only open (rbd_snap_list, rbd_snap_set,
// rbd_list_children3, rbd_watchers_list): every open is several round
// trips, and the driver removes layers all the time.
func (c *Conn) removalState(ctx context.Context, image string) (removalState, error) {
	spec := c.spec(image, "")
	var st removalState
	err := c.withImage(ctx, "remove image", image, "", true, func(img *rbd.Image) error {
		if ws, err := img.ListWatchers(); err == nil {
			desc := make([]string, 0, len(ws))
			for _, w := range ws {
				desc = append(desc, fmt.Sprintf("client.%d at %s", w.Id, w.Addr))
			}
			st.watchers = strings.Join(desc, ", ")
		}
		var err error
		if st.snaps, err = snapshots(img, spec); err != nil {
			return err
		}
		for _, s := range st.snaps {
			if err := img.SetSnapshot(s.Name); err != nil {
				return snapError(err, "remove image", c.spec(image, s.Name), "rbd_snap_set")
			}
			kids, err := children(img, c.spec(image, s.Name))
			if err != nil {
				return err
			}
			if len(kids) > 0 {
				st.from = append(st.from, s.Name)
				st.children = append(st.children, kids...)
			}
		}
		return nil
	})
	return st, err
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
