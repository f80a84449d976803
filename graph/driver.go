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
	"strconv"
	"strings"
	"sync"
	"time"

	units "github.com/docker/go-units"
)

// Config is what New needs.
type Config struct {
	// Home is the driver's local directory (dockerd passes
	// <data-root>/<driver name>); mount points live below it.
	Home     string
	Options  Options
	Store    ImageStore
	Attacher Attacher
	// Filesystem formats and mounts layers; nil means
	// NewFilesystem for Options.FS, MkfsArgs and MountOptions.
	Filesystem Filesystem
	// Root owns every layer's root directory: the remapped root
	// (dockerd --userns-remap), or 0:0.
	Root Identity
	// HostID identifies this host (default HostID()). With Home it
	// derives the default image prefix and is recorded as the owner of
	// the prefix.
	HostID string
	Logger *slog.Logger
	// CrashHook, for tests, is called after every durable step of
	// Create, Remove and flattening (crash.go); nil means
	// CrashAtFromEnv().
	CrashHook CrashHook
}

// Driver keeps layers as images: the base image is formatted once, every
// layer is a clone of its parent's snapshot, and Get attaches and mounts
// a layer while Put releases it on the last reference.
//
// Locking: each layer has a lock (locks, by layer ID) held for the whole
// of an operation on it; Create holds the new layer's lock, then its
// parent's. d.mu guards the tables and the fields of every layer; fields
// change only while both the layer lock and d.mu are held, so code that
// holds a layer lock may read that layer's fields without d.mu.
type Driver struct {
	opts     Options
	names    naming
	store    ImageStore
	attacher Attacher
	fs       Filesystem
	log      *slog.Logger
	home     string
	mnt      string
	root     Identity
	owner    string // recorded on base images: this host and home
	ident    string // Identity: recorded with every device this driver attaches
	crash    CrashHook

	locks keyLocker

	mu      sync.Mutex
	layers  map[string]*layer // ready, creating and removing layers by ID
	byImage map[string]*layer // the same and the base images, by image name
	base    *layer
	closed  bool

	flat *flattener
}

// layer is one layer (or, with id "", a base image).
type layer struct {
	id       string
	image    string
	parentID string
	state    State
	size     int64
	// cloneOf is the snapshot the image is a clone of; zero when it is
	// not a clone (a base image) or it was flattened.
	cloneOf ImageRef
	// snapshot: image@snapName exists (the layer has had children), so
	// the layer is attached read-only from the snapshot.
	snapshot bool
	// snapshotProtected: this run made or protected the snapshot, so it
	// can be cloned. A snapshot found at start-up may be a crash's
	// unprotected one (made, not yet protected; or unprotected, not yet
	// removed): the next child protects it first.
	snapshotProtected bool
	mount             *mount
	flatten           *flattenJob
}

func (l *layer) name() string {
	if l.id == "" {
		return "base image " + l.image
	}
	return l.id
}

// mount is an attached and mounted layer.
type mount struct {
	dev      Device
	dir      string // the mount point; the layer's content is dir/rootfs
	readOnly bool
	refs     int
}

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
		attacher: cfg.Attacher,
		fs:       fs,
		log:      log.With("prefix", prefix),
		home:     filepath.Clean(cfg.Home),
		root:     cfg.Root,
		owner:    owner(cfg.HostID, cfg.Home),
		ident:    identity(cfg.HostID, cfg.Home),
		layers:   make(map[string]*layer),
		byImage:  make(map[string]*layer),
		crash:    cfg.CrashHook,
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
	if err := d.ensureBase(ctx); err != nil {
		return nil, errors.Join(err, d.releaseAll(ctx))
	}
	d.cleanUnfinished(ctx)
	d.flat = startFlattener(d)
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

// Prefix is the image name prefix in use.
func (d *Driver) Prefix() string { return d.names.prefix }

