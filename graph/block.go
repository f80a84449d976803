// Block devices for a front end that mounts layers itself: the
// containerd snapshotter hands containerd a device node, a filesystem
// type and options, and containerd mounts them where it wants. Such a
// driver runs with Config.BlockDevices (content at the filesystem's
// root) and uses these calls instead of Get and Put.

package graph

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrAttached: the layer is attached in a way the call cannot use (Get
// of a layer attached by AttachDevice, a mode change, Seal of a layer
// attached read-write).
var ErrAttached = errors.New("layer is attached")

// UsageReporter is an optional ability of an ImageStore: the bytes an
// image occupies in the store (RBD's `rbd du`, a file's allocated
// blocks), for a snapshotter's Usage.
type UsageReporter interface {
	DiskUsage(ctx context.Context, image string) (int64, error)
}

// FSType is the type of the filesystem in every layer ("ext4" or "xfs").
func (d *Driver) FSType() string { return d.fs.Type() }

// MountOptions are the options a front end passes when it mounts a
// layer's device itself: the configured ones (rbd.mountopt) and, for
// xfs, nouuid, since every clone carries its parent's filesystem UUID.
func (d *Driver) MountOptions() []string {
	opts := slices.Clone(d.opts.MountOptions)
	if d.fs.Type() == "xfs" && !slices.Contains(opts, "nouuid") {
		opts = append(opts, "nouuid")
	}
	return opts
}

// AttachDevice attaches layer id without mounting it and returns its
// device node. It is idempotent: a layer already attached in the same
// mode returns the same device (one attachment per layer, whoever asks
// again). A read-only attach of a layer with a snapshot serves the
// snapshot, which is what its children were cloned from.
func (d *Driver) AttachDevice(ctx context.Context, id string, readOnly bool) (_ string, err error) {
	defer d.observe(OpAttach, time.Now(), &err)
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
	if err := d.dropIdle(ctx, l); err != nil {
		return "", fmt.Errorf("attach layer %s: %w", id, err)
	}
	if m := l.mount; m != nil {
		switch {
		case m.dir != "":
			return "", fmt.Errorf("attach layer %s: %w: mounted by Get on %s", id, ErrAttached, m.dir)
		case m.readOnly != readOnly:
			return "", fmt.Errorf("attach layer %s: %w: read-only=%t already", id, ErrAttached, m.readOnly)
		}
		return m.dev.Path(), nil
	}
	req := AttachRequest{Owner: d.ident, Image: l.image, ReadOnly: readOnly}
	if readOnly && l.snapshot {
		req.Snapshot = snapName
	}
	dev, err := d.attacher.Attach(ctx, req)
	if err != nil {
		return "", fmt.Errorf("attach layer %s (%s): %w", id, req.Ref(), err)
	}
	d.setField(func() { l.mount = &mount{dev: dev, readOnly: readOnly, refs: 1} })
	d.log.Debug("layer attached", "layer", id, "device", dev.Path(), "read_only", readOnly)
	return dev.Path(), nil
}

// Device returns the device node of layer id if AttachDevice attached it.
func (d *Driver) Device(id string) (path string, readOnly, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.layers[id]
	if l == nil || l.mount == nil || l.mount.dir != "" {
		return "", false, false
	}
	return l.mount.dev.Path(), l.mount.readOnly, true
}

// DetachDevice detaches a layer attached by AttachDevice; a layer that
// is not attached (or does not exist) is no error, so retries converge.
// Whatever mounted the device must have unmounted it first.
func (d *Driver) DetachDevice(ctx context.Context, id string) (err error) {
	defer d.observe(OpDetach, time.Now(), &err)
	if err := ValidateID(id); err != nil {
		return err
	}
	defer d.locks.Lock(id)()
	d.mu.Lock()
	l := d.layers[id]
	d.mu.Unlock()
	if l == nil || l.mount == nil {
		return nil
	}
	if l.mount.dir != "" {
		return fmt.Errorf("detach layer %s: %w: mounted by Get on %s", id, ErrAttached, l.mount.dir)
	}
	if err := d.unmountAndDetach(ctx, l, l.mount); err != nil {
		return fmt.Errorf("detach layer %s: %w", id, err)
	}
	return nil
}

// Seal makes layer id's snapshot now (and protects it), so its content
// is fixed where children and other hosts can clone it. The layer must
// not be attached read-write: nothing may write while the snapshot is
// taken.
func (d *Driver) Seal(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	defer d.locks.Lock(id)()
	l := d.lookup(id)
	if l == nil {
		return fmt.Errorf("%w: %s", ErrLayerNotFound, id)
	}
	if m := l.mount; m != nil && !m.readOnly {
		return fmt.Errorf("seal layer %s: %w read-write on %s", id, ErrAttached, m.dev.Path())
	}
	return d.ensureSnapshot(ctx, l)
}

// DiskUsage is the bytes layer id's image occupies in the store, when
// the store can tell (UsageReporter); ok is false when it cannot.
func (d *Driver) DiskUsage(ctx context.Context, id string) (n int64, ok bool, err error) {
	u, can := d.store.(UsageReporter)
	if !can {
		return 0, false, nil
	}
	d.mu.Lock()
	l := d.layers[id]
	d.mu.Unlock()
	if l == nil {
		return 0, false, fmt.Errorf("%w: %s", ErrLayerNotFound, id)
	}
	n, err = u.DiskUsage(ctx, l.image)
	return n, err == nil, err
}
