// Creating and removing layers: each step is durable and undone on
// error, so a crash between steps leaves something start-up can finish.

package graph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	units "github.com/docker/go-units"
)

// Create makes layer id as a clone of parent ("" for the base image).
func (d *Driver) Create(ctx context.Context, id, parent string, co CreateOptions) (err error) {
	if err := ValidateID(id); err != nil {
		return err
	}
	if parent != "" {
		if err := ValidateID(parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
		if parent == id {
			return fmt.Errorf("%w %q: a layer cannot be its own parent", ErrInvalidID, id)
		}
	}
	defer d.locks.Lock(id)()
	if err := d.checkNewID(id); err != nil {
		return err
	}

	p := d.base
	if parent != "" {
		defer d.locks.Lock(parent)()
		p = d.lookup(parent)
		if p == nil {
			return fmt.Errorf("parent of %s: %w: %s", id, ErrLayerNotFound, parent)
		}
	}
	return d.create(ctx, id, parent, p, co)
}

// create makes layer id as a clone of p's snapshot (making it if p has
// none yet); parent is p's layer ID ("" for a base image or an image
// outside the driver). The caller holds id's lock and p's.
func (d *Driver) create(ctx context.Context, id, parent string, p *layer, co CreateOptions) (err error) {
	defer d.observe(OpCreate, time.Now(), &err)
	size := p.size
	if co.Size > 0 && co.Size < p.size {
		return fmt.Errorf("%w: size=%s is smaller than the parent layer (%s); filesystems only grow",
			ErrInvalidOption, units.BytesSize(float64(co.Size)), units.BytesSize(float64(p.size)))
	}
	size = max(size, co.Size)
	if p == d.base {
		size = max(size, d.opts.BaseSize) // rbd.basesize raised since the base was made
	}

	ph := newPhases()
	if err := d.ensureSnapshot(ctx, p); err != nil {
		return err
	}
	ph.done("snapshot_parent")
	d.step(StepCreateSnapshotParent)
	l := &layer{id: id, image: d.names.layerImage(id), parentID: parent, size: p.size,
		cloneOf: ImageRef{Image: p.image, Snapshot: snapName}, state: StateCreating}

	// A layer of this ID removed a moment ago may still be deleting the
	// image name the new one needs.
	if err := d.reap.waitImage(ctx, l.image); err != nil {
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	var undo undoStack
	defer undo.onError(&err)
	if err := d.store.CloneImage(ctx, p.image, snapName, l.image); err != nil {
		return fmt.Errorf("create layer %s: clone %s@%s: %w", id, p.image, snapName, err)
	}
	undo.push(func() error { return d.store.RemoveImage(context.WithoutCancel(ctx), l.image) })
	ph.done("clone")
	d.step(StepCreateClone)
	d.mu.Lock()
	d.layers[id] = l
	d.byImage[l.image] = l
	d.mu.Unlock()
	undo.push(func() error { d.forget(l); return nil })

	// The layer is creating (durably: its image has no state key yet)
	// until the transition to ready below.
	if size > l.size {
		if err := d.grow(ctx, l, size); err != nil {
			return fmt.Errorf("create layer %s: grow to %d bytes: %w", id, size, err)
		}
		ph.done("grow")
		d.step(StepCreateGrow)
	}
	flattenLater := false
	if d.depth(l) > d.opts.MaxCloneDepth {
		if d.opts.Flatten == FlattenOnCreate {
			if err := d.store.FlattenImage(ctx, l.image); err != nil {
				return fmt.Errorf("create layer %s: flatten: %w", id, err)
			}
			d.setField(func() { l.cloneOf = ImageRef{} })
			ph.done("flatten")
			d.step(StepCreateFlatten)
		} else {
			flattenLater = true
		}
	}
	if err := d.transition(ctx, l, StateReady); err != nil {
		return err
	}
	ph.done("state_ready")
	d.step(StepCreateReady)
	if flattenLater {
		d.flat.enqueue(id)
	}
	d.log.Debug("layer created", append([]any{"layer", id, "parent", parent, "image", l.image, "depth", d.depth(l)}, ph.attrs...)...)
	return nil
}

// ensureSnapshot gives p its snapshot when it gets its first child. A
// layer that is mounted read-write is frozen meanwhile so the snapshot
// holds a clean filesystem.
func (d *Driver) ensureSnapshot(ctx context.Context, p *layer) (err error) {
	if p.snapshot && p.snapshotProtected {
		return nil
	}
	defer d.observe(OpSnapshot, time.Now(), &err)
	// An idle mount (keepIdle) goes rather than being frozen: a process
	// that dies with a filesystem frozen leaves it frozen, and the
	// layer is mounted from its snapshot from now on anyway.
	if err := d.dropIdle(ctx, p); err != nil {
		return fmt.Errorf("snapshot layer %s: %w", p.name(), err)
	}
	// An existing snapshot (found at start-up) only needs protecting;
	// CreateSnapshot does that. A new one of a writable layer needs a
	// frozen filesystem.
	if m := p.mount; m != nil && !m.readOnly && !p.snapshot {
		thaw, err := d.fs.Freeze(ctx, m.dir)
		if err != nil {
			return fmt.Errorf("snapshot layer %s: %w", p.name(), err)
		}
		defer func() { err = errors.Join(err, thaw()) }()
	}
	if err := d.store.CreateSnapshot(ctx, p.image, snapName); err != nil {
		return fmt.Errorf("snapshot layer %s: %w", p.name(), err)
	}
	d.setField(func() { p.snapshot, p.snapshotProtected = true, true })
	return nil
}

// grow resizes l's image and then its filesystem.
func (d *Driver) grow(ctx context.Context, l *layer, size int64) (err error) {
	if err := d.store.ResizeImage(ctx, l.image, size); err != nil {
		return err
	}
	d.setField(func() { l.size = size })
	dev, err := d.attacher.Attach(ctx, AttachRequest{Owner: d.ident, Image: l.image})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, dev.Detach(context.WithoutCancel(ctx))) }()
	dir := filepath.Join(d.mnt, l.id)
	if err := os.Mkdir(dir, 0o701); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return d.fs.Grow(ctx, dev.Path(), dir)
}

