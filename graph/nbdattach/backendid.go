package nbdattach

import (
	"errors"
	"path/filepath"
	"strings"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// BackendPrefix starts the NBD_ATTR_BACKEND_IDENTIFIER of every device
// this project attaches, so list, unmap TARGET, attach and a restarted
// driver can tell our devices (and what they serve) apart from other
// NBD users'. The identifiers, after the prefix:
//
//	layer@OWNER:POOL[/NAMESPACE]/IMAGE[@SNAP]   a graph driver's layer,
//	                                           OWNER its Driver.Identity
//	layer:POOL[/NAMESPACE]/IMAGE[@SNAP]         the same, recorded by
//	                                           earlier versions (no owner)
//	rbd:POOL/IMAGE[@SNAP], file:PATH, mem:SIZE  a target of map
//	                                           (NormalizeTarget's spelling)
//	probe                                      Probe's short-lived device
//
// This file is the one encoder and decoder of them.
const BackendPrefix = "rbd-nbd-graph:"

const (
	layerPrefix    = BackendPrefix + "layer@"
	oldLayerPrefix = BackendPrefix + "layer:"
)

// BackendID is a decoded identifier of one of our devices.
type BackendID struct {
	// Target is the identifier after BackendPrefix: what list shows.
	Target string
	// Layer is set for a graph driver's layer device; then Owner (""
	// in the older format), Where (POOL or POOL/NAMESPACE) and Ref say
	// which.
	Layer bool
	Owner string
	Where string
	Ref   graph.ImageRef
}

// LayerID encodes a layer device's identifier.
func LayerID(owner, where string, ref graph.ImageRef) string {
	return layerPrefix + owner + ":" + where + "/" + ref.String()
}

// TargetID encodes the identifier of a device map serves for target,
// spelled the same however the target was typed (NormalizeTarget).
func TargetID(target string) (string, error) {
	norm, err := NormalizeTarget(target)
	if err != nil {
		return "", err
	}
	return BackendPrefix + norm, nil
}

// ErrEmptyTarget: a map target that is the empty string.
var ErrEmptyTarget = errors.New("empty TARGET")

// NormalizeTarget spells a target the same way however it was typed: a
// bare POOL/IMAGE is rbd:POOL/IMAGE and file paths are absolute.
func NormalizeTarget(target string) (string, error) {
	switch {
	case target == "":
		return "", ErrEmptyTarget
	case strings.HasPrefix(target, "mem:"), strings.HasPrefix(target, "rbd:"):
		return target, nil
	case strings.HasPrefix(target, "file:"):
		abs, err := filepath.Abs(strings.TrimPrefix(target, "file:"))
		if err != nil {
			return "", err
		}
		return "file:" + abs, nil
	default:
		return "rbd:" + target, nil
	}
}

// ParseBackendID decodes an identifier; ok is false for another tool's
// (or none). A layer identifier that does not decode is still ours,
// with Layer false.
func ParseBackendID(id string) (b BackendID, ok bool) {
	target, ok := strings.CutPrefix(id, BackendPrefix)
	if !ok {
		return b, false
	}
	b.Target = target
	var spec string
	if rest, found := strings.CutPrefix(id, layerPrefix); found {
		owner, tail, found := strings.Cut(rest, ":")
		if !found || owner == "" {
			return b, true
		}
		b.Owner, spec = owner, tail
	} else if spec, found = strings.CutPrefix(id, oldLayerPrefix); !found {
		return b, true
	}
	// POOL[/NAMESPACE]/IMAGE[@SNAP]: image and snapshot names hold no
	// '/', so the last one before '@' ends the pool part.
	image, snap, _ := strings.Cut(spec, "@")
	i := strings.LastIndexByte(image, '/')
	if i <= 0 || i == len(image)-1 {
		b.Owner = ""
		return b, true
	}
	b.Layer, b.Where, b.Ref = true, image[:i], graph.ImageRef{Image: image[i+1:], Snapshot: snap}
	return b, true
}

// ParseLayerID decodes a layer device's identifier for the pool (and
// namespace) where; ok is false for any other device's.
func ParseLayerID(id, where string) (req graph.AttachRequest, ok bool) {
	b, ours := ParseBackendID(id)
	if !ours || !b.Layer || b.Where != where {
		return req, false
	}
	return graph.AttachRequest{Owner: b.Owner, Image: b.Ref.Image, Snapshot: b.Ref.Snapshot}, true
}
