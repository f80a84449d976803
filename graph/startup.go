// Start-up: opening the driver, loading its records and finishing or
// undoing what a crashed run left half done. Devices an earlier run
// left attached are adopted in recover.go.

package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// New opens the driver: it makes sure the base image exists, cleans
// layers a crash left half made or half removed, and adopts devices and
// mounts an earlier run left behind.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if err := cfg.Options.Validate(); err != nil {
		return nil, err
	}
	if cfg.Store == nil || cfg.Attacher == nil {
		return nil, errors.New("graph.New: Store and Attacher are required")
	}
	if cfg.Home == "" || !filepath.IsAbs(cfg.Home) {
		return nil, fmt.Errorf("graph.New: home %q must be an absolute path", cfg.Home)
	}
	fs := cfg.Filesystem
	if fs == nil {
		var err error
		fs, err = NewFilesystem(FilesystemConfig{Type: cfg.Options.FS, MkfsArgs: cfg.Options.MkfsArgs, MountOptions: cfg.Options.MountOptions})
		if err != nil {
			return nil, err
		}
	}
	if cfg.HostID == "" {
		cfg.HostID = HostID()
	}
	prefix := cfg.Options.ImagePrefix
	if prefix == "" {
		prefix = DefaultPrefix(cfg.HostID, cfg.Home)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	d := &Driver{
		opts:     cfg.Options,
		names:    naming{prefix: prefix},
		store:    cfg.Store,
		dels:     cfg.Deletions,
		attacher: cfg.Attacher,
		fs:       fs,
		log:      log.With("prefix", prefix),
		obs:      cfg.Observer,
		home:     filepath.Clean(cfg.Home),
		root:     cfg.Root,
		owner:    owner(cfg.HostID, cfg.Home),
		ident:    identity(cfg.HostID, cfg.Home),
		layers:   make(map[string]*layer),
		byImage:  make(map[string]*layer),
		crash:    cfg.CrashHook,
		block:    cfg.BlockDevices,
	}
	if d.delsOwn = d.dels != nil; !d.delsOwn {
		d.dels = d.store
	}
	if d.crash == nil {
		d.crash = CrashAtFromEnv()
	}
	d.opts.ImagePrefix = prefix
	d.mnt = filepath.Join(d.home, "mnt")
	// 0701: with userns-remap the remapped root must traverse these
	// directories to reach a layer's rootfs, but need not list them.
	for _, dir := range []string{d.home, d.mnt} {
		if err := os.MkdirAll(dir, 0o701); err != nil {
			return nil, err
		}
		if err := os.Chmod(dir, 0o701); err != nil {
			return nil, err
		}
	}
	if err := d.load(ctx); err != nil {
		return nil, err
	}
	// Before touching any device: is this prefix ours?
	if err := d.checkOwner(ctx); err != nil {
		return nil, err
	}
	if err := d.recoverDevices(ctx); err != nil {
		return nil, err
	}
	// From here on a full pool is named in the log (making the base
	// image waits on one).
	if rep, ok := d.store.(SpaceReporter); ok {
		d.space = startSpaceWatch(rep, d.log, rep.AbortOnFull(), cfg.SpaceCheckInterval)
	}
	if err := d.ensureBase(ctx); err != nil {
		if d.space != nil {
			d.space.stop()
		}
		return nil, errors.Join(err, d.releaseAll(ctx))
	}
	d.cleanUnfinished(ctx)
	d.reap = startReaper(d)
	d.flat = startFlattener(d)
	if d.obs != nil {
		d.obs.FlattensPendingFrom(d.flat.pending)
	}
	d.mu.Lock()
	for _, l := range d.layers {
		if d.depthLocked(l) > d.opts.MaxCloneDepth {
			d.flat.enqueue(l.id) // a flatten the last run did not finish
		}
	}
	n := len(d.layers)
	d.mu.Unlock()
	d.log.Info("driver ready", "home", d.home, "layers", n, "base", d.base.image)
	return d, nil
}

// load reads every image of this prefix into the tables.
func (d *Driver) load(ctx context.Context) error {
	names, err := d.store.ListImages(ctx, d.names.prefix)
	if err != nil {
		return fmt.Errorf("list images with prefix %q: %w", d.names.prefix, err)
	}
	for _, image := range names {
		id, isLayer := d.names.layerID(image)
		if !isLayer && !d.names.isBase(image) {
			d.log.Debug("ignoring image that is not ours", "image", image)
			continue
		}
		info, err := d.store.StatImage(ctx, image)
		if errors.Is(err, ErrImageNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return fmt.Errorf("stat image %s: %w", image, err)
		}
		rec, labelled, err := d.names.parseRecord(image, info.Parent.Image, info.Metadata)
		if err != nil {
			// Not ours to judge: leave it alone rather than clean it.
			d.log.Warn("ignoring an image whose record cannot be read", "image", image, "err", err)
			continue
		}
		if !labelled {
			// Cloned, never given its own record (see State); any
			// record it carries is its parent's.
			rec = record{State: StateCreating}
		}
		l := &layer{
			id:       id,
			image:    image,
			parentID: rec.Parent,
			state:    rec.State,
			size:     info.Size,
			cloneOf:  info.Parent,
			snapshot: slices.Contains(info.Snapshots, snapName),
		}
		if isLayer {
			d.layers[id] = l
		}
		d.byImage[image] = l
	}
	return nil
}

