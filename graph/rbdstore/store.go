package rbdstore

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// CephVersion is the installed Ceph client's version (the librbd this
// binary links), for Status.
func CephVersion(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rbd", "--version").Output()
	if err != nil {
		return "unknown (rbd --version failed)"
	}
	// "ceph version 16.2.15 (hash) pacific (stable)"
	f := strings.Fields(string(out))
	if len(f) >= 3 && f[0] == "ceph" && f[1] == "version" {
		v := f[2]
		if len(f) >= 5 {
			v += " " + f[4]
		}
		return v + " (client)"
	}
	return strings.TrimSpace(string(out))
}

// Store is graph's ImageStore on an RBD pool through rbdio.
type Store struct {
	conn    *rbdio.Conn
	opts    Options
	version string
	// crash, for tests, is called between the steps of CreateSnapshot
	// and RemoveSnapshot (graph.CrashEnv); nil does nothing.
	crash graph.CrashHook
}

// Connect opens the cluster connection o names, for New.
func Connect(ctx context.Context, o Options) (*rbdio.Conn, error) {
	conn, err := rbdio.Connect(ctx, o.Config())
	if err != nil {
		return nil, fmt.Errorf("connect to the cluster (rbd.pool=%s rbd.client=%s rbd.configfile=%q): %w", o.Pool, o.Client, o.ConfigFile, err)
	}
	return conn, nil
}

// New is the store on conn, a connection to o's pool and namespace
// (Connect); the caller closes conn after the store's last use. ctx
// bounds asking the Ceph client's version (for Status). Under
// graph.CrashEnv (tests) the store kills its process at that step.
func New(ctx context.Context, conn *rbdio.Conn, o Options) *Store {
	return &Store{conn: conn, opts: o, version: CephVersion(ctx), crash: graph.CrashAtFromEnv()}
}

func (s *Store) step(name string) {
	if s.crash != nil {
		s.crash(name)
	}
}

var (
	_ graph.ImageStore     = (*Store)(nil)
	_ graph.StoreDescriber = (*Store)(nil)
	_ graph.StoreVersioner = (*Store)(nil)
	_ graph.StoreStatuser  = (*Store)(nil)
)

// storeErr adds graph's kind to an rbdio error, so the driver can tell a
// missing image from a busy one.
func storeErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rbdio.ErrNotFound):
		return fmt.Errorf("%w: %w", graph.ErrImageNotFound, err)
	case errors.Is(err, rbdio.ErrExists):
		return fmt.Errorf("%w: %w", graph.ErrImageExists, err)
	case errors.Is(err, rbdio.ErrHasChildren), errors.Is(err, rbdio.ErrBusy),
		errors.Is(err, rbdio.ErrLocked), errors.Is(err, rbdio.ErrHasSnapshots):
		return fmt.Errorf("%w: %w", graph.ErrImageBusy, err)
	}
	return err
}

func (s *Store) CreateImage(ctx context.Context, name string, size int64) error {
	return storeErr(s.conn.CreateImage(ctx, name, rbdio.CreateOptions{Size: size, DataPool: s.opts.DataPool}))
}

func (s *Store) CloneImage(ctx context.Context, parent, snap, name string) error {
	return storeErr(s.conn.Clone(ctx, parent, snap, name, rbdio.CreateOptions{DataPool: s.opts.DataPool}))
}

func (s *Store) RemoveImage(ctx context.Context, name string) error {
	return storeErr(s.conn.RemoveImage(ctx, name, rbdio.RemoveOptions{}))
}

func (s *Store) ResizeImage(ctx context.Context, name string, size int64) error {
	return storeErr(s.conn.Resize(ctx, name, size, rbdio.ResizeOptions{}))
}

func (s *Store) FlattenImage(ctx context.Context, name string) error {
	return storeErr(s.conn.Flatten(ctx, name))
}

// CreateSnapshot makes and protects image@snap; after a failure half way
// a retry finds the snapshot and only protects it.
func (s *Store) CreateSnapshot(ctx context.Context, image, snap string) error {
	if err := s.conn.CreateSnapshot(ctx, image, snap); err != nil && !errors.Is(err, rbdio.ErrExists) {
		return storeErr(err)
	}
	s.step(graph.StepSnapshotCreated)
	if err := s.conn.ProtectSnapshot(ctx, image, snap); err != nil {
		return storeErr(err)
	}
	s.step(graph.StepSnapshotProtected)
	return nil
}

