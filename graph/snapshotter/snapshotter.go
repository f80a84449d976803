package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/storage"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	bolt "go.etcd.io/bbolt"
)

// layerPrefix starts the Driver layer ID of every snapshot; the rest is
// the MetaStore's ID of the snapshot.
const layerPrefix = "ctr-"

// Config is what New needs.
type Config struct {
	// Home holds the MetaStore (metadata.db); the Driver's home should
	// be a directory below it or the same.
	Home   string
	Driver *graph.Driver
	Logger *slog.Logger

	// SharedPrefix names committed layers by chain ID in the cluster
	// (remote.go): <SharedPrefix>sha256-<hex>. Empty keeps every layer
	// on this host. All hosts sharing layers must use the same prefix.
	SharedPrefix string
	// Store is the Driver's image store, for the shared images (needed
	// with SharedPrefix).
	Store graph.ImageStore
	// HostID is recorded on shared images this host uses.
	HostID string
}

// Snapshotter implements snapshots.Snapshotter (and snapshots.Cleaner).
type Snapshotter struct {
	ms  *storage.MetaStore
	d   *graph.Driver
	log *slog.Logger

	shared string // Config.SharedPrefix
	store  graph.ImageStore
	hostID string

	r *reaper // deletes removed snapshots' layers (reaper.go)
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// New opens the MetaStore in cfg.Home over cfg.Driver, which must have
// been opened with graph.Config.BlockDevices.
func New(ctx context.Context, cfg Config) (*Snapshotter, error) {
	if cfg.Driver == nil {
		return nil, errors.New("snapshotter.New: Driver is required")
	}
	if cfg.Home == "" || !filepath.IsAbs(cfg.Home) {
		return nil, fmt.Errorf("snapshotter.New: home %q must be an absolute path", cfg.Home)
	}
	if err := os.MkdirAll(cfg.Home, 0o700); err != nil {
		return nil, err
	}
	ms, err := storage.NewMetaStore(filepath.Join(cfg.Home, "metadata.db"))
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.SharedPrefix != "" && cfg.Store == nil {
		return nil, errors.New("snapshotter.New: SharedPrefix needs Store")
	}
	if strings.ContainsAny(cfg.SharedPrefix, "/@ \t\n") {
		return nil, fmt.Errorf("snapshotter.New: shared prefix %q: image names cannot hold '/', '@' or spaces", cfg.SharedPrefix)
	}
	hostID := cfg.HostID
	if hostID == "" {
		hostID = graph.HostID() // never empty: an empty value would remove the use
	}
	s := &Snapshotter{ms: ms, d: cfg.Driver, log: log, shared: cfg.SharedPrefix, store: cfg.Store, hostID: hostID, r: newReaper()}
	go s.reap(context.WithoutCancel(ctx))
	return s, nil
}

func layerID(snapID string) string { return layerPrefix + snapID }

// Stat returns the info of an active, view or committed snapshot.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.withTx(ctx, false, func(ctx context.Context, tx *bolt.Tx) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes the labels of a snapshot (the only mutable field).
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (out snapshots.Info, err error) {
	err = s.withTx(ctx, true, func(ctx context.Context, tx *bolt.Tx) error {
		out, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return out, err
}

// Usage is the space a snapshot takes in the store beyond its parent's
// (the layer image's allocated bytes): measured now for an active
// snapshot, recorded at Commit for a committed one.
func (s *Snapshotter) Usage(ctx context.Context, key string) (u snapshots.Usage, err error) {
	var (
		id   string
		info snapshots.Info
	)
	err = s.withTx(ctx, false, func(ctx context.Context, tx *bolt.Tx) error {
		id, info, u, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil || info.Kind != snapshots.KindActive {
		return u, err
	}
	return s.measure(ctx, id)
}

func (s *Snapshotter) measure(ctx context.Context, id string) (snapshots.Usage, error) {
	n, ok, err := s.d.DiskUsage(ctx, layerID(id))
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of snapshot %s: %w", id, mapErr(err))
	}
	if !ok {
		return snapshots.Usage{}, nil // the store cannot tell
	}
	return snapshots.Usage{Size: n}, nil
}

// Mounts returns the mounts of an active snapshot or view, attaching its
// device again if it is not attached (after a restart that could not
// adopt it).
func (s *Snapshotter) Mounts(ctx context.Context, key string) (m []mount.Mount, err error) {
	var snap storage.Snapshot
	err = s.withTx(ctx, false, func(ctx context.Context, tx *bolt.Tx) error {
		snap, err = storage.GetSnapshot(ctx, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("mounts of %q: %w", key, err)
	}
	return s.mounts(ctx, snap)
}

func (s *Snapshotter) mounts(ctx context.Context, snap storage.Snapshot) ([]mount.Mount, error) {
	ro := snap.Kind == snapshots.KindView
	dev, err := s.d.AttachDevice(ctx, layerID(snap.ID), ro)
	if err != nil {
		return nil, mapErr(err)
	}
	opts := []string{"rw"}
	if ro {
		opts[0] = "ro"
	}
	return []mount.Mount{{Type: s.d.FSType(), Source: dev, Options: append(opts, s.d.MountOptions()...)}}, nil
}

// Prepare makes an active (read-write) snapshot of parent.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindActive, key, parent, opts...)
}

// View makes a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts...)
}

func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts ...snapshots.Opt) (m []mount.Mount, err error) {
	if key == "" {
		return nil, fmt.Errorf("empty snapshot key: %w", errdefs.ErrInvalidArgument)
	}
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	if kind == snapshots.KindActive {
		// A layer another host (or this one) already published: record
		// it committed and tell containerd not to fetch or unpack it.
		if found, err := s.prepareRemote(ctx, key, parent, base.Labels[labelSnapshotRef], opts); found || err != nil {
			return nil, err
		}
	}
	err = s.withTx(ctx, true, func(ctx context.Context, tx *bolt.Tx) (err error) {
		snap, err := storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return err
		}
		id := layerID(snap.ID)
		if err := s.createLayer(ctx, tx, id, snap.ParentIDs); err != nil {
			return fmt.Errorf("snapshot %q: %w", key, mapErr(err))
		}
		// The transaction is rolled back on any error below: the layer
		// goes with it.
		defer func() {
			if err != nil {
				err = errors.Join(err, s.d.DetachDevice(context.WithoutCancel(ctx), id), s.d.Remove(context.WithoutCancel(ctx), id))
			}
		}()
		m, err = s.mounts(ctx, snap)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.log.Debug("snapshot created", "key", key, "parent", parent, "kind", kind.String(), "device", m[0].Source)
	return m, nil
}

// createLayer makes the layer of a new snapshot: a clone of its parent's
// layer, or of the shared image its parent stands for.
func (s *Snapshotter) createLayer(ctx context.Context, tx *bolt.Tx, id string, parentIDs []string) error {
	if len(parentIDs) == 0 {
		return s.d.Create(ctx, id, "", graph.CreateOptions{})
	}
	if image := sharedOf(tx, parentIDs[0]); image != "" {
		return s.d.CreateFrom(ctx, id, graph.ImageRef{Image: image, Snapshot: graph.PublishedSnapshot}, graph.CreateOptions{})
	}
	return s.d.Create(ctx, id, layerID(parentIDs[0]), graph.CreateOptions{})
}

// Commit turns the active snapshot key into the committed snapshot name:
// its device is detached, its layer snapshotted and protected, and the
// record changed, in one transaction. A layer with a chain ID
// (containerd.io/snapshot.ref at Prepare) is published in the cluster.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.withTx(ctx, true, func(ctx context.Context, tx *bolt.Tx) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if info.Kind != snapshots.KindActive {
			return fmt.Errorf("commit %q: snapshot %q is %s, not active: %w", name, key, info.Kind, errdefs.ErrFailedPrecondition)
		}
		if name == "" {
			return fmt.Errorf("commit %q: empty name: %w", key, errdefs.ErrInvalidArgument)
		}
		if _, _, _, err := storage.GetInfo(ctx, name); err == nil {
			return fmt.Errorf("commit %q: snapshot %q: %w", key, name, errdefs.ErrAlreadyExists)
		} else if !errdefs.IsNotFound(err) {
			return err
		}
		usage, err := s.measure(ctx, id)
		if err != nil {
			return err
		}
		if err := s.d.DetachDevice(ctx, layerID(id)); err != nil {
			return fmt.Errorf("commit %q: %w", key, mapErr(err))
		}
		if err := s.d.Seal(ctx, layerID(id)); err != nil {
			return fmt.Errorf("commit %q: %w", key, mapErr(err))
		}
		if _, err := storage.CommitActive(ctx, key, name, usage, opts...); err != nil {
			return err
		}
		if image, ok := s.sharedName(info.Labels[labelSnapshotRef]); ok {
			if err := s.publish(ctx, tx, id, image); err != nil {
				return fmt.Errorf("commit %q: %w", key, err)
			}
		}
		s.log.Debug("snapshot committed", "key", key, "name", name, "layer", layerID(id), "bytes", usage.Size)
		return nil
	})
}

