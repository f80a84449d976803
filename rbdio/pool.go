package rbdio

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// PoolSpace is what the cluster says about one pool's room for writes.
type PoolSpace struct {
	Pool string
	// Full: writes to the pool wait until space is freed (or fail at
	// once with EDQUOT or ENOSPC under Config.AbortOnFull). The OSD map
	// marks a pool full when its quota is reached or an OSD it maps to
	// passed the cluster's full ratio.
	Full bool
	// QuotaReached: Full because of the pool's own quota
	// (`ceph osd pool set-quota`), not the cluster's.
	QuotaReached bool
	// QuotaBytes and QuotaObjects are the pool's quotas (0: none).
	QuotaBytes, QuotaObjects uint64
}

// String says it in a line, for logs and Status.
func (p PoolSpace) String() string {
	var quota []string
	if p.QuotaBytes > 0 {
		quota = append(quota, fmt.Sprintf("max_bytes %d", p.QuotaBytes))
	}
	if p.QuotaObjects > 0 {
		quota = append(quota, fmt.Sprintf("max_objects %d", p.QuotaObjects))
	}
	q := "no quota"
	if len(quota) > 0 {
		q = "quota " + strings.Join(quota, ", ")
	}
	switch {
	case p.QuotaReached:
		return fmt.Sprintf("pool %s is full: its %s is reached", p.Pool, q)
	case p.Full:
		return fmt.Sprintf("pool %s is full: the cluster is full (an OSD passed the full ratio; %s)", p.Pool, q)
	}
	return fmt.Sprintf("pool %s has room (%s)", p.Pool, q)
}

// PoolSpace reports on the connection's pool and on the other pools
// named (an image's data pool), from the monitors' OSD map: the command
// `osd pool ls detail`, whose flags "full" and "full_quota" the
// monitors set from the OSDs' and the ceph-mgr's statistics. Bounded by
// Config.ConnectTimeout (rados_mon_op_timeout) and by ctx (the call is
// abandoned, not interrupted).
//
// Wraps rados_mon_command.
func (c *Conn) PoolSpace(ctx context.Context, others ...string) ([]PoolSpace, error) {
	const op = "read pool flags"
	if err := c.check(ctx, op, "pool "+c.cfg.Pool); err != nil {
		return nil, err
	}
	type reply struct {
		out []byte
		err error
	}
	done := make(chan reply, 1)
	go func() {
		out, _, err := c.rados.MonCommand([]byte(`{"prefix":"osd pool ls","detail":"detail","format":"json"}`))
		done <- reply{out, err}
	}()
	var r reply
	select {
	case r = <-done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, wrap(r.err, op, "pool "+c.cfg.Pool, "rados_mon_command")
	}
	var pools []poolEntry
	if err := json.Unmarshal(r.out, &pools); err != nil {
		return nil, &Error{Op: op, Object: "pool " + c.cfg.Pool, Func: "rados_mon_command", Kind: ErrInvalid,
			Hint: fmt.Sprintf("unexpected reply to osd pool ls detail: %v", err)}
	}
	want := []string{c.cfg.Pool}
	for _, o := range others {
		if o != "" && !slices.Contains(want, o) {
			want = append(want, o)
		}
	}
	var out []PoolSpace
	for _, name := range want {
		i := slices.IndexFunc(pools, func(p poolEntry) bool { return p.Name == name })
		if i < 0 {
			return nil, &Error{Op: op, Object: "pool " + name, Kind: ErrNotFound, Hint: "the OSD map has no such pool"}
		}
		flags := strings.Split(pools[i].Flags, ",")
		out = append(out, PoolSpace{
			Pool:         name,
			Full:         slices.Contains(flags, "full") || slices.Contains(flags, "full_quota"),
			QuotaReached: slices.Contains(flags, "full_quota"),
			QuotaBytes:   pools[i].QuotaBytes,
			QuotaObjects: pools[i].QuotaObjects,
		})
	}
	return out, nil
}

// poolEntry is the part of `osd pool ls detail`'s JSON PoolSpace reads.
type poolEntry struct {
	Name         string `json:"pool_name"`
	Flags        string `json:"flags_names"`
	QuotaBytes   uint64 `json:"quota_max_bytes"`
	QuotaObjects uint64 `json:"quota_max_objects"`
}
