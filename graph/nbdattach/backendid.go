package nbdattach

import (
	"strings"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// BackendPrefix starts the NBD_ATTR_BACKEND_IDENTIFIER of every device
// this project attaches (map's and the graph driver's), so list, unmap
// TARGET and --reattach can tell our devices (and their targets) apart
// from other NBD users'.
const BackendPrefix = "rbd-nbd-graph:"

// layerBackendPrefix starts the NBD backend identifier of every device
// the graph driver attaches:
// "rbd-nbd-graph:layer@OWNER:POOL[/NAMESPACE]/IMAGE[@SNAP]", OWNER being
// the driver's identity (graph.Driver.Identity). `rbd-nbd-graph list`
// shows them (target "layer@..."), and a restarted driver finds its
// devices by it. oldLayerBackendPrefix ("rbd-nbd-graph:layer:POOL/...",
// no owner) is what earlier versions recorded: still adopted.
const (
	layerBackendPrefix    = BackendPrefix + "layer@"
	oldLayerBackendPrefix = BackendPrefix + "layer:"
)

// layerBackendID encodes a layer device's identifier.
func layerBackendID(owner, where string, ref graph.ImageRef) string {
	return layerBackendPrefix + owner + ":" + where + "/" + ref.String()
}

// parseLayerBackendID decodes one for the pool (and namespace) where;
// ok is false for any other device's.
func parseLayerBackendID(id, where string) (req graph.AttachRequest, ok bool) {
	var spec string
	if rest, found := strings.CutPrefix(id, layerBackendPrefix); found {
		owner, tail, found := strings.Cut(rest, ":")
		if !found || owner == "" {
			return req, false
		}
		if spec, found = strings.CutPrefix(tail, where+"/"); !found {
			return req, false
		}
		req.Owner = owner
	} else if spec, found = strings.CutPrefix(id, oldLayerBackendPrefix+where+"/"); !found {
		return req, false
	}
	req.Image, req.Snapshot, _ = strings.Cut(spec, "@")
	return req, req.Image != ""
}
