package rbdstore

import (
	"context"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The abilities the containerd snapshotter needs beyond graph.ImageStore:
// Usage (rbd du) and publishing shared layers (rbd rename).
var (
	_ graph.UsageReporter = (*Store)(nil)
	_ graph.ImageRenamer  = (*Store)(nil)
)

// DiskUsage is what the image wrote itself (rbd du's USED).
func (s *Store) DiskUsage(ctx context.Context, image string) (int64, error) {
	var n int64
	err := s.do(ctx, func(c *rbdio.Conn) (err error) { n, err = c.DiskUsage(ctx, image); return err })
	return n, storeErr(err)
}

// RenameImage renames atomically; graph.ErrImageExists when to is taken.
func (s *Store) RenameImage(ctx context.Context, from, to string) error {
	return storeErr(s.do(ctx, func(c *rbdio.Conn) error { return c.RenameImage(ctx, from, to) }))
}
