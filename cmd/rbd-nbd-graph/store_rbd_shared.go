package main

import (
	"context"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// The abilities the containerd snapshotter needs beyond graph.ImageStore:
// Usage (rbd du) and publishing shared layers (rbd rename).
var (
	_ graph.UsageReporter = (*rbdStore)(nil)
	_ graph.ImageRenamer  = (*rbdStore)(nil)
)

func (s *rbdStore) DiskUsage(ctx context.Context, image string) (int64, error) {
	n, err := s.conn.DiskUsage(ctx, image)
	return n, storeErr(err)
}

func (s *rbdStore) RenameImage(ctx context.Context, from, to string) error {
	return storeErr(s.conn.RenameImage(ctx, from, to))
}
