package nbdattach

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// A layer device's backend identifier round-trips, names its owner,
// and the format of earlier versions (no owner) still decodes; other
// pools' and other tools' identifiers do not.
func TestLayerBackendID(t *testing.T) {
	ref := graph.ImageRef{Image: "docker-0123456789ab-layer-x", Snapshot: "layer"}
	id := LayerID("a1b2c3d4e5f6", "rbd/ns", ref)
	if id != "rbd-nbd-graph:layer@a1b2c3d4e5f6:rbd/ns/docker-0123456789ab-layer-x@layer" {
		t.Fatalf("identifier %q", id)
	}
	req, ok := ParseLayerID(id, "rbd/ns")
	if !ok || req.Owner != "a1b2c3d4e5f6" || req.Ref() != ref {
		t.Fatalf("decoded %+v, %v", req, ok)
	}
	old, ok := ParseLayerID("rbd-nbd-graph:layer:rbd/docker-x-layer-y", "rbd")
	if !ok || old.Owner != "" || old.Image != "docker-x-layer-y" || old.Snapshot != "" {
		t.Fatalf("old format decoded %+v, %v", old, ok)
	}
	for _, other := range []string{
		"rbd-nbd-graph:layer@a1b2c3d4e5f6:other/img",
		"rbd-nbd-graph:rbd:rbd/img",
		"rbd-nbd-graph:layer@:rbd/img",
		"something-else",
		// A layer of namespace ns in pool rbd is not a layer of pool
		// rbd itself (it was, named "ns/img", before one decoder).
		"rbd-nbd-graph:layer:rbd/ns/img",
		"rbd-nbd-graph:layer@a1b2c3d4e5f6:rbd/ns/img",
	} {
		if req, ok := ParseLayerID(other, "rbd"); ok {
			t.Errorf("%q decoded as ours: %+v", other, req)
		}
	}
}

// Every identifier we encode decodes to what was encoded, and the
// decoder tells ours from other tools'.
func TestBackendIDRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		owner, where string
		ref          graph.ImageRef
	}{
		{"a1b2c3d4e5f6", "rbd", graph.ImageRef{Image: "p-layer-1"}},
		{"a1b2c3d4e5f6", "rbd/ns", graph.ImageRef{Image: "p-layer-1", Snapshot: "layer"}},
		{"0123456789ab", "pool.with-dots", graph.ImageRef{Image: "p-base-1000-1000", Snapshot: "layer"}},
	} {
		id := LayerID(tc.owner, tc.where, tc.ref)
		b, ok := ParseBackendID(id)
		if !ok || !b.Layer || b.Owner != tc.owner || b.Where != tc.where || b.Ref != tc.ref || BackendPrefix+b.Target != id {
			t.Errorf("%q decoded %+v, %v; want owner %q where %q ref %v", id, b, ok, tc.owner, tc.where, tc.ref)
		}
	}
	old, ok := ParseBackendID("rbd-nbd-graph:layer:rbd/ns/img@layer")
	if !ok || !old.Layer || old.Owner != "" || old.Where != "rbd/ns" || old.Ref != (graph.ImageRef{Image: "img", Snapshot: "layer"}) {
		t.Errorf("older layer format decoded %+v, %v", old, ok)
	}

	dir := t.TempDir()
	rel, err := filepath.Rel(mustGetwd(t), filepath.Join(dir, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]string{
		"rbd/img":          "rbd:rbd/img",
		"rbd:rbd/img":      "rbd:rbd/img",
		"pool/ns/img@snap": "rbd:pool/ns/img@snap",
		"mem:1G":           "mem:1G",
		"file:" + rel:      "file:" + filepath.Join(dir, "disk.img"),
	} {
		id, err := TargetID(target)
		if err != nil || id != BackendPrefix+want {
			t.Errorf("TargetID(%q) = %q, %v; want %q", target, id, err, BackendPrefix+want)
			continue
		}
		b, ok := ParseBackendID(id)
		if !ok || b.Layer || b.Target != want {
			t.Errorf("%q decoded %+v, %v; want target %q", id, b, ok, want)
		}
	}
	if _, err := TargetID(""); !errors.Is(err, ErrEmptyTarget) {
		t.Errorf("empty target: %v", err)
	}
	if b, ok := ParseBackendID(BackendPrefix + "probe"); !ok || b.Layer || b.Target != "probe" {
		t.Errorf("probe decoded %+v, %v", b, ok)
	}
	for _, other := range []string{"", "rbd-nbd", "qemu-nbd:x", "RBD-NBD-GRAPH:rbd:rbd/img"} {
		if b, ok := ParseBackendID(other); ok {
			t.Errorf("%q decoded as ours: %+v", other, b)
		}
	}
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}
