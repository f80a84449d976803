package graph_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
)

// A restart after a clean Close keeps every layer, and the base image is
// not made again.
func TestRestartKeepsLayers(t *testing.T) {
	e := newEnv(t, nil)
	e.create("a", "")
	e.write("a", "f", "kept")
	e.create("b", "a")
	baseFile := e.store.DataPath(graph.ImageRef{Image: "t-base"})
	before, err := os.Stat(baseFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.d = e.open()
	if !e.d.Exists("a") || !e.d.Exists("b") {
		t.Fatalf("layers after restart: %v", e.d.Layers())
	}
	if got := e.read("b", "f"); got != "kept" {
		t.Fatalf("b reads %q after restart", got)
	}
	after, err := os.Stat(baseFile)
	if err != nil || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("base image was made again on restart (%v)", err)
	}
	// b is still cloned from a's snapshot: a is attached read-only.
	e.get("a")
	defer e.put("a")
	if e.metadata("a")["ReadOnly"] != "true" {
		t.Fatal("after restart a parent is attached read-write")
	}
}

// A crash (no Close) with layers mounted: the next run adopts the
// devices and mounts, and the data written before the crash is there.
func TestRestartAdoptsMountedLayers(t *testing.T) {
	e := newEnvCrash(t, unmountAtPut, true)
	e.create("a", "")
	e.create("ro", "")
	e.create("kid", "ro")
	dir := e.get("a")
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("before crash"), 0o644); err != nil {
		t.Fatal(err)
	}
	roDir := e.get("ro")
	dev := e.metadata("a")["Device"]
	// The crash: the first driver is dropped without Close.
	e.d = e.open()

	if !isMounted(t, filepath.Dir(dir)) || !isMounted(t, filepath.Dir(roDir)) {
		t.Fatal("restart unmounted layers in use")
	}
	md := e.metadata("a")
	if md["Device"] != dev {
		t.Fatalf("device after restart %q, want the adopted %q", md["Device"], dev)
	}
	if e.metadata("ro")["ReadOnly"] != "true" {
		t.Fatal("adopted snapshot mount lost its read-only flag")
	}
	if got := e.get("a"); got != dir {
		t.Fatalf("Get after restart: %s, want %s", got, dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil || string(b) != "before crash" {
		t.Fatalf("after restart: %q, %v", b, err)
	}
	// The adopted mount counts one reference, plus the Get above.
	e.put("a")
	if !isMounted(t, filepath.Dir(dir)) {
		t.Fatal("unmounted with a reference left")
	}
	e.put("a")
	if isMounted(t, filepath.Dir(dir)) {
		t.Fatal("still mounted after the last Put")
	}
	e.put("ro")
}

// Layers a crash left creating or removing are cleaned at start-up, as is
// an image cloned but never given metadata; devices of layers that are
// gone are detached.
func TestRestartCleansUnfinishedLayers(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	e.create("good", "")
	e.create("doomed", "")
	if err := e.d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// What crashes leave behind:
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.store.CloneImage(ctx, "t-base", "layer", "t-layer-creating"))
	must(e.store.SetMetadata(ctx, "t-layer-creating", map[string]string{"rbd-nbd-graph.layer": `{"state":"creating"}`}))
	must(e.store.CloneImage(ctx, "t-base", "layer", "t-layer-nometa"))
	// A record this version cannot read (a newer driver's?): left alone.
	must(e.store.CloneImage(ctx, "t-base", "layer", "t-layer-alien"))
	must(e.store.SetMetadata(ctx, "t-layer-alien", map[string]string{"rbd-nbd-graph.layer": "v9:ready"}))
	must(e.store.SetMetadata(ctx, "t-layer-doomed", map[string]string{"rbd-nbd-graph.layer": `{"state":"removing"}`}))
	// A half-made child of a half-made parent.
	must(e.store.CreateSnapshot(ctx, "t-layer-creating", "layer"))
	must(e.store.CloneImage(ctx, "t-layer-creating", "layer", "t-layer-creatingkid"))
	// A device left attached to an image that is about to be cleaned,
	// by another process (its own view of the store).
	other, err := graphtest.OpenFileStore(e.store.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := graphtest.NewLoopAttacher(other).Attach(ctx, graph.AttachRequest{Image: "t-layer-nometa"}); err != nil {
		t.Fatal(err)
	}

	e.d = e.open()
	if got := e.images("t-"); !slices.Equal(got, []string{"t-base", "t-layer-alien", "t-layer-good"}) {
		t.Fatalf("images after start-up cleaning: %v", got)
	}
	must(e.store.RemoveImage(ctx, "t-layer-alien"))
	if got := e.d.Layers(); !slices.Equal(got, []string{"good"}) {
		t.Fatalf("layers after start-up cleaning: %v", got)
	}
	if n := len(e.att.Attached()); n != 0 {
		t.Fatalf("%d devices attached after start-up", n)
	}
}

// A crash while the base image was being made: it is made again.
func TestRestartRemakesAnUnfinishedBase(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	if err := e.d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.store.RemoveSnapshot(ctx, "t-base", "layer"); err != nil {
		t.Fatal(err)
	}
	if err := e.store.SetMetadata(ctx, "t-base", map[string]string{"rbd-nbd-graph.layer": `{"state":"creating","owner":"host-a:` + e.cfg.Home + `"}`}); err != nil {
		t.Fatal(err)
	}
	e.d = e.open()
	e.create("l", "")
	e.write("l", "f", "works")
	if got := e.read("l", "f"); got != "works" {
		t.Fatalf("read %q", got)
	}
}

// Two hosts on one store: by default their prefixes differ, so their
// layers never collide; one prefix claimed by two hosts is refused.
func TestTwoHostsShareAStore(t *testing.T) {
	a := newEnv(t, func(c *graph.Config) { c.Options.ImagePrefix = "" })
	b := &env{t: t, store: a.store, att: a.att}
	b.cfg = a.cfg
	b.cfg.Home = filepath.Join(t.TempDir(), "home-b")
	b.cfg.HostID = "host-b"
	b.d = b.open()
	if a.d.Prefix() == b.d.Prefix() {
		t.Fatalf("two hosts got the same prefix %q", a.d.Prefix())
	}
	a.create("same", "")
	b.create("same", "")
	a.write("same", "who", "a")
	b.write("same", "who", "b")
	if a.read("same", "who") != "a" || b.read("same", "who") != "b" {
		t.Fatal("hosts see each other's layer")
	}
	b.remove("same")
	if !a.d.Exists("same") {
		t.Fatal("host b removed host a's layer")
	}
	if !hasPrefixAll(a.images(a.d.Prefix()), a.d.Prefix()) {
		t.Fatal("prefix listing mixed hosts")
	}

	c := b.cfg
	c.Options.ImagePrefix = a.d.Prefix()
	c.Home = filepath.Join(t.TempDir(), "home-c")
	_, err := graph.New(context.Background(), c)
	if !errors.Is(err, graph.ErrOwnedElsewhere) {
		t.Fatalf("a second host on the same prefix: %v, want ErrOwnedElsewhere", err)
	}
}

// Two drivers on one host and one pool, one's prefix a prefix of the
// other's (rbd.imageprefix=d- beside d-b-): a restart of the first must
// leave the second's mounted layer alone, device and filesystem.
func TestRestartLeavesAnotherDriversDevices(t *testing.T) {
	a := newEnv(t, func(c *graph.Config) { c.Options.ImagePrefix = "d-" })
	b := &env{t: t, store: a.store, att: a.att}
	b.cfg = a.cfg
	b.cfg.Home = filepath.Join(t.TempDir(), "home-b")
	b.cfg.Options.ImagePrefix = "d-b-"
	b.d = b.open()
	b.create("x", "")
	b.write("x", "f", "before")
	mnt := b.get("x")

	// a restarts (a crash and a new process on the same home).
	a2 := *a
	a2.d = a.open()
	if !isMounted(t, filepath.Dir(mnt)) {
		t.Fatalf("another driver's restart unmounted %s", mnt)
	}
	if got := b.read("x", "f"); got != "before" {
		t.Fatalf("another driver's layer reads %q after the restart", got)
	}
	b.write("x", "f", "after")
	if got := b.read("x", "f"); got != "after" {
		t.Fatalf("another driver's layer reads %q after a write", got)
	}
	b.put("x")
}