// Remove deletes the record of a snapshot that has no children (and
// this host's use of the shared layer it stands for) and queues its
// layer's deletion, which the reaper does after the commit (reaper.go
// says why); a failed deletion leaves an orphan for Cleanup.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var job reapJob
	err := s.withTx(ctx, true, func(ctx context.Context, tx *bolt.Tx) error {
		id, _, err := storage.Remove(ctx, key)
		if err != nil {
			return fmt.Errorf("remove %q: %w", key, err)
		}
		if image := sharedOf(tx, id); image != "" {
			if err := s.unuse(ctx, tx, id, image); err != nil {
				return fmt.Errorf("remove %q: %w", key, err)
			}
			// After the commit: another host may still use it.
			job.shared = image
			return nil
		}
		job.layer = layerID(id)
		return nil
	})
	if err != nil {
		// containerd's GC drops a FailedPrecondition without a word: say
		// here why a snapshot stayed.
		s.log.Warn("could not remove snapshot", "key", key, "err", err)
		return err
	}
	s.log.Debug("snapshot removed", "key", key, "layer", job.layer, "shared", job.shared)
	s.r.add(job)
	return nil
}

// Walk calls fn for every snapshot matching the filters (containerd's
// filter syntax over name, parent, kind and labels).
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, fs ...string) error {
	return s.withTx(ctx, false, func(ctx context.Context, tx *bolt.Tx) error {
		return storage.WalkInfo(ctx, fn, fs...)
	})
}