// RemoveSnapshot unprotects and deletes image@snap; ErrImageBusy while
// clones of it exist, nothing when it does not exist (but the image does).
func (s *Store) RemoveSnapshot(ctx context.Context, image, snap string) error {
	err := s.conn.UnprotectSnapshot(ctx, image, snap)
	if errors.Is(err, rbdio.ErrNotFound) {
		// The image, or only its snapshot? Asking costs an open, but only
		// on this path (start-up cleaning, retries).
		if _, serr := s.conn.Stat(ctx, image); serr != nil {
			return storeErr(serr)
		}
		return nil
	}
	if err != nil {
		return storeErr(err)
	}
	s.step(graph.StepSnapshotUnprotected)
	if err := s.conn.RemoveSnapshot(ctx, image, snap); err != nil {
		return storeErr(err)
	}
	s.step(graph.StepSnapshotRemoved)
	return nil
}

func (s *Store) Children(ctx context.Context, image, snap string) ([]string, error) {
	kids, err := s.conn.Children(ctx, image, snap)
	if err != nil {
		return nil, storeErr(err)
	}
	out := make([]string, 0, len(kids))
	for _, k := range kids {
		if k.Pool == s.opts.Pool && k.Namespace == s.opts.Namespace && !k.Trash {
			out = append(out, k.Image)
		} else {
			out = append(out, k.String()) // elsewhere: still a child
		}
	}
	return out, nil
}

func (s *Store) ListImages(ctx context.Context, prefix string) ([]string, error) {
	all, err := s.conn.ListImages(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	var out []string
	for _, name := range all {
		if strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	return out, nil
}

func (s *Store) StatImage(ctx context.Context, name string) (graph.ImageInfo, error) {
	st, err := s.conn.Stat(ctx, name)
	if err != nil {
		return graph.ImageInfo{}, storeErr(err)
	}
	md, err := s.conn.Metadata(ctx, name)
	if err != nil {
		return graph.ImageInfo{}, storeErr(err)
	}
	info := graph.ImageInfo{Size: st.Size, Metadata: md}
	if st.HasParent {
		info.Parent = graph.ImageRef{Image: st.Parent.Image, Snapshot: st.Parent.Snapshot}
		if st.Parent.Pool != s.opts.Pool || st.Parent.Namespace != s.opts.Namespace {
			info.Parent.Image = st.Parent.String() // not one of ours, but a parent all the same
		}
	}
	for _, sn := range st.Snapshots {
		info.Snapshots = append(info.Snapshots, sn.Name)
	}
	return info, nil
}

// SetMetadata writes the keys one by one (rbd_metadata_set); the driver
// puts the state key, the one that matters after a crash, in the same
// call as the keys it depends on and reads a missing one as "creating".
func (s *Store) SetMetadata(ctx context.Context, name string, kv map[string]string) error {
	for k, v := range kv {
		var err error
		if v == "" {
			err = s.conn.RemoveMetadata(ctx, name, k)
		} else {
			err = s.conn.SetMetadata(ctx, name, k, v)
		}
		if err != nil {
			return storeErr(err)
		}
	}
	return nil
}

// Where is POOL or POOL/NAMESPACE.
func (s *Store) Where() string {
	if s.opts.Namespace != "" {
		return s.opts.Pool + "/" + s.opts.Namespace
	}
	return s.opts.Pool
}

func (s *Store) Location() string {
	loc := s.Where()
	if s.opts.DataPool != "" {
		loc += " (data in " + s.opts.DataPool + ")"
	}
	return loc
}

func (s *Store) Qualify(image string) string { return s.Where() + "/" + image }

func (s *Store) StoreVersion() (string, string) { return "Ceph Version", s.version }

// StoreStatus is the line about librbd's cache.
func (s *Store) StoreStatus() [][2]string {
	return [][2]string{{"librbd Cache", cacheStatus(s.opts.CachePolicy)}}
}

// OpenImage opens a layer image for a device. After a crash the dead
// process may still hold the exclusive lock until its watch times out
// (about 30 s), so a locked image is retried for Options.LockWait, every
// Options.LockRetry.
func (s *Store) OpenImage(ctx context.Context, ref graph.ImageRef, readOnly bool) (nbd.Backend, func() error, error) {
	deadline := time.Now().Add(s.opts.LockWait)
	for {
		im, err := s.conn.OpenImage(ctx, ref.Image, rbdio.OpenOptions{ReadOnly: readOnly, Snapshot: ref.Snapshot})
		if err == nil {
			return im, im.Close, nil
		}
		if !errors.Is(err, rbdio.ErrLocked) || time.Now().After(deadline) {
			return nil, nil, storeErr(err)
		}
		select {
		case <-ctx.Done():
			return nil, nil, errors.Join(storeErr(err), ctx.Err())
		case <-time.After(s.opts.LockRetry):
		}
	}
}
