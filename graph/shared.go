// Layers shared between hosts: a front end may publish a finished layer
// under a cluster-wide name (the containerd snapshotter names them by
// chain ID) and make layers from such images. The driver keeps no record
// of published images: they are outside its prefix, and whoever shares
// them counts their users.

package graph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// ImageRenamer is an optional ability of an ImageStore, needed to
// publish layers: RenameImage gives image from the name to, atomically
// and only if to is free (ErrImageExists otherwise, and nothing
// changes). Clones of the image and its snapshots keep working.
type ImageRenamer interface {
	RenameImage(ctx context.Context, from, to string) error
}

// ErrCannotShare: the store cannot rename images, so layers cannot be
// published.
var ErrCannotShare = errors.New("the image store cannot publish layers (no RenameImage)")

// CreateFrom makes layer id as a clone of from, a protected snapshot of
// an image outside the driver (a published layer). The layer has no
// parent layer; from must outlive it (RBD refuses to remove a snapshot
// with clones, so it does).
func (d *Driver) CreateFrom(ctx context.Context, id string, from ImageRef, co CreateOptions) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	if from.Image == "" || from.Snapshot == "" {
		return fmt.Errorf("%w: create layer %s from %q: want image@snapshot", ErrInvalidOption, id, from)
	}
	if from.Snapshot != snapName {
		return fmt.Errorf("%w: create layer %s from %s: published layers have the snapshot %q", ErrInvalidOption, id, from, snapName)
	}
	info, err := d.store.StatImage(ctx, from.Image)
	if err != nil {
		return fmt.Errorf("create layer %s from %s: %w", id, from, err)
	}
	defer d.locks.Lock(id)()
	if err := d.checkNewID(id); err != nil {
		return err
	}
	// A stand-in for the image, never in the tables: create clones its
	// snapshot, which its publisher made and protected.
	p := &layer{image: from.Image, size: info.Size, snapshot: true, snapshotProtected: true}
	return d.create(ctx, id, "", p, co)
}

// Publish gives ready layer id, which must not be attached and must have
// no child layers, the cluster-wide name: its snapshot is made and
// protected first, then the image is renamed in one step, so another host
// never sees a half-made layer under that name. The driver then forgets
// the layer. If the name is taken (another host published the same
// layer first) Publish returns ErrImageExists and the layer is
// unchanged.
func (d *Driver) Publish(ctx context.Context, id, name string) (err error) {
	defer d.observe(OpPublish, time.Now(), &err)
	if err := ValidateID(id); err != nil {
		return err
	}
	r, ok := d.store.(ImageRenamer)
	if !ok {
		return ErrCannotShare
	}
	defer d.locks.Lock(id)()
	l := d.lookup(id)
	if l == nil {
		return fmt.Errorf("%w: %s", ErrLayerNotFound, id)
	}
	if err := d.dropIdle(ctx, l); err != nil {
		return fmt.Errorf("publish layer %s: %w", id, err)
	}
	if l.mount != nil {
		return fmt.Errorf("publish layer %s: %w on %s", id, ErrAttached, l.mount.dev.Path())
	}
	d.mu.Lock()
	var kids []string
	for _, c := range d.layers {
		if c.parentID == id {
			kids = append(kids, c.id)
		}
	}
	d.mu.Unlock()
	if len(kids) > 0 {
		return fmt.Errorf("publish layer %s: %w: %v", id, ErrHasChildren, kids)
	}
	d.cancelFlatten(l)
	if err := d.ensureSnapshot(ctx, l); err != nil {
		return fmt.Errorf("publish layer %s: %w", id, err)
	}
	if err := r.RenameImage(ctx, l.image, name); err != nil {
		return fmt.Errorf("publish layer %s as %s: %w", id, name, err)
	}
	d.forget(l)
	if err := os.Remove(filepath.Join(d.mnt, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("could not remove mount point", "layer", id, "err", err)
	}
	d.log.Info("layer published", "layer", id, "image", name)
	return nil
}

// PublishedSnapshot is the snapshot of a published image that layers
// are cloned from (CreateFrom).
const PublishedSnapshot = snapName
