package graph_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"golang.org/x/sys/unix"
)

func TestFileStoreKeepsTheStoreContract(t *testing.T) {
	store, err := graphtest.OpenFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	graphtest.StoreSuite(t, store, "suite-")
}

func TestCreateEmptyLayer(t *testing.T) {
	e := newEnv(t, nil)
	e.create("empty", "")
	if !e.d.Exists("empty") {
		t.Fatal("Exists(empty) = false after Create")
	}
	dir := e.get("empty")
	defer e.put("empty")
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o755 || st.Uid != 0 || st.Gid != 0 {
		t.Fatalf("root of an empty layer: mode %o owner %d:%d, want 755 0:0", st.Mode&0o7777, st.Uid, st.Gid)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("empty layer lists %v (lost+found must stay outside rootfs)", ents)
	}
	want := []string{"t-base", "t-layer-empty"}
	if got := e.images("t-"); !slices.Equal(got, want) {
		t.Fatalf("images %v, want %v", got, want)
	}
}

func TestLayerChainSeesParentsAndNotChildren(t *testing.T) {
	e := newEnv(t, nil)
	e.create("a", "")
	e.write("a", "etc/a", "from a")
	e.create("b", "a")
	e.write("b", "etc/b", "from b")
	e.create("c", "b")
	e.write("c", "etc/a", "c overwrote a")

	for _, tc := range []struct{ layer, file, want string }{
		{"a", "etc/a", "from a"}, {"a", "etc/b", "<missing>"},
		{"b", "etc/a", "from a"}, {"b", "etc/b", "from b"},
		{"c", "etc/a", "c overwrote a"}, {"c", "etc/b", "from b"},
	} {
		if got := e.read(tc.layer, tc.file); got != tc.want {
			t.Errorf("%s:%s = %q, want %q", tc.layer, tc.file, got, tc.want)
		}
	}
	md := e.metadata("c")
	if md["Parent"] != "b" || md["CloneOf"] != "t-layer-b@layer" || md["CloneDepth"] != "3" {
		t.Fatalf("metadata of c: %v", md)
	}
}

func TestParentIsAttachedReadOnlyFromItsSnapshot(t *testing.T) {
	e := newEnv(t, nil)
	e.create("p", "")
	e.write("p", "f", "v1")
	e.create("child", "p")

	dir := e.get("p")
	defer e.put("p")
	md := e.metadata("p")
	if md["ReadOnly"] != "true" {
		t.Fatalf("a parent layer is attached with ReadOnly=%q, want true", md["ReadOnly"])
	}
	err := os.WriteFile(filepath.Join(dir, "g"), []byte("x"), 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("writing into a parent layer: %v, want EROFS", err)
	}
	if ref := e.att.Attached()[md["Device"]]; ref.Snapshot != "layer" {
		t.Fatalf("parent attached from %v, want its snapshot", ref)
	}
}

