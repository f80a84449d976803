package rbdstore

import (
	"context"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

var _ graph.SpaceReporter = (*Store)(nil)

// Space reports whether the pool, and the data pool if one is set, is
// full, from the monitors' OSD map (rbdio.Conn.PoolSpace).
func (s *Store) Space(ctx context.Context) ([]graph.PoolSpace, error) {
	var pools []rbdio.PoolSpace
	err := s.do(ctx, func(c *rbdio.Conn) (err error) { pools, err = c.PoolSpace(ctx, s.opts.DataPool); return err })
	if err != nil {
		return nil, err
	}
	out := make([]graph.PoolSpace, 0, len(pools))
	for _, p := range pools {
		out = append(out, graph.PoolSpace{Pool: p.Pool, Full: p.Full, Detail: p.String()})
	}
	return out, nil
}

// AbortOnFull reports rbd.abortonfull: whether writes to a full pool
// fail with ENOSPC instead of waiting.
func (s *Store) AbortOnFull() bool { return s.opts.AbortOnFull }
