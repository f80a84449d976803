package graph

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/moby/sys/mountinfo"
)

// recoverDevices deals with what an earlier run of the driver left in the
// kernel: devices still attached (the process died, the kernel kept them
// for nbd.deadconntimeout) and mounts under the home directory.
//
// A ready layer whose device is still mounted on its mount point is
// adopted: the device is served again and the layer counts one
// reference, as moby's RefCounter does for a mount it finds (the next
// Put unmounts it). Everything else is released: mounts are detached
// lazily (their device may be gone, so a plain unmount could wait on IO
// forever) and devices are detached.
func (d *Driver) recoverDevices(ctx context.Context) error {
	stale, err := d.attacher.Stale(ctx)
	if err != nil {
		return fmt.Errorf("list devices left attached: %w", err)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(d.home))
	if err != nil {
		return fmt.Errorf("read mounts under %s: %w", d.home, err)
	}
	bySource := make(map[string]*mountinfo.Info)
	for _, m := range mounts {
		bySource[m.Source] = m
	}
	adopted := make(map[string]bool) // mount points in use again
	idle, err := takeIdleFile(d.idleFile())
	if err != nil {
		// A list that stays could be read again after a later crash,
		// when those layers may be in use: honour it only once gone.
		d.log.Warn("could not take the idle layers of the last run; counting them in use", "err", err)
		idle = nil
	}

	var errs []error
	for _, s := range stale {
		req := s.Request()
		if !d.isOurs(req) {
			continue // another driver's on this host
		}
		if s.Served() {
			// A live process serves it: not left by a dead run of ours
			// (a second instance on this home?). Never pull a device
			// out from under its server.
			d.log.Warn("a device of ours is served by another live process; leaving it", "device", s.Path(), "image", req.Image)
			if m := bySource[s.Path()]; m != nil {
				// And its mount: that process's container runs on it.
				adopted[m.Mountpoint] = true
			}
			continue
		}
		l := d.byImage[req.Image]
		m := bySource[s.Path()]
		canAdopt := l != nil && l.id != "" && l.state == StateReady &&
			(m != nil && m.Mountpoint == filepath.Join(d.mnt, l.id) ||
				// A front end that mounts devices itself mounts them
				// elsewhere (or not yet): every device of a ready
				// layer is adopted, attached only.
				d.block && m == nil) &&
			(req.Snapshot == "" || req.Snapshot == snapName && l.snapshot)
		if canAdopt {
			dev, err := s.Adopt(ctx)
			if err == nil {
				dir, what := "", "adopted a layer still attached from an earlier run"
				if m != nil {
					dir, what = m.Mountpoint, "adopted a layer still mounted from an earlier run"
					adopted[m.Mountpoint] = true
				}
				l.mount = &mount{dev: dev, dir: dir, readOnly: req.ReadOnly || req.Snapshot != "", refs: 1}
				d.log.Info(what, "layer", l.id, "device", dev.Path(), "mountpoint", dir, "idle", idle[l.id] && dir != "")
				if idle[l.id] && dir != "" {
					d.mu.Lock()
					d.armIdle(l, l.mount) // the delay counts from now
					d.mu.Unlock()
				}
				continue
			}
			d.log.Warn("could not serve a device left attached again; releasing it", "device", s.Path(), "image", req.Image, "err", err)
		}
		if m != nil {
			if err := d.fs.Abandon(m.Mountpoint); err != nil {
				errs = append(errs, err)
			}
			adopted[m.Mountpoint] = true // handled
		}
		d.log.Warn("detaching a device left attached by an earlier run", "device", s.Path(), "image", req.Ref())
		if err := s.Detach(ctx); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", s.Path(), err))
		}
	}
	// Mounts whose device is not one of ours any more (it was detached
	// or timed out): nothing can be served through them.
	for _, m := range mounts {
		if adopted[m.Mountpoint] || m.Mountpoint == d.home {
			continue
		}
		d.log.Warn("unmounting a mount left by an earlier run", "mountpoint", m.Mountpoint, "source", m.Source)
		if err := d.fs.Abandon(m.Mountpoint); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// isOurs tells this driver's devices from other drivers' on the host:
// by the owner recorded with the device, or, for devices recorded
// without one (an older version), by the image being one of this
// driver's (a prefix match is not enough: rbd.imageprefix=d- is a
// prefix of another driver's d-b-).
func (d *Driver) isOurs(req AttachRequest) bool {
	if req.Owner != "" {
		return req.Owner == d.ident
	}
	return d.byImage[req.Image] != nil || d.names.isBase(req.Image)
}