// Remove deletes layer id. Removing an ID that does not exist succeeds,
// so a retry after a partial failure converges.
func (d *Driver) Remove(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	defer d.locks.Lock(id)()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	l := d.layers[id]
	d.mu.Unlock()
	if l == nil {
		return nil
	}
	return d.removeLayer(ctx, l, false)
}

// removeLayer releases and deletes l; the caller holds l's lock (or is
// start-up, atStart, which deletes at once). Otherwise, once l's record
// durably says removing and l is out of the tables, the reaper deletes
// its snapshot and image in the background (reap.go).
func (d *Driver) removeLayer(ctx context.Context, l *layer, atStart bool) (err error) {
	defer d.observe(OpRemove, time.Now(), &err)
	ph := newPhases()
	d.cancelFlatten(l)
	if m := l.mount; m != nil {
		if m.refs > 0 || m.dir == "" { // not just idle (keepIdle)
			d.log.Warn("removing a layer that is still mounted; unmounting it", "layer", l.id, "refs", m.refs)
		}
		if err := d.unmountAndDetach(ctx, l, m); err != nil {
			return fmt.Errorf("remove layer %s: %w", l.id, err)
		}
	}
	if atStart {
		// The snapshot goes first: while children depend on it this
		// fails and nothing has changed.
		if l.snapshot {
			if err := d.removeSnapshot(ctx, l); err != nil {
				return fmt.Errorf("remove layer %s: %w", l.id, err)
			}
			ph.done("remove_snapshot")
			d.step(StepRemoveSnapshot)
		}
	} else if kids := d.children(l); len(kids) > 0 {
		// Refused before anything changes. Clones of l are layers of
		// this driver (a published layer, whose clones live on other
		// hosts, has left the tables), and removed ones are out of
		// the tables, queued ahead of l.
		return fmt.Errorf("remove layer %s: %w: %s", l.id, ErrHasChildren, strings.Join(kids, ", "))
	}
	if l.state != StateRemoving {
		if err := d.transition(ctx, l, StateRemoving); err != nil {
			if !atStart || !errors.Is(err, ErrImageNotFound) {
				return fmt.Errorf("remove layer %s: %w", l.id, err)
			}
		}
		ph.done("state_removing")
		d.step(StepRemoveStateRemoving)
	}
	if !atStart {
		d.forget(l)
		d.reap.enqueue(l)
		d.log.Debug("layer removed; deleting its images in the background", append([]any{"layer", l.id}, ph.attrs...)...)
		return nil
	}
	if err := d.deleteLayerImages(ctx, l); err != nil {
		return err
	}
	d.forget(l)
	d.log.Debug("layer removed", append([]any{"layer", l.id}, ph.attrs...)...)
	return nil
}

// children are the IDs of the layers in the tables cloned from l's
// snapshot.
func (d *Driver) children(l *layer) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var kids []string
	for _, k := range d.layers {
		if k != l && k.cloneOf.Image == l.image {
			kids = append(kids, k.id)
		}
	}
	sort.Strings(kids)
	return kids
}

// removeImages deletes l's snapshot, if it has one, and image; missing
// ones are fine.
func (d *Driver) removeImages(ctx context.Context, l *layer) error {
	if l.snapshot {
		if err := d.removeSnapshot(ctx, l); err != nil {
			return err
		}
	}
	if err := d.dels.RemoveImage(ctx, l.image); err != nil && !errors.Is(err, ErrImageNotFound) {
		return err
	}
	return nil
}

// removeSnapshot deletes l's snapshot; ErrHasChildren, naming them, while
// layers are cloned from it.
func (d *Driver) removeSnapshot(ctx context.Context, l *layer) error {
	err := d.dels.RemoveSnapshot(ctx, l.image, snapName)
	switch {
	case errors.Is(err, ErrImageBusy):
		kids, _ := d.dels.Children(ctx, l.image, snapName)
		return fmt.Errorf("%w: %s: %w", ErrHasChildren, strings.Join(d.describeImages(kids), ", "), err)
	case err != nil && !errors.Is(err, ErrImageNotFound):
		return err
	}
	d.setField(func() { l.snapshot, l.snapshotProtected = false, false })
	return nil
}

func (d *Driver) forget(l *layer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l.id != "" && d.layers[l.id] == l {
		delete(d.layers, l.id)
	}
	if d.byImage[l.image] == l {
		delete(d.byImage, l.image)
	}
}

// describeImages turns child image names into layer IDs for messages.
func (d *Driver) describeImages(images []string) []string {
	out := make([]string, 0, len(images))
	for _, im := range images {
		if id, ok := d.names.layerID(im); ok {
			out = append(out, id)
		} else {
			out = append(out, "image "+im)
		}
	}
	return out
}

// checkNewID refuses a new layer id when the driver is closed or the id
// is taken. The caller holds id's lock, so the answer stays true until
// it records the layer.
func (d *Driver) checkNewID(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if _, ok := d.layers[id]; ok {
		return fmt.Errorf("%w: %s", ErrLayerExists, id)
	}
	return nil
}