// Cleanup deletes layers that no snapshot names (a crash between making
// a layer and recording it, a deletion after Remove that failed),
// children before parents; the layers the reaper is about to delete are
// left to it.
//
// It holds a write transaction throughout: Prepare makes its layer
// inside one before the record is visible, so a Cleanup beside it would
// take that layer for an orphan.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	return s.withTx(ctx, true, func(ctx context.Context, tx *bolt.Tx) error {
		ids, err := storage.IDMap(ctx)
		if err != nil {
			return err
		}
		return s.removeOrphans(ctx, ids)
	})
}

// withTx runs fn in a MetaStore transaction (committed if writable and
// fn succeeds), with the bolt transaction for this package's own bucket.
func (s *Snapshotter) withTx(ctx context.Context, writable bool, fn func(ctx context.Context, tx *bolt.Tx) error) error {
	ctx, t, err := s.ms.TransactionContext(ctx, writable)
	if err != nil {
		return err
	}
	tx, ok := t.(*bolt.Tx)
	if !ok {
		return errors.Join(fmt.Errorf("snapshotter: MetaStore transaction is a %T, not a bolt one", t), t.Rollback())
	}
	if err := fn(ctx, tx); err != nil || !writable {
		if rerr := tx.Rollback(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("rollback: %w", rerr))
		}
		return err
	}
	return tx.Commit()
}

func (s *Snapshotter) removeOrphans(ctx context.Context, ids map[string]string) error {
	var orphans []string
	for _, l := range s.d.Layers() {
		id, ok := strings.CutPrefix(l, layerPrefix)
		if _, named := ids[id]; ok && !named && !s.r.isBusy(l) {
			orphans = append(orphans, l)
		}
	}
	// A parent cannot go before its children: repeat while progress is
	// made (orphans form chains at most as deep as the layer tree).
	var errs []error
	for len(orphans) > 0 {
		var left []string
		errs = errs[:0]
		for _, l := range orphans {
			err := errors.Join(s.d.DetachDevice(ctx, l), s.d.Remove(ctx, l))
			if err != nil {
				left = append(left, l)
				errs = append(errs, err)
				continue
			}
			s.log.Info("removed a layer no snapshot names", "layer", l)
		}
		if len(left) == len(orphans) {
			break
		}
		orphans = left
	}
	return errors.Join(errs...)
}

// Release hands every attached device over to the next process (a
// restart of the snapshotter under running containers) and closes the
// MetaStore.
func (s *Snapshotter) Release(ctx context.Context) error {
	s.stopReaper()
	return errors.Join(s.d.Release(ctx), s.ms.Close())
}

// Close detaches every device and closes the MetaStore: nothing may be
// mounted from them any more.
func (s *Snapshotter) Close() error {
	s.stopReaper()
	return errors.Join(s.d.Close(context.Background()), s.ms.Close())
}

// mapErr gives the Driver's errors containerd's codes.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, graph.ErrLayerNotFound):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.Is(err, graph.ErrLayerExists):
		return fmt.Errorf("%w: %w", errdefs.ErrAlreadyExists, err)
	case errors.Is(err, graph.ErrHasChildren), errors.Is(err, graph.ErrAttached), errors.Is(err, graph.ErrClosed):
		return fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
	case errors.Is(err, graph.ErrInvalidID), errors.Is(err, graph.ErrInvalidOption):
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return err
}
