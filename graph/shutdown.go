// Shutdown: Close detaches everything (dockerd's Cleanup); Release
// hands the devices over to the next process (a restart or upgrade).

package graph

import (
	"context"
	"errors"
	"fmt"
)

// Close (dockerd's Cleanup) stops background work and unmounts and
// detaches every layer. It leaves no mount, device or open image behind,
// or says which it could not release. Removed layers still being
// deleted are finished for up to reapDrainTimeout (less if ctx ends
// first); the rest are left to the next start.
func (d *Driver) Close(ctx context.Context) error {
	if !d.stop(ctx, true) {
		return nil
	}
	return d.releaseAll(ctx)
}

// stop marks the driver closed and stops background work; with drain
// the reaper has until ctx ends to finish its queue, else only the
// deletion it is doing. False if the driver already was closed.
func (d *Driver) stop(ctx context.Context, drain bool) bool {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return false
	}
	d.closed = true
	d.mu.Unlock()
	if d.reap != nil {
		// dockerd's Cleanup comes with no deadline: a paused cluster
		// must not hold it for ever.
		ctx, cancel := context.WithTimeout(ctx, reapDrainTimeout)
		defer cancel()
		if drain {
			if err := d.reap.wait(ctx); err != nil {
				d.log.Info("stopping with removed layers not deleted yet; the next start deletes them", "layers", d.reap.pending(), "err", err)
			}
		}
		d.reap.stop(ctx)
	}
	if d.flat != nil {
		d.flat.stop()
	}
	if d.space != nil {
		d.space.stop()
	}
	return true
}

// Release is for a restart or an upgrade of the driver: it stops
// background work and stops serving every layer, leaving mounts and
// devices in place for the next Driver on the same home to adopt
// (recoverDevices), so containers keep running through it. ctx bounds
// the wait for requests in flight.
func (d *Driver) Release(ctx context.Context) error {
	if !d.stop(ctx, false) {
		return nil
	}
	var errs []error
	for _, l := range d.mountedLayers() {
		unlock := d.locks.Lock(l.id)
		if m := l.mount; m != nil {
			if err := m.dev.Release(ctx); err != nil {
				errs = append(errs, fmt.Errorf("layer %s: release %s: %w", l.id, m.dev.Path(), err))
			} else {
				d.log.Info("layer left mounted for the next driver process", "layer", l.id, "device", m.dev.Path())
			}
			d.setField(func() { l.mount = nil })
		}
		unlock()
	}
	return errors.Join(errs...)
}

// mountedLayers are the layers mounted now.
func (d *Driver) mountedLayers() []*layer {
	d.mu.Lock()
	defer d.mu.Unlock()
	var mounted []*layer
	for _, l := range d.layers {
		if l.mount != nil {
			mounted = append(mounted, l)
		}
	}
	return mounted
}

func (d *Driver) releaseAll(ctx context.Context) error {
	var errs []error
	for _, l := range d.mountedLayers() {
		unlock := d.locks.Lock(l.id)
		if m := l.mount; m != nil {
			if err := d.unmountAndDetach(ctx, l, m); err != nil {
				errs = append(errs, fmt.Errorf("layer %s: %w", l.id, err))
			}
		}
		unlock()
	}
	return errors.Join(errs...)
}

func (d *Driver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}
