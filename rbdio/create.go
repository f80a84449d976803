package rbdio

import (
	"context"
	"fmt"
	"math/bits"
	"strings"
	"syscall"

	"github.com/ceph/go-ceph/rbd"
)

// Features is a set of RBD image features (RBD_FEATURE_*).
type Features uint64

// The features rbdio lets callers choose. Journaling and the rest stay
// out: nothing here needs them and krbd refuses some of them.
const (
	FeatureLayering      = Features(rbd.FeatureLayering)
	FeatureExclusiveLock = Features(rbd.FeatureExclusiveLock)
	FeatureObjectMap     = Features(rbd.FeatureObjectMap)
	FeatureFastDiff      = Features(rbd.FeatureFastDiff)
	FeatureDeepFlatten   = Features(rbd.FeatureDeepFlatten)

	// DefaultFeatures is what `rbd create` uses on Pacific: cloneable,
	// single writer, with an object map so clones, flatten, diff and
	// removal skip objects that were never written.
	DefaultFeatures = FeatureLayering | FeatureExclusiveLock | FeatureObjectMap | FeatureFastDiff | FeatureDeepFlatten

	allowedFeatures = DefaultFeatures
)

var featureNames = []struct {
	f    Features
	name string
}{
	{FeatureLayering, "layering"},
	{FeatureExclusiveLock, "exclusive-lock"},
	{FeatureObjectMap, "object-map"},
	{FeatureFastDiff, "fast-diff"},
	{FeatureDeepFlatten, "deep-flatten"},
	{Features(rbd.FeatureJournaling), "journaling"},
	{Features(rbd.FeatureDataPool), "data-pool"},
	{Features(rbd.FeatureOperations), "operations"},
	{Features(rbd.FeatureMigrating), "migrating"},
}

// String lists the features as rbd(8) names them, comma separated.
func (f Features) String() string {
	var names []string
	for _, n := range featureNames {
		if f&n.f != 0 {
			names = append(names, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("0x%x", uint64(f)))
	}
	return strings.Join(names, ",")
}

// ParseFeatures reads a comma-separated list of feature names
// ("layering,exclusive-lock").
func ParseFeatures(s string) (Features, error) {
	var f Features
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		found := false
		for _, n := range featureNames {
			if n.name == part && n.f&allowedFeatures != 0 {
				f |= n.f
				found = true
			}
		}
		if !found {
			return 0, &Error{Op: "parse features", Object: fmt.Sprintf("%q", part), Kind: ErrInvalid,
				Hint: "known features: " + allowedFeatures.String()}
		}
	}
	return f, nil
}

// check refuses unknown features and combinations librbd refuses.
func (f Features) check() error {
	if f&^allowedFeatures != 0 {
		return &Error{Op: "check features", Object: f.String(), Kind: ErrInvalid,
			Hint: "rbdio supports " + allowedFeatures.String()}
	}
	if f&FeatureObjectMap != 0 && f&FeatureExclusiveLock == 0 {
		return &Error{Op: "check features", Object: f.String(), Kind: ErrInvalid,
			Hint: "object-map needs exclusive-lock"}
	}
	if f&FeatureFastDiff != 0 && f&FeatureObjectMap == 0 {
		return &Error{Op: "check features", Object: f.String(), Kind: ErrInvalid,
			Hint: "fast-diff needs object-map"}
	}
	return nil
}

// Object size limits (librbd's order 12..25).
const (
	MinObjectSize     = 4 << 10
	MaxObjectSize     = 32 << 20
	DefaultObjectSize = 4 << 20
)

// CreateOptions describes a new image (or clone).
type CreateOptions struct {
	// Size in bytes; required for CreateImage, ignored by Clone (a
	// clone has its parent's size).
	Size int64
	// Features; 0 means DefaultFeatures. A clone needs layering.
	Features Features
	// ObjectSize is the RADOS object size, a power of two between 4 KiB
	// and 32 MiB; 0 means 4 MiB (or the parent's, for a clone).
	ObjectSize int64
	// DataPool puts the image's data objects in another pool (for
	// example an erasure-coded one); its metadata stays in Config.Pool.
	DataPool string
}

