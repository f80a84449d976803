package main

import (
	"context"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

var _ graph.SpaceReporter = (*rbdStore)(nil)

// Space reports whether the pool, and the data pool if one is set, is
// full, from the monitors' OSD map (rbdio.Conn.PoolSpace).
func (s *rbdStore) Space(ctx context.Context) ([]graph.PoolSpace, error) {
	pools, err := s.conn.PoolSpace(ctx, s.dataPool)
	if err != nil {
		return nil, err
	}
	out := make([]graph.PoolSpace, 0, len(pools))
	for _, p := range pools {
		out = append(out, graph.PoolSpace{Pool: p.Pool, Full: p.Full, Detail: p.String()})
	}
	return out, nil
}