func TestSnapshotOfAMountedLayerIsConsistent(t *testing.T) {
	e := newEnv(t, nil)
	e.create("p", "")
	dir := e.get("p")
	// Written but not synced: the freeze before the snapshot must flush it.
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("written while mounted"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.create("child", "p")
	// The parent stays writable for its current user.
	if err := os.WriteFile(filepath.Join(dir, "after"), []byte("later"), 0o644); err != nil {
		t.Fatalf("write after snapshot: %v", err)
	}
	e.put("p")
	if got := e.read("child", "f"); got != "written while mounted" {
		t.Fatalf("child sees %q", got)
	}
	if got := e.read("child", "after"); got != "<missing>" {
		t.Fatalf("child sees a write made after its snapshot: %q", got)
	}
}

func TestGetAndPutCountReferences(t *testing.T) {
	e := newEnv(t, unmountAtPut)
	e.create("l", "")
	d1 := e.get("l")
	d2 := e.get("l")
	if d1 != d2 {
		t.Fatalf("two Gets returned %s and %s", d1, d2)
	}
	mp := filepath.Dir(d1)
	e.put("l")
	if !isMounted(t, mp) {
		t.Fatal("unmounted while one reference is left")
	}
	dev := e.metadata("l")["Device"]
	e.put("l")
	if isMounted(t, mp) {
		t.Fatal("still mounted after the last Put")
	}
	if _, ok := e.att.Attached()[dev]; ok || e.metadata("l")["Device"] != "" {
		t.Fatalf("device %s still attached after the last Put", dev)
	}
	if e.store.InUse(graph.ImageRef{Image: "t-layer-l"}) != 0 {
		t.Fatal("image still open after the last Put")
	}
	e.put("l") // an extra Put is harmless
	if err := e.d.Put(context.Background(), "nope"); !errors.Is(err, graph.ErrLayerNotFound) {
		t.Fatalf("Put of an unknown layer: %v", err)
	}
}

func TestFailedGetRollsBack(t *testing.T) {
	e := newEnv(t, nil)
	e.create("l", "")
	e.fs.failMount.Store(true)
	_, err := e.d.Get(context.Background(), "l")
	if !errors.Is(err, errInjected) {
		t.Fatalf("Get with a failing mount: %v", err)
	}
	if n := len(e.att.Attached()); n != 0 {
		t.Fatalf("%d devices left attached after a failed Get", n)
	}
	if e.store.InUse(graph.ImageRef{Image: "t-layer-l"}) != 0 {
		t.Fatal("image left open after a failed Get")
	}
	e.fs.failMount.Store(false)
	e.write("l", "f", "ok")
	if got := e.read("l", "f"); got != "ok" {
		t.Fatalf("after recovery: %q", got)
	}
}

func TestFailedCreateRollsBack(t *testing.T) {
	e := newEnv(t, nil)
	e.fs.failGrow.Store(true)
	err := e.d.Create(context.Background(), "big", "", graph.CreateOptions{Size: 2 * testBaseSize})
	if !errors.Is(err, errInjected) {
		t.Fatalf("Create with a failing grow: %v", err)
	}
	if e.d.Exists("big") || slices.Contains(e.images("t-"), "t-layer-big") {
		t.Fatal("a failed Create left its layer or image behind")
	}
	if n := len(e.att.Attached()); n != 0 {
		t.Fatalf("%d devices left attached after a failed Create", n)
	}
	e.fs.failGrow.Store(false)
	if err := e.d.Create(context.Background(), "big", "", graph.CreateOptions{Size: 2 * testBaseSize}); err != nil {
		t.Fatalf("Create after the failure: %v", err)
	}
}

func TestCreateHonoursSize(t *testing.T) {
	e := newEnv(t, nil)
	e.create("small", "")
	const size = 3 * testBaseSize
	if err := e.d.Create(context.Background(), "big", "small", graph.CreateOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	total := func(id string) int64 {
		dir := e.get(id)
		defer e.put(id)
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Blocks) * st.Bsize
	}
	small, big := total("small"), total("big")
	if big < size*8/10 || small > testBaseSize {
		t.Fatalf("filesystem sizes: small %d, big %d; want big near %d", small, big, size)
	}
	if md := e.metadata("big"); md["Size"] != fmt.Sprint(size) {
		t.Fatalf("metadata size %s, want %d", md["Size"], size)
	}
	// A child inherits the grown size.
	e.create("bigchild", "big")
	if got := total("bigchild"); got != big {
		t.Fatalf("child of a grown layer: %d bytes, want %d", got, big)
	}
	err := e.d.Create(context.Background(), "shrink", "big", graph.CreateOptions{Size: testBaseSize})
	if !errors.Is(err, graph.ErrInvalidOption) {
		t.Fatalf("shrinking Create: %v", err)
	}
}

func TestRemove(t *testing.T) {
	e := newEnv(t, nil)
	e.create("p", "")
	e.create("c", "p")
	err := e.d.Remove(context.Background(), "p")
	if !errors.Is(err, graph.ErrHasChildren) {
		t.Fatalf("Remove of a parent: %v, want ErrHasChildren", err)
	}
	if !e.d.Exists("p") {
		t.Fatal("a refused Remove lost the layer")
	}
	e.get("c") // removing a mounted layer unmounts it
	e.remove("c")
	e.remove("p")
	e.remove("p") // idempotent
	if e.d.Exists("p") || e.d.Exists("c") {
		t.Fatal("removed layers still exist")
	}
	if got := e.images("t-"); !slices.Equal(got, []string{"t-base"}) {
		t.Fatalf("images after removing every layer: %v, want only the base", got)
	}
}

func TestInvalidIDsAreRefused(t *testing.T) {
	e := newEnv(t, nil)
	for _, id := range []string{"", "../x", "a/b", "a@b", ".hidden", "-x", "a b", string(make([]byte, 200))} {
		if err := e.d.Create(context.Background(), id, "", graph.CreateOptions{}); !errors.Is(err, graph.ErrInvalidID) {
			t.Errorf("Create(%q): %v, want ErrInvalidID", id, err)
		}
		if _, err := e.d.Get(context.Background(), id); !errors.Is(err, graph.ErrInvalidID) {
			t.Errorf("Get(%q): %v, want ErrInvalidID", id, err)
		}
		if e.d.Exists(id) {
			t.Errorf("Exists(%q) = true", id)
		}
	}
	if err := e.d.Create(context.Background(), "x", "../etc", graph.CreateOptions{}); !errors.Is(err, graph.ErrInvalidID) {
		t.Errorf("Create with parent ../etc: %v", err)
	}
	if err := e.d.Create(context.Background(), "x", "nope", graph.CreateOptions{}); !errors.Is(err, graph.ErrLayerNotFound) {
		t.Errorf("Create with a missing parent: %v", err)
	}
	e.create("dup", "")
	if err := e.d.Create(context.Background(), "dup", "", graph.CreateOptions{}); !errors.Is(err, graph.ErrLayerExists) {
		t.Errorf("Create twice: %v", err)
	}
	for _, id := range []string{"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-init", "Base", "a.b_c-d"} {
		if err := graph.ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q): %v", id, err)
		}
	}
}

