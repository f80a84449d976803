// Shutdown: Close detaches everything (dockerd's Cleanup); Release
// hands the devices over to the next process (a restart or upgrade).

package graph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	err := d.releaseAll(ctx)
	d.idle.Wait() // a delayed unmount that had started (bounded by idleReleaseTimeout)
	return err
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
	var idle []string
	for _, l := range d.mountedLayers() {
		unlock := d.locks.Lock(l.id)
		if m := l.mount; m != nil {
			// An idle mount (keepIdle) is handed over as it is: its
			// unmount writes to the cluster, which may be what hangs.
			// The next process arms its delay again (idleFile).
			if m.dir != "" && m.refs == 0 {
				d.setField(func() { d.stopIdle(m) })
				idle = append(idle, l.id)
			}
			if err := m.dev.Release(ctx); err != nil {
				errs = append(errs, fmt.Errorf("layer %s: release %s: %w", l.id, m.dev.Path(), err))
			} else {
				d.log.Info("layer left mounted for the next driver process", "layer", l.id, "device", m.dev.Path())
			}
			d.setField(func() { l.mount = nil })
		}
		unlock()
	}
	d.idle.Wait() // a delayed unmount that had started (bounded by idleReleaseTimeout)
	if err := writeIdleFile(d.idleFile(), idle); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// idleFile lists, one per line, the layers a Release left mounted but
// idle, for the next process to adopt without a reference. It exists
// only between a Release and the next start: after a crash there is
// none, and every mount found counts as in use.
func (d *Driver) idleFile() string { return filepath.Join(d.home, "idle-layers") }

func writeIdleFile(path string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(ids, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("record the idle layers: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("record the idle layers: %w", err)
	}
	return nil
}

// takeIdleFile reads and removes the idle file; none is an empty set.
func takeIdleFile(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	idle := make(map[string]bool)
	for _, id := range strings.Fields(string(b)) {
		idle[id] = true
	}
	return idle, os.Remove(path)
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
