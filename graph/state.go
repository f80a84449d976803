package graph

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
)

// State is where a layer is in its life, recorded durably in the image's
// metadata (the record), so a driver that starts after a crash knows which
// images are finished.
//
// A layer is creating from its clone until the record is first written, as
// ready: one metadata write per Create (each is an image open, the bulk of
// Create's cost). Creating is durable all the same, as the record's
// absence: start-up removes an image of this prefix without one. The base
// image, made once and slowly, records creating explicitly, with its
// owner.
type State string

const (
	StateCreating State = "creating" // cloned; grow or flatten under way
	StateReady    State = "ready"    // complete; visible to Exists and Get
	StateRemoving State = "removing" // being deleted; start-up finishes the job
)

// transitions lists the legal next states of each state.
var transitions = map[State][]State{
	"":            {StateCreating, StateRemoving},
	StateCreating: {StateReady, StateRemoving},
	StateReady:    {StateRemoving},
}

// record is the JSON an image's metadata key rbd-nbd-graph.layer holds:
// state and parent together, so one write changes both.
//
// Image names the image the record was written on. librbd's clone copies
// the parent's image-meta into the clone, so until a layer's own record
// is written its image carries its parent's, saying "ready": only a
// record naming the image it is on is the image's own.
type record struct {
	State  State  `json:"state"`
	Image  string `json:"image,omitempty"`
	Parent string `json:"parent,omitempty"` // layers: the parent layer's ID
	Owner  string `json:"owner,omitempty"`  // base images: the driver owning the prefix (host:home)
}

// parseRecord reads the record of image from its metadata; ok is false
// when the image has none of its own (see record). Records written before
// the Image field existed are taken as the image's own unless they show
// they were inherited: an owner (only base images have one) on a layer,
// or a parent other than the layer the image is a clone of (parentImage:
// the image's RBD parent, "" when flattened or outside the driver's
// layers).
func (n naming) parseRecord(image, parentImage string, md map[string]string) (rec record, ok bool, err error) {
	v, ok := md[metaRecord]
	if !ok {
		return record{}, false, nil
	}
	if err := json.Unmarshal([]byte(v), &rec); err != nil {
		return record{}, true, fmt.Errorf("metadata %s=%q: %w", metaRecord, v, err)
	}
	if rec.Image != "" {
		if rec.Image != image {
			return record{}, false, nil
		}
		return rec, true, nil
	}
	if _, isLayer := n.layerID(image); isLayer {
		if rec.Owner != "" {
			return record{}, false, nil
		}
		if n.isBase(parentImage) && rec.Parent != "" {
			return record{}, false, nil
		}
		if pid, ok := n.layerID(parentImage); ok && rec.Parent != pid {
			return record{}, false, nil
		}
	}
	return rec, true, nil
}

// transition moves l to the state to, writing its record to the image
// first: the in-memory state changes only once the durable one has. It is
// the only place layer states change.
func (d *Driver) transition(ctx context.Context, l *layer, to State) error {
	d.mu.Lock()
	from := l.state
	d.mu.Unlock()
	if !slices.Contains(transitions[from], to) {
		return fmt.Errorf("layer %s: illegal state change %q -> %q", l.name(), from, to)
	}
	rec := record{State: to, Image: l.image, Parent: l.parentID}
	if l.id == "" {
		rec.Owner = d.owner
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := d.store.SetMetadata(ctx, l.image, map[string]string{metaRecord: string(b)}); err != nil {
		return fmt.Errorf("layer %s: record state %s: %w", l.name(), to, err)
	}
	d.mu.Lock()
	l.state = to
	d.mu.Unlock()
	d.log.Debug("layer state", "layer", l.name(), "from", from, "to", to)
	return nil
}
