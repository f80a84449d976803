package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// openRBDBackend connects to the cluster the options name and returns
// the graph driver's store (the pool, through rbdio) and attacher (the
// images served to the kernel through package nbd, in this process). It
// fails early, with the kernel-support message, where NBD is missing.
func openRBDBackend(ctx context.Context, o graph.Options, log *slog.Logger) (dockerplugin.Backend, error) {
	if err := probeNBD(ctx, log); err != nil {
		return dockerplugin.Backend{}, err
	}
	conn, err := rbdio.Connect(ctx, rbdio.Config{
		ConfFile:  o.ConfigFile,
		Keyring:   o.Keyring,
		ID:        o.Client,
		Pool:      o.Pool,
		Namespace: o.Namespace,
		// Layers are remounted under a restarted driver: writes it
		// acknowledged must be in the cluster, not in a dead cache.
		CachePolicy: rbdio.CachePolicy(o.CachePolicy),
	})
	if err != nil {
		return dockerplugin.Backend{}, fmt.Errorf("connect to the cluster (rbd.pool=%s rbd.client=%s rbd.configfile=%q): %w", o.Pool, o.Client, o.ConfigFile, err)
	}
	store := &rbdStore{conn: conn, dataPool: o.DataPool, pool: o.Pool, namespace: o.Namespace, version: cephVersion(ctx)}
	att := &nbdAttacher{open: store.openImage, where: store.where(), opts: o.NBD, log: log}
	return dockerplugin.Backend{Store: store, Attacher: att, Close: conn.Close}, nil
}

// probeNBD attaches a tiny in-memory device and detaches it again, so a
// host without NBD is told so when dockerd starts rather than at the
// first `docker run`. It also loads the nbd module.
func probeNBD(ctx context.Context, log *slog.Logger) error {
	dev, err := nbd.Attach(ctx, nbd.NewMemory(1<<20), nbd.AttachOptions{Index: nbd.IndexAny, ReadOnly: true,
		BackendID: backendPrefix + "probe", Logger: log})
	if err != nil {
		return fmt.Errorf("the graph driver needs kernel NBD devices: %w", err)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return dev.Detach(dctx)
}

// cephVersion is the installed Ceph client's version (the librbd this
// binary links), for Status.
func cephVersion(ctx context.Context) string {
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

// rbdStore is graph's ImageStore on an RBD pool through rbdio.
type rbdStore struct {
	conn      *rbdio.Conn
	dataPool  string
	pool      string
	namespace string
	version   string
}

var (
	_ graph.ImageStore     = (*rbdStore)(nil)
	_ graph.StoreDescriber = (*rbdStore)(nil)
	_ graph.StoreVersioner = (*rbdStore)(nil)
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

func (s *rbdStore) CreateImage(ctx context.Context, name string, size int64) error {
	return storeErr(s.conn.CreateImage(ctx, name, rbdio.CreateOptions{Size: size, DataPool: s.dataPool}))
}

func (s *rbdStore) CloneImage(ctx context.Context, parent, snap, name string) error {
	return storeErr(s.conn.Clone(ctx, parent, snap, name, rbdio.CreateOptions{DataPool: s.dataPool}))
}

func (s *rbdStore) RemoveImage(ctx context.Context, name string) error {
	return storeErr(s.conn.RemoveImage(ctx, name, rbdio.RemoveOptions{}))
}

func (s *rbdStore) ResizeImage(ctx context.Context, name string, size int64) error {
	return storeErr(s.conn.Resize(ctx, name, size, rbdio.ResizeOptions{}))
}

func (s *rbdStore) FlattenImage(ctx context.Context, name string) error {
	return storeErr(s.conn.Flatten(ctx, name))
}

// CreateSnapshot makes and protects image@snap; after a failure half way
// a retry finds the snapshot and only protects it.
func (s *rbdStore) CreateSnapshot(ctx context.Context, image, snap string) error {
	if err := s.conn.CreateSnapshot(ctx, image, snap); err != nil && !errors.Is(err, rbdio.ErrExists) {
		return storeErr(err)
	}
	return storeErr(s.conn.ProtectSnapshot(ctx, image, snap))
}

// RemoveSnapshot unprotects and deletes image@snap; ErrImageBusy while
// clones of it exist, nothing when it does not exist (but the image does).
func (s *rbdStore) RemoveSnapshot(ctx context.Context, image, snap string) error {
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
	return storeErr(s.conn.RemoveSnapshot(ctx, image, snap))
}

func (s *rbdStore) Children(ctx context.Context, image, snap string) ([]string, error) {
	kids, err := s.conn.Children(ctx, image, snap)
	if err != nil {
		return nil, storeErr(err)
	}
	out := make([]string, 0, len(kids))
	for _, k := range kids {
		if k.Pool == s.pool && k.Namespace == s.namespace && !k.Trash {
			out = append(out, k.Image)
		} else {
			out = append(out, k.String()) // elsewhere: still a child
		}
	}
	return out, nil
}

func (s *rbdStore) ListImages(ctx context.Context, prefix string) ([]string, error) {
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

func (s *rbdStore) StatImage(ctx context.Context, name string) (graph.ImageInfo, error) {
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
		if st.Parent.Pool != s.pool || st.Parent.Namespace != s.namespace {
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
func (s *rbdStore) SetMetadata(ctx context.Context, name string, kv map[string]string) error {
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

// where is POOL or POOL/NAMESPACE.
func (s *rbdStore) where() string {
	if s.namespace != "" {
		return s.pool + "/" + s.namespace
	}
	return s.pool
}

func (s *rbdStore) Location() string {
	loc := s.where()
	if s.dataPool != "" {
		loc += " (data in " + s.dataPool + ")"
	}
	return loc
}

func (s *rbdStore) Qualify(image string) string { return s.where() + "/" + image }

func (s *rbdStore) StoreVersion() (string, string) { return "Ceph Version", s.version }

// openImage opens a layer image for a device. After a crash the dead
// process may still hold the exclusive lock until its watch times out
// (about 30 s), so a locked image is retried for a while.
func (s *rbdStore) openImage(ctx context.Context, ref graph.ImageRef, readOnly bool) (nbd.Backend, func() error, error) {
	deadline := time.Now().Add(90 * time.Second)
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
		case <-time.After(2 * time.Second):
		}
	}
}
