// Get and Put: attaching and mounting layers, counted by reference.

package graph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Get attaches and mounts layer id (once; later calls count references)
// and returns the directory holding its content. A layer that has child
// layers is attached read-only from its snapshot, which is what the
// children were cloned from.
func (d *Driver) Get(ctx context.Context, id string) (string, error) {
	if err := ValidateID(id); err != nil {
		return "", err
	}
	defer d.locks.Lock(id)()
	if d.isClosed() {
		return "", ErrClosed
	}
	l := d.lookup(id)
	if l == nil {
		return "", fmt.Errorf("%w: %s", ErrLayerNotFound, id)
	}
	if m := l.mount; m != nil {
		if m.dir == "" {
			return "", fmt.Errorf("get layer %s: %w", id, ErrAttached)
		}
		d.setField(func() { m.refs++ })
		return filepath.Join(m.dir, rootfsDir), nil
	}
	m, err := d.attachAndMount(ctx, l, l.snapshot)
	if err != nil {
		return "", fmt.Errorf("get layer %s: %w", id, err)
	}
	rootfs := filepath.Join(m.dir, rootfsDir)
	if _, err := os.Lstat(rootfs); err != nil {
		err = fmt.Errorf("get layer %s: its filesystem has no %s directory: %w", id, rootfsDir, err)
		return "", errors.Join(err, d.unmountAndDetach(ctx, l, m))
	}
	return rootfs, nil
}

// attachAndMount attaches l and mounts it on its mount point, with one
// reference; on failure it undoes what it did.
func (d *Driver) attachAndMount(ctx context.Context, l *layer, readOnly bool) (m *mount, err error) {
	defer d.observe(OpMount, time.Now(), &err)
	var undo undoStack
	defer undo.onError(&err)

	ph := newPhases()
	req := AttachRequest{Owner: d.ident, Image: l.image, ReadOnly: readOnly}
	if readOnly && l.snapshot {
		req.Snapshot = snapName
	}
	dev, err := d.attacher.Attach(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", req.Ref(), err)
	}
	ph.done("attach")
	undo.push(func() error { return dev.Detach(context.WithoutCancel(ctx)) })
	dir := filepath.Join(d.mnt, l.id)
	if err := os.Mkdir(dir, 0o701); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	if err := d.fs.Mount(ctx, dev.Path(), dir, readOnly); err != nil {
		return nil, err
	}
	ph.done("mount")
	d.log.Debug("layer mounted", append([]any{"layer", l.id, "device", dev.Path(), "read_only", readOnly}, ph.attrs...)...)
	m = &mount{dev: dev, dir: dir, readOnly: readOnly, refs: 1}
	d.setField(func() { l.mount = m })
	return m, nil
}

// Put drops a reference taken by Get; the last one unmounts and detaches
// the layer. Put of a layer that is not mounted succeeds (dockerd may
// call it again after an error).
func (d *Driver) Put(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	defer d.locks.Lock(id)()
	d.mu.Lock()
	l := d.layers[id]
	d.mu.Unlock()
	if l == nil {
		return fmt.Errorf("%w: %s", ErrLayerNotFound, id)
	}
	m := l.mount
	if m == nil || m.dir == "" { // "": attached by AttachDevice, not Get
		d.log.Debug("put of a layer that is not mounted", "layer", id)
		return nil
	}
	if m.refs > 1 {
		d.setField(func() { m.refs-- })
		return nil
	}
	if err := d.unmountAndDetach(ctx, l, m); err != nil {
		return fmt.Errorf("put layer %s: %w", id, err)
	}
	return nil
}

// unmountAndDetach releases m. If the unmount fails the layer stays
// mounted (with no references), so a later Put, Remove or Close retries.
func (d *Driver) unmountAndDetach(ctx context.Context, l *layer, m *mount) (err error) {
	defer d.observe(OpUnmount, time.Now(), &err)
	ph := newPhases()
	if m.dir != "" { // "": attached only (AttachDevice)
		if err := d.fs.Unmount(ctx, m.dir); err != nil {
			d.setField(func() { m.refs = 0 })
			return err
		}
		ph.done("unmount")
	}
	d.setField(func() { l.mount = nil })
	if err := m.dev.Detach(ctx); err != nil {
		return fmt.Errorf("detach %s: %w", m.dev.Path(), err)
	}
	ph.done("detach")
	d.log.Debug("layer released", append([]any{"layer", l.id, "device", m.dev.Path()}, ph.attrs...)...)
	return nil
}
