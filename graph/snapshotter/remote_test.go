package snapshotter_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/snapshotter"
)

const refLabel = "containerd.io/snapshot.ref"

func chainID(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func withRef(ref string) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{refLabel: ref})
}

// images lists the store's images starting with prefix.
func images(t *testing.T, store *graphtest.FileStore, prefix string) []string {
	t.Helper()
	names, err := store.ListImages(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return names
}

// unpack is what containerd's unpacker does for one layer on host e:
// Prepare with the chain ID label; on AlreadyExists the layer is there;
// otherwise write files, unmount and Commit under the chain ID.
// It reports whether the layer was unpacked here.
func (e *env) unpack(key, parent, chain string, files map[string]string) bool {
	e.t.Helper()
	ctx := context.Background()
	ms, err := e.sn.Prepare(ctx, key, parent, withRef(chain))
	if errdefs.IsAlreadyExists(err) {
		var found []string
		if err := e.sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			found = append(found, i.Name)
			return nil
		}, `labels."`+refLabel+`"==`+chain+`,parent==`+strconv.Quote(parent)); err != nil { // as containerd's metadata layer asks
			e.t.Fatal(err)
		}
		if len(found) != 1 {
			e.t.Fatalf("Prepare said AlreadyExists but Walk by label and parent finds %v", found)
		}
		return false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	dir := e.mountAt(ms)
	for name, data := range files {
		writeFile(e.t, filepath.Join(dir, name), data)
	}
	e.unmount(dir)
	if err := e.sn.Commit(ctx, chain, key, withRef(chain)); err != nil {
		e.t.Fatal(err)
	}
	return true
}

// readContainer prepares a container snapshot on parent and returns the
// named files' content.
func (e *env) readContainer(key, parent string, names ...string) string {
	e.t.Helper()
	ms, err := e.sn.Prepare(context.Background(), key, parent)
	if err != nil {
		e.t.Fatal(err)
	}
	dir := e.mountAt(ms)
	var out []string
	for _, n := range names {
		out = append(out, readFile(e.t, filepath.Join(dir, n)))
	}
	e.unmount(dir)
	return strings.Join(out, ",")
}

// TestRemoteSnapshotsAcrossHosts: host A unpacks a two-layer image;
// the layers are published under their chain IDs; host B is told
// AlreadyExists for both (no fetch, no unpack, no new layer image) and
// runs a container on them; A removing everything keeps B working;
// B removing everything frees every shared image.
func TestRemoteSnapshotsAcrossHosts(t *testing.T) {
	store, err := graphtest.OpenFileStore(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	const shared = "shared-"
	a := newHost(t, store, "a", shared)
	b := newHost(t, store, "b", shared)
	c1, c2 := chainID("layer one"), chainID("layer one+two")

	if !a.unpack("a/1/extract", "", c1, map[string]string{"one": "1"}) ||
		!a.unpack("a/2/extract", c1, c2, map[string]string{"two": "2"}) {
		t.Fatal("host A found layers in an empty cluster")
	}
	want := []string{shared + "sha256-" + c1[7:], shared + "sha256-" + c2[7:]}
	sort.Strings(want)
	if got := images(t, store, shared); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("shared images after A's unpack: %v, want %v", got, want)
	}
	if got := a.readContainer("a/ctr", c2, "one", "two"); got != "1,2" {
		t.Fatalf("A's container reads %q", got)
	}

	bBefore := images(t, store, "b-")
	if b.unpack("b/1/extract", "", c1, nil) || b.unpack("b/2/extract", c1, c2, nil) {
		t.Fatal("host B unpacked a layer that A had published")
	}
	if got := images(t, store, "b-"); len(got) != len(bBefore) {
		t.Fatalf("B made layer images for shared layers: %v -> %v", bBefore, got)
	}
	info, err := b.sn.Stat(context.Background(), c2)
	if err != nil || info.Kind != snapshots.KindCommitted || info.Parent != c1 || info.Labels[refLabel] != c2 {
		t.Fatalf("B's record of the remote layer = %+v, %v", info, err)
	}
	if got := b.readContainer("b/ctr", c2, "one", "two"); got != "1,2" {
		t.Fatalf("B's container reads %q from the shared layers", got)
	}
	// B's uses are visible in the cluster, on the shared image.
	st, err := store.StatImage(context.Background(), want[0])
	if err != nil {
		t.Fatal(err)
	}
	users := 0
	for _, v := range snapshotter.UsesOf(want[0], st.Metadata) {
		if v == "a" || v == "b" {
			users++
		}
	}
	if users != 2 {
		t.Fatalf("uses recorded on %s: %v, want one of A and one of B", want[0], st.Metadata)
	}

	ctx := context.Background()
	for _, k := range []string{"a/ctr", c2, c1} {
		if err := a.sn.Remove(ctx, k); err != nil {
			t.Fatalf("A: Remove(%s): %v", k, err)
		}
	}
	a.waitRemovals()
	if got := images(t, store, shared); len(got) != 2 {
		t.Fatalf("A's removal deleted shared layers B uses: left %v", got)
	}
	if got := b.readContainer("b/ctr2", c2, "one", "two"); got != "1,2" {
		t.Fatalf("B reads %q after A removed the image", got)
	}
	for _, k := range []string{"b/ctr", "b/ctr2", c2, c1} {
		if err := b.sn.Remove(ctx, k); err != nil {
			t.Fatalf("B: Remove(%s): %v", k, err)
		}
	}
	b.waitRemovals()
	if got := images(t, store, shared); len(got) != 0 {
		t.Fatalf("shared images left after both hosts removed the image: %v", got)
	}
	for _, h := range []*env{a, b} {
		if got := images(t, store, h.prefix); len(got) != 1 || !strings.HasSuffix(got[0], "base") {
			t.Fatalf("host %s's images left: %v, want only its base", h.host, got)
		}
	}
}