// imageOptions turns opts into librbd image options; the caller must
// Destroy them.
func (c *Conn) imageOptions(op, spec string, opts CreateOptions, clone bool) (*rbd.ImageOptions, error) {
	features := opts.Features
	if features == 0 {
		features = DefaultFeatures
	}
	if err := features.check(); err != nil {
		return nil, err
	}
	if clone && features&FeatureLayering == 0 {
		return nil, &Error{Op: op, Object: spec, Kind: ErrInvalid, Hint: "a clone needs the layering feature"}
	}
	rio := rbd.NewRbdImageOptions()
	ok := false
	defer func() {
		if !ok {
			rio.Destroy()
		}
	}()
	if err := rio.SetUint64(rbd.ImageOptionFeatures, uint64(features)); err != nil {
		return nil, wrap(err, op, spec, "rbd_image_options_set_uint64")
	}
	if clone {
		// Clone's contract: a protected snapshot, v1 semantics.
		if err := rio.SetUint64(rbd.ImageOptionCloneFormat, 1); err != nil {
			return nil, wrap(err, op, spec, "rbd_image_options_set_uint64")
		}
	}
	if opts.ObjectSize != 0 {
		o := opts.ObjectSize
		if o < MinObjectSize || o > MaxObjectSize || o&(o-1) != 0 {
			return nil, &Error{Op: op, Object: spec, Kind: ErrInvalid,
				Hint: fmt.Sprintf("object size %d: want a power of two from %d to %d", o, MinObjectSize, MaxObjectSize)}
		}
		order := uint64(bits.TrailingZeros64(uint64(o)))
		if err := rio.SetUint64(rbd.ImageOptionOrder, order); err != nil {
			return nil, wrap(err, op, spec, "rbd_image_options_set_uint64")
		}
	}
	if opts.DataPool != "" {
		if _, err := c.rados.GetPoolByName(opts.DataPool); err != nil {
			e := wrap(err, op, spec, "rados_pool_lookup")
			e.Kind = ErrNotFound
			e.Hint = fmt.Sprintf("data pool %s does not exist: create it ('ceph osd pool create %s') or drop the data pool option", opts.DataPool, opts.DataPool)
			return nil, e
		}
		if err := rio.SetString(rbd.ImageOptionDataPool, opts.DataPool); err != nil {
			return nil, wrap(err, op, spec, "rbd_image_options_set_string")
		}
	}
	ok = true
	return rio, nil
}

// CreateImage makes a new image of opts.Size bytes (rbd_create4). It
// fails with ErrExists if the name is taken; librbd leaves nothing
// behind when creation fails.
func (c *Conn) CreateImage(ctx context.Context, name string, opts CreateOptions) error {
	spec := c.spec(name, "")
	if err := c.check(ctx, "create image", spec); err != nil {
		return err
	}
	if err := validName("image", name); err != nil {
		return err
	}
	if opts.Size <= 0 {
		return &Error{Op: "create image", Object: spec, Kind: ErrInvalid,
			Hint: fmt.Sprintf("size %d: want a positive number of bytes", opts.Size)}
	}
	rio, err := c.imageOptions("create image", spec, opts, false)
	if err != nil {
		return err
	}
	defer rio.Destroy()
	unlock := c.lockImageCtx()
	err = rbd.CreateImage(c.ioctx, name, uint64(opts.Size), rio)
	unlock()
	if err != nil {
		e := wrap(err, "create image", spec, "rbd_create4")
		if e.Errno == syscall.EEXIST {
			e.Hint = "pick another name, or remove the old image first"
		}
		return e
	}
	return nil
}
