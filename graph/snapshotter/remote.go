// Remote snapshots: committed layers that carry a chain ID are published
// in the cluster as <SharedPrefix>sha256-<hex>, and a host that is asked
// to unpack a layer already published records it committed and answers
// AlreadyExists, so containerd neither fetches nor unpacks it.
//
// Publishing is a rename of the finished, protected image (graph.Publish):
// another host sees the whole layer or nothing, and of two hosts
// publishing the same chain ID one wins, the other drops its copy and
// uses the winner's. Each committed snapshot standing for a shared image
// records its use on the image (metadata key userPrefix+<driver
// identity>.<snapshot ID>.<tag of the image's name>), so every host sees
// every other host's uses;
// the image is deleted when the last use goes and nothing is cloned from
// it. A dead host's uses stay until an operator removes them (rbd
// image-meta remove). The first layer of a chain is a clone of its
// publisher's base image, which therefore stays while it is shared.

package snapshotter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/storage"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	bolt "go.etcd.io/bbolt"
)

const (
	// labelSnapshotRef is the label containerd's unpacker sets on
	// Prepare: the chain ID of the layer it is about to unpack.
	labelSnapshotRef = "containerd.io/snapshot.ref"
	// userPrefix starts the metadata keys recording a host's use of a
	// shared image.
	userPrefix = "rbd-nbd-graph.user."
	// sharedBucket maps snapshot IDs to the shared image they stand for.
	sharedBucket = "rbd-nbd-graph.shared"
)

// errAlreadyHere: the target is already recorded on this host.
var errAlreadyHere = errors.New("already recorded")

// sharedName is the cluster-wide image name for chain ID ref, if ref is
// one ("sha256:" and 64 hex digits) and sharing is on.
func (s *Snapshotter) sharedName(ref string) (string, bool) {
	hex, ok := strings.CutPrefix(ref, "sha256:")
	if s.shared == "" || !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", false
	}
	return s.shared + "sha256-" + hex, true
}

func sharedOf(tx *bolt.Tx, id string) string {
	if b := tx.Bucket([]byte(sharedBucket)); b != nil {
		return string(b.Get([]byte(id)))
	}
	return ""
}

func setShared(tx *bolt.Tx, id, image string) error {
	b, err := tx.CreateBucketIfNotExists([]byte(sharedBucket))
	if err != nil {
		return err
	}
	if image == "" {
		return b.Delete([]byte(id))
	}
	return b.Put([]byte(id), []byte(image))
}

// userKey is the metadata key of snapshot id's use of image. It ends
// with a tag of image's name because librbd copies a parent's metadata
// into each clone: a shared layer cloned from another carries the
// parent's use keys, which are not uses of it (counting them kept every
// shared layer above the first forever).
func (s *Snapshotter) userKey(id, image string) string {
	return userPrefix + s.d.Identity() + "." + id + "." + useTag(image)
}

func useTag(image string) string {
	h := sha256.Sum256([]byte(image))
	return hex.EncodeToString(h[:6])
}

// usesOf returns the uses of image among its metadata md: the use keys
// tagged with image's name, and untagged ones (written before tags: never
// free a layer that may be in use; an operator removes a stale one).
func usesOf(image string, md map[string]string) map[string]string {
	tag := "." + useTag(image)
	u := map[string]string{}
	for k, host := range md {
		rest, ok := strings.CutPrefix(k, userPrefix)
		if ok && (strings.Count(rest, ".") == 1 || strings.HasSuffix(rest, tag)) {
			u[k] = host
		}
	}
	return u
}

