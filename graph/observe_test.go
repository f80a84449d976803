package graph_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// opRecorder is a graph.Observer that keeps what it is told.
type opRecorder struct {
	mu      sync.Mutex
	ok      map[string]int
	failed  map[string]int
	pending func() int
}

func (r *opRecorder) LayerOp(op string, took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.failed[op]++
	} else {
		r.ok[op]++
	}
}

func (r *opRecorder) FlattensPendingFrom(pending func() int) { r.pending = pending }

func (r *opRecorder) count(op string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ok[op]
}

// The Observer sees each kind of layer operation, and the flattens
// pending drain to 0 once the background flattener is done.
func TestObserverSeesLayerOperations(t *testing.T) {
	rec := &opRecorder{ok: map[string]int{}, failed: map[string]int{}}
	e := newEnv(t, func(c *graph.Config) {
		c.Options.MaxCloneDepth = 2
		c.Observer = rec
	})
	if rec.pending == nil {
		t.Fatal("New did not hand the observer the flattens pending")
	}
	parent := ""
	for i := 1; i <= 4; i++ {
		id := fmt.Sprintf("l%d", i)
		e.create(id, parent)
		e.write(id, id, id) // a Get and a Put
		parent = id
	}
	testkit.Eventually(t, 30*time.Second, "flattens done", func() bool {
		return rec.pending() == 0 && rec.count(graph.OpFlatten) > 0
	})
	e.remove("l4")
	for op, atLeast := range map[string]int{graph.OpCreate: 4, graph.OpSnapshot: 3, graph.OpMount: 4,
		graph.OpUnmount: 4, graph.OpRemove: 1, graph.OpFlatten: 1} {
		if n := rec.count(op); n < atLeast {
			t.Errorf("%s: observed %d, want at least %d", op, n, atLeast)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.failed) != 0 {
		t.Errorf("failed operations observed: %v", rec.failed)
	}
}
