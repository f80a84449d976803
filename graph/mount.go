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
		d.setField(func() { m.refs++; d.stopIdle(m) })
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
	if d.opts.UnmountDelay > 0 && m.refs == 1 {
		err := d.keepIdle(ctx, l, m)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrClosed) {
			d.log.Warn("could not sync a layer to keep it mounted; unmounting it now", "layer", id, "err", err)
		}
	}
	if err := d.unmountAndDetach(ctx, l, m); err != nil {
		return fmt.Errorf("put layer %s: %w", id, err)
	}
	return nil
}

// keepIdle keeps m mounted with no reference for delay (rbd.unmountdelay)
// instead of unmounting it: dockerd mounts a container's layer when it
// creates the container, again when it starts it and again when it
// commits or exports it, and each mount costs an image open and a device
// (docs/2026-12-06-unmount-delay.md). A writable filesystem is synced
// first, so once Put returns its data is in the cluster, as after an
// unmount. A Get meanwhile takes the mount again; otherwise releaseIdle
// unmounts it when the delay has passed.
func (d *Driver) keepIdle(ctx context.Context, l *layer, m *mount) error {
	if !m.readOnly {
		if err := d.fs.Sync(ctx, m.dir); err != nil {
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.armIdle(l, m)
	d.log.Debug("layer idle; unmounting it later", "layer", l.id, "device", m.dev.Path(), "delay", d.opts.UnmountDelay)
	return nil
}

// armIdle drops m's references and unmounts it after rbd.unmountdelay
// unless a Get takes it first; under d.mu, the driver not closed (or at
// start-up, for a mount a Release left idle).
func (d *Driver) armIdle(l *layer, m *mount) {
	m.refs = 0
	m.idleGen++
	gen := m.idleGen
	d.idle.Add(1)
	m.idle = time.AfterFunc(d.opts.UnmountDelay, func() { d.releaseIdle(l, m, gen) })
}

// releaseIdle unmounts m when the delay of its idle period gen has
// passed, unless it was taken again (maybe idle again since, with a
// delay of its own), released or removed meanwhile.
func (d *Driver) releaseIdle(l *layer, m *mount, gen int) {
	defer d.idle.Done()
	defer d.locks.Lock(l.id)()
	d.mu.Lock() // armIdle's writes are under d.mu; at start-up, only under it
	current := l.mount == m && m.refs == 0 && m.idle != nil && m.idleGen == gen
	d.mu.Unlock()
	if !current {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), idleReleaseTimeout)
	defer cancel()
	if err := d.unmountAndDetach(ctx, l, m); err != nil {
		d.log.Warn("could not unmount an idle layer; the next Get, Remove or Cleanup tries again", "layer", l.id, "err", err)
	}
}

// stopIdle cancels m's delayed unmount, if one is armed; under d.mu.
func (d *Driver) stopIdle(m *mount) {
	if m.idle != nil {
		if m.idle.Stop() {
			d.idle.Done() // else it fired: releaseIdle is Done
		}
		m.idle = nil
	}
}

// idleReleaseTimeout bounds releaseIdle's unmount and detach: a paused
// cluster must not hold a timer's goroutine and the layer's lock for
// ever (the next Get, Remove or Close tries again).
const idleReleaseTimeout = time.Minute

// dropIdle unmounts l if Get mounted it and nothing holds it (an idle
// mount, or one whose unmount failed), for an operation that needs the
// layer free. The caller holds l's lock.
func (d *Driver) dropIdle(ctx context.Context, l *layer) error {
	if m := l.mount; m != nil && m.dir != "" && m.refs == 0 {
		return d.unmountAndDetach(ctx, l, m)
	}
	return nil
}

// unmountAndDetach releases m. If the unmount fails the layer stays
// mounted (with no references), so a later Put, Remove or Close retries.
func (d *Driver) unmountAndDetach(ctx context.Context, l *layer, m *mount) (err error) {
	defer d.observe(OpUnmount, time.Now(), &err)
	d.setField(func() { d.stopIdle(m) })
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
