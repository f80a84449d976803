package graph

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Config is what New needs.
type Config struct {
	// Home is the driver's local directory (dockerd passes
	// <data-root>/<driver name>); mount points live below it.
	Home    string
	Options Options
	Store   ImageStore
	// Deletions, when set, is the store every deletion of a layer's
	// snapshot or image goes through (the reaper's, Remove's second
	// half, and start-up's cleanup); nil means Store. It is the same
	// pool on a cluster connection of its own: rbdio runs a
	// connection's image opens, closes and removals one at a time, and
	// a deletion in the background would otherwise hold up the Create
	// and Get that dockerd is waiting for
	// (docs/2026-12-07-deletions-connection.md).
	Deletions ImageStore
	Attacher  Attacher
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
	// BlockDevices is for a front end that mounts layers itself (the
	// containerd snapshotter, block.go): a layer's content is the root
	// of its filesystem, not a rootfs directory in it. It is a property
	// of the base image, so a home keeps one layout for ever.
	BlockDevices bool
	// CrashHook, for tests, is called after every durable step of
	// Create, Remove and flattening (crash.go); nil means
	// CrashAtFromEnv().
	CrashHook CrashHook
	// SpaceCheckInterval is how often a store with the SpaceReporter
	// ability is asked whether its pools are full (default
	// DefaultSpaceCheckInterval); Status asks as well.
	SpaceCheckInterval time.Duration
	// Observer, when set, sees every layer operation and the flattens
	// pending (metrics); nil sees nothing.
	Observer Observer
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
	dels     ImageStore // Config.Deletions, or store
	delsOwn  bool       // Config.Deletions was set
	attacher Attacher
	fs       Filesystem
	log      *slog.Logger
	obs      Observer // Config.Observer: nil sees nothing
	home     string
	mnt      string
	root     Identity
	owner    string // recorded on base images: this host and home
	ident    string // Identity: recorded with every device this driver attaches
	crash    CrashHook
	block    bool // Config.BlockDevices

	locks keyLocker

	mu      sync.Mutex
	layers  map[string]*layer // ready, creating and removing layers by ID
	byImage map[string]*layer // the same and the base images, by image name
	base    *layer
	closed  bool
	// idle counts delayed unmounts armed or running (keepIdle); Close
	// and Release wait for them. Added to only while not closed.
	idle sync.WaitGroup

	flat  *flattener
	reap  *reaper     // deletes removed layers' images (reap.go)
	space *spaceWatch // nil unless the store is a SpaceReporter
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

// mount is an attached and mounted layer, or (dir "") a layer attached
// for a front end that mounts it itself (AttachDevice).
type mount struct {
	dev      Device
	dir      string // the mount point; the layer's content is dir/rootfs
	readOnly bool
	refs     int
	// idle, while the mount has no reference, unmounts it when
	// rbd.unmountdelay has passed (keepIdle).
	idle    *time.Timer
	idleGen int // counts idle periods, so a late timer knows its own
}

// Prefix is the image name prefix in use.
func (d *Driver) Prefix() string { return d.names.prefix }

// Identity is the driver instance's AttachRequest.Owner: 12 hex digits
// of a digest of its host and home.
func (d *Driver) Identity() string { return d.ident }

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