// checkOwner refuses a prefix whose base images another host made.
func (d *Driver) checkOwner(ctx context.Context) error {
	for image, b := range d.byImage {
		if b.id != "" {
			continue
		}
		info, err := d.store.StatImage(ctx, image)
		if errors.Is(err, ErrImageNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("base image %s: %w", image, err)
		}
		rec, _, err := d.names.parseRecord(image, info.Parent.Image, info.Metadata)
		if err != nil {
			return fmt.Errorf("base image %s: %w", image, err)
		}
		if rec.Owner != "" && rec.Owner != d.owner {
			fix, _ := json.Marshal(record{State: rec.State, Image: image, Owner: d.owner})
			return fmt.Errorf("%w: base image %s belongs to %q (this driver is %q, host:home): give each driver its own rbd.imageprefix, or, if that one is gone for good, take the prefix over with `rbd image-meta set %s %s '%s'`",
				ErrOwnedElsewhere, d.qualify(image), rec.Owner, d.owner, d.qualify(image), metaRecord, fix)
		}
	}
	return nil
}

// ensureBase makes sure the base image for d.root exists and is ready:
// created, formatted, given a rootfs directory, snapshotted.
func (d *Driver) ensureBase(ctx context.Context) error {
	name := d.names.baseImage(d.root)
	b := d.byImage[name]
	if b != nil {
		if b.state == StateReady && b.snapshot {
			d.base = b
			return nil
		}
		// A crash while formatting: start again.
		d.log.Warn("base image was not finished; making it again", "image", name, "state", b.state)
		if err := d.removeImages(ctx, b); err != nil {
			return fmt.Errorf("remove unfinished base image %s: %w", name, err)
		}
		delete(d.byImage, name)
	}
	b = &layer{image: name, size: d.opts.BaseSize}
	if err := d.makeBase(ctx, b); err != nil {
		return fmt.Errorf("make base image %s: %w", d.qualify(name), err)
	}
	d.byImage[name] = b
	d.base = b
	return nil
}

func (d *Driver) makeBase(ctx context.Context, b *layer) (err error) {
	var undo undoStack
	defer undo.onError(&err)

	d.log.Info("creating base image", "image", b.image, "size", b.size, "fs", d.fs.Type())
	if err := d.store.CreateImage(ctx, b.image, b.size); err != nil {
		return err
	}
	undo.push(func() error { return d.removeImages(context.WithoutCancel(ctx), b) })
	if err := d.transition(ctx, b, StateCreating); err != nil {
		return err
	}
	dev, err := d.attacher.Attach(ctx, AttachRequest{Owner: d.ident, Image: b.image})
	if err != nil {
		return err
	}
	detached := false
	defer func() {
		if !detached {
			err = errors.Join(err, dev.Detach(context.WithoutCancel(ctx)))
		}
	}()
	if err := d.fs.Format(ctx, dev.Path()); err != nil {
		return err
	}
	dir := filepath.Join(d.mnt, ".format-"+b.image)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := d.fs.Mount(ctx, dev.Path(), dir, false); err != nil {
		return err
	}
	rootfs := filepath.Join(dir, rootfsDir)
	if d.block {
		rootfs = dir // the content is the filesystem's root
	} else {
		err = os.Mkdir(rootfs, 0o755)
	}
	if err == nil {
		err = os.Chmod(rootfs, 0o755) // despite the umask
	}
	if err == nil {
		err = os.Lchown(rootfs, d.root.UID, d.root.GID)
	}
	if uerr := d.fs.Unmount(ctx, dir); uerr != nil {
		return errors.Join(err, uerr)
	}
	if err != nil {
		return err
	}
	detached = true
	if err := dev.Detach(ctx); err != nil {
		return err
	}
	if err := d.store.CreateSnapshot(ctx, b.image, snapName); err != nil {
		return err
	}
	b.snapshot = true
	return d.transition(ctx, b, StateReady)
}

// cleanUnfinished removes the layers an earlier run left creating or
// removing, children first. Failures are logged, not fatal: such layers
// are invisible to dockerd either way, and the next start tries again.
func (d *Driver) cleanUnfinished(ctx context.Context) {
	var todo []*layer
	for _, l := range d.layers {
		if l.state != StateReady {
			todo = append(todo, l)
		}
	}
	sort.Slice(todo, func(i, j int) bool { return d.depthLocked(todo[i]) > d.depthLocked(todo[j]) })
	for _, l := range todo {
		d.log.Warn("removing a layer an earlier run did not finish", "layer", l.id, "state", l.state)
		if err := d.removeLayer(ctx, l, true); err != nil {
			d.log.Error("could not remove unfinished layer; will retry at next start", "layer", l.id, "err", err)
		}
	}
}