// prepareRemote records snapshot key committed if the layer ref names is
// published already. found reports that Prepare is answered (err is then
// AlreadyExists, or why recording failed).
func (s *Snapshotter) prepareRemote(ctx context.Context, key, parent, ref string, opts []snapshots.Opt) (found bool, err error) {
	image, ok := s.sharedName(ref)
	if !ok {
		return false, nil
	}
	info, err := s.store.StatImage(ctx, image)
	if errors.Is(err, graph.ErrImageNotFound) || err == nil && !slices.Contains(info.Snapshots, graph.PublishedSnapshot) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("look up shared layer %s: %w", image, err)
	}
	var usage snapshots.Usage
	if u, ok := s.store.(graph.UsageReporter); ok {
		if n, err := u.DiskUsage(ctx, image); err == nil {
			usage.Size = n
		}
	}
	err = s.withTx(ctx, true, func(ctx context.Context, tx *bolt.Tx) error {
		name := ref
		if _, existing, _, err := storage.GetInfo(ctx, ref); err == nil {
			if existing.Kind == snapshots.KindCommitted && existing.Parent == parent {
				return errAlreadyHere
			}
			name = "" // taken by another parent's record: see below
		}
		snap, err := storage.CreateSnapshot(ctx, snapshots.KindActive, key, parent, opts...)
		if err != nil {
			return err
		}
		if name == "" {
			name = ref + "@" + snap.ID
		}
		if _, err := storage.CommitActive(ctx, key, name, usage, opts...); err != nil {
			return err
		}
		if err := setShared(tx, snap.ID, image); err != nil {
			return err
		}
		return s.store.SetMetadata(ctx, image, map[string]string{s.userKey(snap.ID, image): s.hostID})
	})
	if err == nil || errors.Is(err, errAlreadyHere) {
		s.log.Info("layer found in the cluster: not unpacking it", "key", key, "chain", ref, "image", image)
		return true, fmt.Errorf("target snapshot %q: %w", ref, errdefs.ErrAlreadyExists)
	}
	return true, err
}

// publish gives committed snapshot id's layer its shared name, or, when
// another host published the same layer first, drops it for the
// winner's; either way the snapshot then stands for the shared image.
func (s *Snapshotter) publish(ctx context.Context, tx *bolt.Tx, id, image string) error {
	err := s.d.Publish(ctx, layerID(id), image)
	switch {
	case err == nil:
		s.log.Info("layer published in the cluster", "layer", layerID(id), "image", image)
	case errors.Is(err, graph.ErrImageExists):
		// Same chain ID, same content: keep one copy in the cluster.
		if err := s.d.Remove(ctx, layerID(id)); err != nil {
			return mapErr(err)
		}
		s.log.Info("layer published by another host first: using that one", "layer", layerID(id), "image", image)
	default:
		return mapErr(err)
	}
	if err := setShared(tx, id, image); err != nil {
		return err
	}
	return s.store.SetMetadata(ctx, image, map[string]string{s.userKey(id, image): s.hostID})
}

// unuse forgets that snapshot id stands for image and drops this host's
// use of it.
func (s *Snapshotter) unuse(ctx context.Context, tx *bolt.Tx, id, image string) error {
	if err := setShared(tx, id, ""); err != nil {
		return err
	}
	err := s.store.SetMetadata(ctx, image, map[string]string{s.userKey(id, image): ""})
	if errors.Is(err, graph.ErrImageNotFound) {
		return nil
	}
	return err
}

// releaseShared deletes image if no host uses it and nothing is cloned
// from it, then does the same for the shared image it was cloned from.
func (s *Snapshotter) releaseShared(ctx context.Context, image string) error {
	for image != "" {
		info, err := s.store.StatImage(ctx, image)
		if errors.Is(err, graph.ErrImageNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		for k, host := range usesOf(image, info.Metadata) {
			// Used (here or on another host): say so, as a layer that
			// stays is what an operator will ask about.
			s.log.Debug("shared layer kept: in use", "image", image, "use", k, "host", host)
			return nil
		}
		err = s.store.RemoveSnapshot(ctx, image, graph.PublishedSnapshot)
		if errors.Is(err, graph.ErrImageBusy) {
			s.log.Debug("shared layer kept: layers are cloned from it", "image", image, "err", err)
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.store.RemoveImage(ctx, image); err != nil && !errors.Is(err, graph.ErrImageNotFound) {
			return err
		}
		s.log.Info("deleted a shared layer no host uses", "image", image)
		image = ""
		if p := info.Parent.Image; strings.HasPrefix(p, s.shared) {
			image = p
		}
	}
	return nil
}
