package graphtest

import (
	"context"
	"fmt"
	"os"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

var _ graph.ImageRenamer = (*FileStore)(nil)

// RenameImage renames an image and its snapshots' files, and points its
// clones at the new name, as RBD's rename (which links clones by image
// ID) leaves them working. ErrImageExists when to is taken; an attached
// image is busy.
func (s *FileStore) RenameImage(ctx context.Context, from, to string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(from)
	if err != nil {
		return err
	}
	if s.cat.Images[to] != nil {
		return fmt.Errorf("filestore: rename %s to %s: %w", from, to, graph.ErrImageExists)
	}
	refs := []graph.ImageRef{{Image: from}}
	for snap := range im.Snapshots {
		refs = append(refs, graph.ImageRef{Image: from, Snapshot: snap})
	}
	for _, r := range refs {
		if s.inUse[r.String()] > 0 {
			return fmt.Errorf("filestore: rename %s: %s is attached: %w", from, r, graph.ErrImageBusy)
		}
	}
	for _, r := range refs {
		if err := os.Rename(s.DataPath(r), s.DataPath(graph.ImageRef{Image: to, Snapshot: r.Snapshot})); err != nil {
			return err
		}
	}
	for _, other := range s.cat.Images {
		if other.Parent.Image == from {
			other.Parent.Image = to
		}
	}
	delete(s.cat.Images, from)
	s.cat.Images[to] = im
	return s.save()
}