// TestRemoteSnapshotsCommitRace: two hosts unpack the same chain ID at
// once. Neither sees the other's half-made layer; the first commit
// publishes it, the second drops its own copy and uses the winner's.
func TestRemoteSnapshotsCommitRace(t *testing.T) {
	store, err := graphtest.OpenFileStore(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	const shared = "shared-"
	a := newHost(t, store, "a", shared)
	b := newHost(t, store, "b", shared)
	ctx := context.Background()
	c := chainID("raced")

	// Both prepare before either commits: the unpublished layer of the
	// first is invisible to the second (no AlreadyExists).
	for _, h := range []*env{a, b} {
		ms, err := h.sn.Prepare(ctx, h.host+"/extract", "", withRef(c))
		if err != nil {
			t.Fatalf("host %s: Prepare while the other's layer is half made: %v", h.host, err)
		}
		dir := h.mountAt(ms)
		writeFile(t, filepath.Join(dir, "f"), "same content")
		h.unmount(dir)
	}
	if got := images(t, store, shared); len(got) != 0 {
		t.Fatalf("shared images before any commit: %v", got)
	}
	for _, h := range []*env{a, b} {
		if err := h.sn.Commit(ctx, c, h.host+"/extract", withRef(c)); err != nil {
			t.Fatalf("host %s: Commit: %v", h.host, err)
		}
	}
	if got := images(t, store, shared); len(got) != 1 {
		t.Fatalf("shared images after both commits: %v, want the winner's only", got)
	}
	// The loser's own layer is deleted in the background (CI: listed
	// 13 ms before its deletion ended).
	b.waitRemovals()
	if got := images(t, store, "b-"); len(got) != 1 {
		t.Fatalf("the loser kept a layer image of its own: %v", got)
	}
	for _, h := range []*env{a, b} {
		if got := h.readContainer(h.host+"/ctr", c, "f"); got != "same content" {
			t.Fatalf("host %s reads %q", h.host, got)
		}
		for _, k := range []string{h.host + "/ctr", c} {
			if err := h.sn.Remove(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		h.waitRemovals()
	}
	if got := images(t, store, shared); len(got) != 0 {
		t.Fatalf("shared images left: %v", got)
	}
}

// TestRemoteSnapshotsDeadHost: a host that stops without removing its
// snapshots leaves its uses on the shared image, so the others keep it;
// once an operator removes that use, the next release deletes it.
func TestRemoteSnapshotsDeadHost(t *testing.T) {
	store, err := graphtest.OpenFileStore(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	const shared = "shared-"
	a := newHost(t, store, "a", shared)
	b := newHost(t, store, "b", shared)
	ctx := context.Background()
	c := chainID("kept")
	a.unpack("a/extract", "", c, map[string]string{"f": "x"})
	b.unpack("b/extract", "", c, nil)
	if err := b.sn.Remove(ctx, c); err != nil {
		t.Fatal(err)
	}
	b.waitRemovals()
	img := shared + "sha256-" + c[7:]
	st, err := store.StatImage(ctx, img)
	if err != nil {
		t.Fatalf("the shared layer went while host A (gone, say) still uses it: %v", err)
	}
	var aKey string
	for k, v := range snapshotter.UsesOf(img, st.Metadata) {
		if v != "a" {
			t.Fatalf("a use of host %q is left on %s after B removed its own", v, img)
		}
		aKey = k
	}
	if aKey == "" {
		t.Fatalf("no use of host A recorded on %s: %v", img, st.Metadata)
	}
	// The operator clears the dead host's use (rbd image-meta remove);
	// B's next use and release deletes the image.
	if err := store.SetMetadata(ctx, img, map[string]string{aKey: ""}); err != nil {
		t.Fatal(err)
	}
	b.unpack("b/extract2", "", c, nil)
	if err := b.sn.Remove(ctx, c); err != nil {
		t.Fatal(err)
	}
	b.waitRemovals()
	if got := images(t, store, shared); len(got) != 0 {
		t.Fatalf("shared images left after the last use went: %v", got)
	}
}