// Identity is the driver instance's AttachRequest.Owner: 12 hex digits
// of a digest of its host and home.
func (d *Driver) Identity() string { return d.ident }

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
		rec, labelled, err := parseRecord(info.Metadata)
		if err != nil {
			// Not ours to judge: leave it alone rather than clean it.
			d.log.Warn("ignoring an image whose record cannot be read", "image", image, "err", err)
			continue
		}
		if !labelled {
			rec.State = StateCreating // cloned, never labelled: see State
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
		rec, _, err := parseRecord(info.Metadata)
		if err != nil {
			return fmt.Errorf("base image %s: %w", image, err)
		}
		if rec.Owner != "" && rec.Owner != d.owner {
			fix, _ := json.Marshal(record{State: rec.State, Owner: d.owner})
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
	err = os.Mkdir(rootfs, 0o755)
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
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	if _, ok := d.layers[id]; ok {
		d.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrLayerExists, id)
	}
	d.mu.Unlock()

	p := d.base
	if parent != "" {
		defer d.locks.Lock(parent)()
		p = d.lookup(parent)
		if p == nil {
			return fmt.Errorf("parent of %s: %w: %s", id, ErrLayerNotFound, parent)
		}
	}
	size := p.size
	if co.Size > 0 && co.Size < p.size {
		return fmt.Errorf("%w: size=%s is smaller than the parent layer (%s); filesystems only grow",
			ErrInvalidOption, units.BytesSize(float64(co.Size)), units.BytesSize(float64(p.size)))
	}
	size = max(size, co.Size)
	if parent == "" {
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
// New, before anyone else can).
func (d *Driver) removeLayer(ctx context.Context, l *layer, atStart bool) error {
	ph := newPhases()
	d.cancelFlatten(l)
	if m := l.mount; m != nil {
		d.log.Warn("removing a layer that is still mounted; unmounting it", "layer", l.id, "refs", m.refs)
		if err := d.unmountAndDetach(ctx, l, m); err != nil {
			return fmt.Errorf("remove layer %s: %w", l.id, err)
		}
	}
	// The snapshot goes first: while children depend on it this fails
	// and nothing has changed; once it is gone the layer is still a
	// consistent ready layer (a new child would snapshot it again).
	if l.snapshot {
		if err := d.removeSnapshot(ctx, l); err != nil {
			return fmt.Errorf("remove layer %s: %w", l.id, err)
		}
		ph.done("remove_snapshot")
		d.step(StepRemoveSnapshot)
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
	if err := d.store.RemoveImage(ctx, l.image); err != nil && !errors.Is(err, ErrImageNotFound) {
		return fmt.Errorf("remove layer %s: %w", l.id, err)
	}
	ph.done("remove_image")
	d.step(StepRemoveImage)
	d.forget(l)
	if err := os.Remove(filepath.Join(d.mnt, l.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("could not remove mount point", "layer", l.id, "err", err)
	}
	d.log.Debug("layer removed", append([]any{"layer", l.id}, ph.attrs...)...)
	return nil
}

// removeImages deletes l's snapshot, if it has one, and image; missing
// ones are fine.
func (d *Driver) removeImages(ctx context.Context, l *layer) error {
	if l.snapshot {
		if err := d.removeSnapshot(ctx, l); err != nil {
			return err
		}
	}
	if err := d.store.RemoveImage(ctx, l.image); err != nil && !errors.Is(err, ErrImageNotFound) {
		return err
	}
	return nil
}

// removeSnapshot deletes l's snapshot; ErrHasChildren, naming them, while
// layers are cloned from it.
func (d *Driver) removeSnapshot(ctx context.Context, l *layer) error {
	err := d.store.RemoveSnapshot(ctx, l.image, snapName)
	switch {
	case errors.Is(err, ErrImageBusy):
		kids, _ := d.store.Children(ctx, l.image, snapName)
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
	if m == nil {
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
func (d *Driver) unmountAndDetach(ctx context.Context, l *layer, m *mount) error {
	ph := newPhases()
	if err := d.fs.Unmount(ctx, m.dir); err != nil {
		d.setField(func() { m.refs = 0 })
		return err
	}
	ph.done("unmount")
	d.setField(func() { l.mount = nil })
	if err := m.dev.Detach(ctx); err != nil {
		return fmt.Errorf("detach %s: %w", m.dev.Path(), err)
	}
	ph.done("detach")
	d.log.Debug("layer released", append([]any{"layer", l.id, "device", m.dev.Path()}, ph.attrs...)...)
	return nil
}

// Exists reports whether layer id is ready.
func (d *Driver) Exists(id string) bool {
	if ValidateID(id) != nil {
		return false
	}
	return d.lookup(id) != nil
}

// lookup returns the ready layer id, or nil.
func (d *Driver) lookup(id string) *layer {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.layers[id]; l != nil && l.state == StateReady {
		return l
	}
	return nil
}

// Layers lists the IDs of the ready layers, sorted.
func (d *Driver) Layers() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for id, l := range d.layers {
		if l.state == StateReady {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// Metadata describes layer id for `docker inspect` (GraphDriver.Data).
func (d *Driver) Metadata(ctx context.Context, id string) (map[string]string, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.layers[id]
	if l == nil || l.state != StateReady {
		return nil, fmt.Errorf("%w: %s", ErrLayerNotFound, id)
	}
	md := map[string]string{
		"Image":      d.qualify(l.image),
		"Size":       strconv.FormatInt(l.size, 10),
		"CloneDepth": strconv.Itoa(d.depthLocked(l)),
	}
	if l.parentID != "" {
		md["Parent"] = l.parentID
	}
	if l.cloneOf.Image != "" {
		md["CloneOf"] = d.qualify(l.cloneOf.String())
	}
	if m := l.mount; m != nil {
		md["Device"] = m.dev.Path()
		md["Mountpoint"] = m.dir
		md["ReadOnly"] = strconv.FormatBool(m.readOnly)
	}
	return md, nil
}

// Close (dockerd's Cleanup) stops background work and unmounts and
// detaches every layer. It leaves no mount, device or open image behind,
// or says which it could not release.
func (d *Driver) Close(ctx context.Context) error {
	if !d.stop() {
		return nil
	}
	return d.releaseAll(ctx)
}

// stop marks the driver closed and stops background work; false if it
// already was.
func (d *Driver) stop() bool {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return false
	}
	d.closed = true
	d.mu.Unlock()
	if d.flat != nil {
		d.flat.stop()
	}
	return true
}

// Release is for a restart or an upgrade of the driver: it stops
// background work and stops serving every layer, leaving mounts and
// devices in place for the next Driver on the same home to adopt
// (recoverDevices), so containers keep running through it. ctx bounds
// the wait for requests in flight.
func (d *Driver) Release(ctx context.Context) error {
	if !d.stop() {
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

// setField changes layer fields under d.mu (the caller holds the layer's
// lock).
func (d *Driver) setField(f func()) {
	d.mu.Lock()
	f()
	d.mu.Unlock()
}

// depth is the number of clone hops from l to an image that is not a
// clone: 0 for the base, 1 for its children, reset by flattening.
func (d *Driver) depth(l *layer) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.depthLocked(l)
}

func (d *Driver) depthLocked(l *layer) int {
	n := 0
	for seen := 0; l != nil && l.cloneOf.Image != "" && seen <= len(d.byImage); seen++ {
		n++
		l = d.byImage[l.cloneOf.Image]
	}
	return n
}

func (d *Driver) qualify(image string) string {
	if q, ok := d.store.(StoreDescriber); ok {
		return q.Qualify(image)
	}
	return image
}

// phases times the steps of one operation for the debug log, where the
// cost of each (clone, metadata, attach, mount...) can be read off.
type phases struct {
	last  time.Time
	attrs []any
}

func newPhases() *phases { return &phases{last: time.Now()} }

// done records the step that just ended.
func (p *phases) done(step string) {
	now := time.Now()
	p.attrs = append(p.attrs, step, now.Sub(p.last).Round(time.Microsecond))
	p.last = now
}

// undoStack collects the steps that undo an operation done half way.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

// onError runs the undo steps, last first, when *err is set, and joins
// their failures to it.
func (u *undoStack) onError(err *error) {
	if *err == nil {
		return
	}
	var errs []error
	for i := len(*u) - 1; i >= 0; i-- {
		if e := (*u)[i](); e != nil {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		*err = errors.Join(*err, fmt.Errorf("rollback: %w", errors.Join(errs...)))
	}
}
