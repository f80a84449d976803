package nbdattach

import (
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// A layer device's backend identifier round-trips, names its owner,
// and the format of earlier versions (no owner) still decodes; other
// pools' and other tools' identifiers do not.
func TestLayerBackendID(t *testing.T) {
	ref := graph.ImageRef{Image: "docker-0123456789ab-layer-x", Snapshot: "layer"}
	id := layerBackendID("a1b2c3d4e5f6", "rbd/ns", ref)
	if id != "rbd-nbd-graph:layer@a1b2c3d4e5f6:rbd/ns/docker-0123456789ab-layer-x@layer" {
		t.Fatalf("identifier %q", id)
	}
	req, ok := parseLayerBackendID(id, "rbd/ns")
	if !ok || req.Owner != "a1b2c3d4e5f6" || req.Ref() != ref {
		t.Fatalf("decoded %+v, %v", req, ok)
	}
	old, ok := parseLayerBackendID("rbd-nbd-graph:layer:rbd/docker-x-layer-y", "rbd")
	if !ok || old.Owner != "" || old.Image != "docker-x-layer-y" || old.Snapshot != "" {
		t.Fatalf("old format decoded %+v, %v", old, ok)
	}
	for _, other := range []string{
		"rbd-nbd-graph:layer@a1b2c3d4e5f6:other/img",
		"rbd-nbd-graph:rbd:rbd/img",
		"rbd-nbd-graph:layer@:rbd/img",
		"something-else",
	} {
		if req, ok := parseLayerBackendID(other, "rbd"); ok {
			t.Errorf("%q decoded as ours: %+v", other, req)
		}
	}
}