func TestCloneDepthIsBoundedOnCreate(t *testing.T) {
	e := newEnv(t, func(c *graph.Config) {
		c.Options.MaxCloneDepth = 2
		c.Options.Flatten = graph.FlattenOnCreate
	})
	parent := ""
	for i := 1; i <= 6; i++ {
		id := fmt.Sprintf("l%d", i)
		e.create(id, parent)
		e.write(id, id, id)
		if d := e.depth(id); d > 2 {
			t.Fatalf("layer %s has clone depth %d with a limit of 2", id, d)
		}
		parent = id
	}
	for i := 1; i <= 6; i++ {
		if got := e.read("l6", fmt.Sprintf("l%d", i)); got != fmt.Sprintf("l%d", i) {
			t.Fatalf("l6 reads %q for l%d", got, i)
		}
	}
}

func TestCloneDepthIsBoundedInTheBackground(t *testing.T) {
	e := newEnv(t, func(c *graph.Config) { c.Options.MaxCloneDepth = 2 })
	parent := ""
	for i := 1; i <= 5; i++ {
		id := fmt.Sprintf("l%d", i)
		e.create(id, parent)
		e.write(id, id, id)
		parent = id
	}
	for i := 1; i <= 5; i++ {
		id := fmt.Sprintf("l%d", i)
		testkit.Eventually(t, 20*time.Second, "flattening of "+id, func() bool { return e.depth(id) <= 2 })
	}
	if got := e.read("l5", "l1"); got != "l1" {
		t.Fatalf("l5 reads %q", got)
	}
}

func TestConcurrentUse(t *testing.T) {
	// Put keeps a layer idle for a moment: Gets, Puts and the delayed
	// unmounts interleave.
	e := newEnv(t, func(c *graph.Config) { c.Options.UnmountDelay = 20 * time.Millisecond })
	e.create("shared", "")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := 0; i < 4; i++ {
				if _, err := e.d.Get(ctx, "shared"); err != nil {
					errs <- err
					return
				}
				id := fmt.Sprintf("w%d-%d", w, i)
				if err := e.d.Create(ctx, id, "", graph.CreateOptions{}); err != nil {
					errs <- err
				}
				if err := e.d.Put(ctx, "shared"); err != nil {
					errs <- err
				}
				if err := e.d.Remove(ctx, id); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The delayed unmount happens only with no reference left.
	testkit.Eventually(t, 10*time.Second, "the shared layer to be detached after balanced Get/Put", func() bool {
		return e.metadata("shared")["Device"] == ""
	})
}

func TestCloseReleasesEverything(t *testing.T) {
	e := newEnv(t, nil)
	e.create("a", "")
	e.create("b", "a")
	e.get("a")
	e.get("b")
	e.get("b")
	if err := e.d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.assertReleased()
	if err := e.d.Create(context.Background(), "c", "", graph.CreateOptions{}); !errors.Is(err, graph.ErrClosed) {
		t.Fatalf("Create after Close: %v", err)
	}
	for _, ref := range []graph.ImageRef{{Image: "t-layer-a", Snapshot: "layer"}, {Image: "t-layer-b"}} {
		if n := e.store.InUse(ref); n != 0 {
			t.Fatalf("%v still open %d times after Close", ref, n)
		}
	}
}

func TestUserNamespaceRoot(t *testing.T) {
	root := graph.Identity{UID: 100000, GID: 100000}
	e := newEnv(t, func(c *graph.Config) { c.Root = root })
	e.create("l", "")
	dir := e.get("l")
	defer e.put("l")
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Uid) != root.UID || int(st.Gid) != root.GID {
		t.Fatalf("layer root owned by %d:%d, want the remapped root %d:%d", st.Uid, st.Gid, root.UID, root.GID)
	}
	if !slices.Contains(e.images("t-"), "t-base-100000-100000") {
		t.Fatalf("no per-identity base image: %v", e.images("t-"))
	}
}

func TestXFS(t *testing.T) {
	testkit.RequireTools(t, "mkfs.xfs", "xfs_growfs")
	e := newEnv(t, func(c *graph.Config) {
		c.Options.FS = "xfs"
		c.Options.BaseSize = 320 << 20
	})
	e.create("a", "")
	e.write("a", "f", "xfs")
	e.create("b", "a")
	if err := e.d.Create(context.Background(), "c", "a", graph.CreateOptions{Size: 640 << 20}); err != nil {
		t.Fatal(err)
	}
	// Two clones of one filesystem (same UUID) mounted at once.
	db, dc := e.get("b"), e.get("c")
	defer e.put("b")
	defer e.put("c")
	for _, dir := range []string{db, dc} {
		if b, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || string(b) != "xfs" {
			t.Fatalf("%s: %q, %v", dir, b, err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dc, &st); err != nil {
		t.Fatal(err)
	}
	if int64(st.Blocks)*st.Bsize < 500<<20 {
		t.Fatalf("xfs not grown: %d bytes", int64(st.Blocks)*st.Bsize)
	}
}
