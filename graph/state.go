package graph

import (
	"context"
	"fmt"
	"slices"
)

// State is where a layer is in its life, recorded durably as the image's
// metadata key rbd-nbd-graph.state, so a driver that starts after a crash
// knows which images are finished.
//
// A layer is creating from its clone until the key says ready: the key is
// first written as ready (with the parent's ID), one metadata write less
// per layer (each is an image open, the bulk of Create's cost). Creating
// is durable all the same, as the key's absence: start-up removes an image
// of this prefix without it. The base image, made once and slowly,
// records creating explicitly, with its owner.
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

// transition moves l to the state to, writing it (with extra metadata, if
// any) to the image first: the in-memory state changes only once the
// durable one has. It is the only place layer states change.
func (d *Driver) transition(ctx context.Context, l *layer, to State, extra map[string]string) error {
	d.mu.Lock()
	from := l.state
	d.mu.Unlock()
	if !slices.Contains(transitions[from], to) {
		return fmt.Errorf("layer %s: illegal state change %q -> %q", l.name(), from, to)
	}
	kv := map[string]string{metaState: string(to)}
	for k, v := range extra {
		kv[k] = v
	}
	if err := d.store.SetMetadata(ctx, l.image, kv); err != nil {
		return fmt.Errorf("layer %s: record state %s: %w", l.name(), to, err)
	}
	d.mu.Lock()
	l.state = to
	d.mu.Unlock()
	d.log.Debug("layer state", "layer", l.name(), "from", from, "to", to)
	return nil
}
