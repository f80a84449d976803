package rbdstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	opts    Options
	version string
	log     *slog.Logger
	// crash, for tests, is called between the steps of CreateSnapshot
	// and RemoveSnapshot (graph.CrashEnv); nil does nothing.
	crash graph.CrashHook

	conns *sessions
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
// (Connect), which the store owns from now on: after a blocklisting it
// replaces it with a new one (Connect again), and Close closes the
// last. ctx bounds asking the Ceph client's version (for Status). Under
// graph.CrashEnv (tests) the store kills its process at that step.
func New(ctx context.Context, conn *rbdio.Conn, o Options, log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	connect := func(ctx context.Context) (*rbdio.Conn, error) { return Connect(ctx, o) }
	return &Store{opts: o, version: CephVersion(ctx), log: log, crash: graph.CrashAtFromEnv(),
		conns: newSessions(conn, connect, log)}
}

// Close closes the layers' images still open and the cluster
// connection; later calls fail (rbdio.ErrClosed).
func (s *Store) Close() error { return s.conns.close() }

// Observe makes o follow the store's cluster connection: down while a
// blocklisted one is being renewed (or its renewal keeps failing), up
// again with BlocklistRecovered once a new one is open.
func (s *Store) Observe(o ClusterObserver) { s.conns.observe(o) }

// do runs a metadata operation on the store's connection. When it fails
// because the cluster blocklisted this client, the store opens a new
// connection (once for all callers, sessions.renew) and runs it once
// more there: an operation the OSDs refused with ESHUTDOWN was not
// applied, and a multi-step one (create, clone) half applied before the
// blocklisting leaves what a crash at that step leaves, which the
// driver's start-up and retries already handle.
func (s *Store) do(ctx context.Context, fn func(c *rbdio.Conn) error) error {
	ss := s.conns.acquire()
	err := fn(ss.conn)
	s.conns.release(ss)
	if !blocklisted(err) {
		return err
	}
	next, rerr := s.conns.renew(ctx, ss)
	if rerr != nil {
		return errors.Join(err, rerr)
	}
	defer s.conns.release(next)
	return fn(next.conn)
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
	return storeErr(s.do(ctx, func(c *rbdio.Conn) error {
		return c.CreateImage(ctx, name, rbdio.CreateOptions{Size: size, DataPool: s.opts.DataPool})
	}))
}

func (s *Store) CloneImage(ctx context.Context, parent, snap, name string) error {
	return storeErr(s.do(ctx, func(c *rbdio.Conn) error {
		return c.Clone(ctx, parent, snap, name, rbdio.CreateOptions{DataPool: s.opts.DataPool})
	}))
}

func (s *Store) RemoveImage(ctx context.Context, name string) error {
	return storeErr(s.do(ctx, func(c *rbdio.Conn) error { return c.RemoveImage(ctx, name, rbdio.RemoveOptions{}) }))
}

func (s *Store) ResizeImage(ctx context.Context, name string, size int64) error {
	return storeErr(s.do(ctx, func(c *rbdio.Conn) error { return c.Resize(ctx, name, size, rbdio.ResizeOptions{}) }))
}

func (s *Store) FlattenImage(ctx context.Context, name string) error {
	return storeErr(s.do(ctx, func(c *rbdio.Conn) error { return c.Flatten(ctx, name) }))
}

// CreateSnapshot makes and protects image@snap; after a failure half way
// a retry finds the snapshot and only protects it.
func (s *Store) CreateSnapshot(ctx context.Context, image, snap string) error {
	if err := s.do(ctx, func(c *rbdio.Conn) error { return c.CreateSnapshot(ctx, image, snap) }); err != nil && !errors.Is(err, rbdio.ErrExists) {
		return storeErr(err)
	}
	s.step(graph.StepSnapshotCreated)
	if err := s.do(ctx, func(c *rbdio.Conn) error { return c.ProtectSnapshot(ctx, image, snap) }); err != nil {
		return storeErr(err)
	}
	s.step(graph.StepSnapshotProtected)
	return nil
}

