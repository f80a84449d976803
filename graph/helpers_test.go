package graph_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
)

// env is one driver on a FileStore and loop devices, with the real
// ext4 (or xfs), mount(2) and resize tools.
type env struct {
	t     *testing.T
	store *graphtest.FileStore
	att   *graphtest.LoopAttacher
	fs    *faultyFS
	cfg   graph.Config
	d     *graph.Driver
}

const testBaseSize = 64 << 20

func testOptions() graph.Options {
	o := graph.DefaultOptions()
	o.BaseSize = testBaseSize
	o.ImagePrefix = "t-"
	return o
}

// unmountAtPut is newEnv's mutate for tests of when a layer is
// unmounted: Put drops the last reference's mount at once.
func unmountAtPut(c *graph.Config) { c.Options.UnmountDelay = 0 }

// newEnv makes a store and a driver; mutate may change the config first.
func newEnv(t *testing.T, mutate func(*graph.Config)) *env {
	t.Helper()
	return newEnvCrash(t, mutate, false)
}

// newEnvCrash with crashes set opens a first driver that is never closed.
func newEnvCrash(t *testing.T, mutate func(*graph.Config), crashes bool) *env {
	t.Helper()
	graphtest.RequireLoop(t)
	store, err := graphtest.OpenFileStore(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, store: store, att: graphtest.NewLoopAttacher(store)}
	e.cfg = graph.Config{
		Home:     filepath.Join(t.TempDir(), "home"),
		Options:  testOptions(),
		Store:    store,
		Attacher: e.att,
		HostID:   "host-a",
		Logger:   testLogger(t),
	}
	if mutate != nil {
		mutate(&e.cfg)
	}
	t.Cleanup(func() { e.assertReleased() })
	if crashes {
		e.d = e.openAbandoned()
	} else {
		e.d = e.open()
	}
	return e
}

// open starts a driver on the env's config (again, after a restart),
// closing it at the end of the test.
func (e *env) open() *graph.Driver {
	e.t.Helper()
	d := e.openAbandoned()
	e.t.Cleanup(func() {
		if err := d.Close(context.Background()); err != nil {
			e.t.Errorf("Close: %v", err)
		}
	})
	return d
}

// openAbandoned starts a driver that is never closed: a crash is
// simulated by opening another one on the same store and home.
func (e *env) openAbandoned() *graph.Driver {
	e.t.Helper()
	real, err := graph.NewFilesystem(graph.FilesystemConfig{Type: e.cfg.Options.FS, MkfsArgs: e.cfg.Options.MkfsArgs, MountOptions: e.cfg.Options.MountOptions})
	if err != nil {
		e.t.Fatal(err)
	}
	e.fs = &faultyFS{Filesystem: real}
	cfg := e.cfg
	cfg.Filesystem = e.fs
	d, err := graph.New(context.Background(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// assertReleased checks that nothing is left mounted under home and no
// loop device serves the store (after every driver is closed).
func (e *env) assertReleased() {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(e.cfg.Home))
	if err != nil {
		e.t.Error(err)
	}
	for _, m := range mounts {
		e.t.Errorf("left mounted: %s (%s)", m.Mountpoint, m.Source)
		_ = os.Remove(m.Mountpoint)
	}
	stale, err := e.att.Stale(context.Background())
	if err != nil {
		e.t.Error(err)
	}
	for _, s := range stale {
		e.t.Errorf("left attached: %s serving %v", s.Path(), s.Request().Ref())
		_ = s.Detach(context.Background())
	}
}

func (e *env) create(id, parent string) {
	e.t.Helper()
	if err := e.d.Create(context.Background(), id, parent, graph.CreateOptions{}); err != nil {
		e.t.Fatalf("Create(%s, %s): %v", id, parent, err)
	}
}

func (e *env) get(id string) string {
	e.t.Helper()
	dir, err := e.d.Get(context.Background(), id)
	if err != nil {
		e.t.Fatalf("Get(%s): %v", id, err)
	}
	return dir
}

func (e *env) put(id string) {
	e.t.Helper()
	if err := e.d.Put(context.Background(), id); err != nil {
		e.t.Fatalf("Put(%s): %v", id, err)
	}
}

func (e *env) remove(id string) {
	e.t.Helper()
	if err := e.d.Remove(context.Background(), id); err != nil {
		e.t.Fatalf("Remove(%s): %v", id, err)
	}
}

// write writes a file into layer id (Get, write, Put).
func (e *env) write(id, name, content string) {
	e.t.Helper()
	dir := e.get(id)
	defer e.put(id)
	if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		e.t.Fatalf("write %s in %s: %v", name, id, err)
	}
}

// read returns a file of layer id, or "<missing>".
func (e *env) read(id, name string) string {
	e.t.Helper()
	dir := e.get(id)
	defer e.put(id)
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return "<missing>"
	}
	if err != nil {
		e.t.Fatalf("read %s in %s: %v", name, id, err)
	}
	return string(b)
}

func (e *env) metadata(id string) map[string]string {
	e.t.Helper()
	md, err := e.d.Metadata(context.Background(), id)
	if err != nil {
		e.t.Fatalf("Metadata(%s): %v", id, err)
	}
	return md
}

func (e *env) depth(id string) int {
	e.t.Helper()
	n, err := strconv.Atoi(e.metadata(id)["CloneDepth"])
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// images lists the store's images with the prefix, once the layers
// removed so far are deleted.
func (e *env) images(prefix string) []string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.d.WaitRemovals(ctx); err != nil {
		e.t.Fatalf("WaitRemovals: %v", err)
	}
	names, err := e.store.ListImages(ctx, prefix)
	if err != nil {
		e.t.Fatal(err)
	}
	return names
}

func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	ok, err := mountinfo.Mounted(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return ok
}

// faultyFS is the real Filesystem with switchable failures, to test the
// rollback paths.
type faultyFS struct {
	graph.Filesystem
	failMount atomic.Bool
	failGrow  atomic.Bool
	failSync  atomic.Bool
	mounts    atomic.Int32 // Mount calls
}

var errInjected = errors.New("injected failure")

func (f *faultyFS) Mount(ctx context.Context, device, dir string, readOnly bool) error {
	if f.failMount.Load() {
		return errInjected
	}
	f.mounts.Add(1)
	return f.Filesystem.Mount(ctx, device, dir, readOnly)
}

func (f *faultyFS) Sync(ctx context.Context, dir string) error {
	if f.failSync.Load() {
		return errInjected
	}
	return f.Filesystem.Sync(ctx, dir)
}

func (f *faultyFS) Grow(ctx context.Context, device, dir string) error {
	if f.failGrow.Load() {
		return errInjected
	}
	return f.Filesystem.Grow(ctx, device, dir)
}

func hasPrefixAll(names []string, prefix string) bool {
	for _, n := range names {
		if !strings.HasPrefix(n, prefix) {
			return false
		}
	}
	return true
}

// testLogger sends the driver's log to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
