package graph

import "context"

// ImageStore is where layer images live. In production it is an RBD pool
// (graph/rbdstore); graphtest.FileStore implements it on local
// files for tests. Every method is safe for concurrent use on different
// images; the Driver never runs two mutating calls on one image at once.
//
// Errors wrap ErrImageNotFound, ErrImageExists or ErrImageBusy where
// those apply.
type ImageStore interface {
	// CreateImage makes an empty image of size bytes.
	CreateImage(ctx context.Context, name string, size int64) error
	// CloneImage makes name a copy-on-write clone of parent@snap, which
	// must be a protected snapshot.
	CloneImage(ctx context.Context, parent, snap, name string) error
	// RemoveImage deletes an image that has no snapshots left.
	RemoveImage(ctx context.Context, name string) error
	// ResizeImage changes the image's size (the Driver only grows).
	ResizeImage(ctx context.Context, name string, size int64) error
	// FlattenImage copies the data name still reads from its clone
	// parent into name, so it no longer depends on it. It may run while
	// the image is attached.
	FlattenImage(ctx context.Context, name string) error

	// CreateSnapshot makes image@snap and protects it so it can be
	// cloned. An existing snapshot is protected if it is not yet, so a
	// retry after a failure half way succeeds.
	CreateSnapshot(ctx context.Context, image, snap string) error
	// RemoveSnapshot unprotects and deletes image@snap; a missing
	// snapshot is not an error. ErrImageBusy when it still has clones.
	RemoveSnapshot(ctx context.Context, image, snap string) error
	// Children lists the images cloned from image@snap.
	Children(ctx context.Context, image, snap string) ([]string, error)

	// ListImages returns the names of the images whose names start with
	// prefix.
	ListImages(ctx context.Context, prefix string) ([]string, error)
	// StatImage describes one image.
	StatImage(ctx context.Context, name string) (ImageInfo, error)
	// SetMetadata stores key/value pairs on the image (RBD image-meta);
	// an empty value removes the key.
	SetMetadata(ctx context.Context, name string, kv map[string]string) error
}

// ImageInfo is what StatImage returns.
type ImageInfo struct {
	Size int64
	// Parent is the clone parent ("" when the image is not a clone, or
	// was flattened).
	Parent ImageRef
	// Snapshots are the names of the image's snapshots.
	Snapshots []string
	// Metadata holds every metadata key/value pair of the image.
	Metadata map[string]string
}

// ImageRef names an image or one of its snapshots.
type ImageRef struct {
	Image    string
	Snapshot string
}

func (r ImageRef) String() string {
	if r.Snapshot == "" {
		return r.Image
	}
	return r.Image + "@" + r.Snapshot
}

// StoreVersioner is an optional ability of an ImageStore: the version of
// the storage system behind it, shown by Status (for example "Ceph
// Version", "16.2.15").
type StoreVersioner interface {
	StoreVersion() (label, version string)
}

// StoreStatuser is an optional ability of an ImageStore: lines for
// Status about how the store keeps the layers' data (for example
// librbd's cache), shown after the image prefix.
type StoreStatuser interface {
	StoreStatus() [][2]string
}

// StoreDescriber is an optional ability of an ImageStore: where the
// images are (for example "pool rbd, namespace x"), for Status and
// GetMetadata.
type StoreDescriber interface {
	// Location is shown in Status ("Pool").
	Location() string
	// Qualify turns an image name into the fully qualified one
	// ("pool/name").
	Qualify(image string) string
}

// SpaceReporter is an optional ability of an ImageStore: whether the
// pools the layers are written to are full (their quota reached, or the
// cluster full), the reason writes to every layer wait or fail with
// ENOSPC. The Driver checks it periodically and on every Status, shows
// a full pool there and logs each change once.
type SpaceReporter interface {
	// Space reports on every pool the images' data is written to.
	Space(ctx context.Context) ([]PoolSpace, error)
	// AbortOnFull reports whether writes to a full pool fail with
	// ENOSPC (true) or wait for space (false), for Status to say.
	AbortOnFull() bool
}

// PoolSpace is one pool's state, as a SpaceReporter reports it.
type PoolSpace struct {
	Pool string
	Full bool
	// Detail says it for an operator, naming the pool and its quota
	// ("pool rbd is full: its quota max_bytes 1073741824 is reached").
	Detail string
}