// RemoveSnapshot unprotects and deletes image@snap; ErrImageBusy while
// clones of it exist, nothing when it does not exist (but the image does).
func (s *Store) RemoveSnapshot(ctx context.Context, image, snap string) error {
	err := s.do(ctx, func(c *rbdio.Conn) error { return c.UnprotectSnapshot(ctx, image, snap) })
	if errors.Is(err, rbdio.ErrNotFound) {
		// The image, or only its snapshot? Asking costs an open, but only
		// on this path (start-up cleaning, retries).
		if serr := s.do(ctx, func(c *rbdio.Conn) error { _, err := c.Stat(ctx, image); return err }); serr != nil {
			return storeErr(serr)
		}
		return nil
	}
	if err != nil {
		return storeErr(err)
	}
	s.step(graph.StepSnapshotUnprotected)
	if err := s.do(ctx, func(c *rbdio.Conn) error { return c.RemoveSnapshot(ctx, image, snap) }); err != nil {
		return storeErr(err)
	}
	s.step(graph.StepSnapshotRemoved)
	return nil
}

func (s *Store) Children(ctx context.Context, image, snap string) ([]string, error) {
	var kids []rbdio.ImageSpec
	err := s.do(ctx, func(c *rbdio.Conn) (err error) { kids, err = c.Children(ctx, image, snap); return err })
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
	var all []string
	err := s.do(ctx, func(c *rbdio.Conn) (err error) { all, err = c.ListImages(ctx); return err })
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
	var st rbdio.ImageInfo
	var md map[string]string
	err := s.do(ctx, func(c *rbdio.Conn) (err error) {
		if st, err = c.Stat(ctx, name); err != nil {
			return err
		}
		md, err = c.Metadata(ctx, name)
		return err
	})
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

// SetMetadata writes the keys with values in one write to the image's
// header, without opening the image (rbdio.Conn.SetMetadataDirect: an
// open costs the driver's create and remove several round trips and the
// exclusive lock), then removes the keys whose value is "" one by one
// (rbd_metadata_remove). The driver writes its state record, the key
// that matters after a crash, alone.
func (s *Store) SetMetadata(ctx context.Context, name string, kv map[string]string) error {
	set := make(map[string]string, len(kv))
	for k, v := range kv {
		if v != "" {
			set[k] = v
		}
	}
	if len(set) > 0 {
		if err := s.do(ctx, func(c *rbdio.Conn) error { return c.SetMetadataDirect(ctx, name, set) }); err != nil {
			return storeErr(err)
		}
	}
	for k, v := range kv {
		if v != "" {
			continue
		}
		if err := s.do(ctx, func(c *rbdio.Conn) error { return c.RemoveMetadata(ctx, name, k) }); err != nil {
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

// StoreStatus is the lines about librbd's cache and who calls librbd
// and, after a blocklisting, the connection's renewals and the layers
// fenced off.
func (s *Store) StoreStatus() [][2]string {
	st := [][2]string{{"librbd Cache", cacheStatus(s.opts.CachePolicy)}, {"librbd Submit", submitStatus(s.opts.Submit)}}
	return append(st, s.conns.status()...)
}

// OpenImage opens a layer image for a device. After a crash the dead
// process may still hold the exclusive lock until its watch times out
// (about 30 s), so a locked image is retried for Options.LockWait, every
// Options.LockRetry. The image is served through a Reopener on the
// store's connection: after a blocklisting it is reopened on the new
// one (sessions.go).
func (s *Store) OpenImage(ctx context.Context, ref graph.ImageRef, readOnly bool) (nbd.Backend, func() error, error) {
	deadline := time.Now().Add(s.opts.LockWait)
	opts := rbdio.OpenOptions{ReadOnly: readOnly, Snapshot: ref.Snapshot}
	for {
		first, err := s.conns.openImage(ctx, ref.Image, opts)
		if err == nil {
			r := s.conns.serve(first, ref.Image, opts, policyFor(s.opts.Config(), s.opts.ReopenWait))
			return r, r.Close, nil
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
