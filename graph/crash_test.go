package graph_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// crashAt stops the goroutine that reaches step for good, as a crash
// stops a process: nothing after the step runs (no rollback, no
// unlock). Other steps pass.
type crashAt struct {
	step  string
	armed atomic.Bool
	once  sync.Once
	hit   chan struct{}
}

func newCrashAt(step string) *crashAt { return &crashAt{step: step, hit: make(chan struct{})} }

func (c *crashAt) hook(step string) {
	if step == c.step && c.armed.CompareAndSwap(true, false) {
		c.once.Do(func() { close(c.hit) })
		select {} // the "crashed" goroutine never comes back
	}
}

// For every step of Create, Remove, snapshot+protect, unprotect+remove
// and flatten, a crash right after it, then a restart, leaves a
// consistent store: the layer is fully there (readable, can get
// children, can be removed) or gone, its parent can still get children,
// and the parent can be removed.
func TestCrashAtEveryStepLeavesAConsistentStore(t *testing.T) {
	type scenario struct {
		steps   []string
		mutate  func(*graph.Config)
		size    int64 // Create's size (grow)
		remove  bool  // the operation is Remove("p") after p had a child; else Create("c", "p")
		flatten bool  // wait for the background flatten of c
	}
	deep := func(mode graph.FlattenMode) func(*graph.Config) {
		return func(c *graph.Config) { c.Options.MaxCloneDepth = 1; c.Options.Flatten = mode }
	}
	scenarios := []scenario{
		{steps: []string{graph.StepSnapshotCreated, graph.StepSnapshotProtected, graph.StepCreateSnapshotParent,
			graph.StepCreateClone, graph.StepCreateReady}},
		{steps: []string{graph.StepCreateGrow}, size: 2 * testBaseSize},
		{steps: []string{graph.StepCreateFlatten}, mutate: deep(graph.FlattenOnCreate)},
		{steps: []string{graph.StepFlattenDone}, mutate: deep(graph.FlattenBackground), flatten: true},
		{steps: []string{graph.StepSnapshotUnprotected, graph.StepSnapshotRemoved, graph.StepRemoveSnapshot,
			graph.StepRemoveStateRemoving, graph.StepRemoveImage}, remove: true},
	}
	// The steps of Remove after it returned: the reaper's.
	background := map[string]bool{graph.StepSnapshotUnprotected: true, graph.StepSnapshotRemoved: true,
		graph.StepRemoveSnapshot: true, graph.StepRemoveImage: true}
	for _, sc := range scenarios {
		for _, step := range sc.steps {
			t.Run(step, func(t *testing.T) {
				crash := newCrashAt(step)
				e := newEnvCrash(t, func(c *graph.Config) {
					c.CrashHook = crash.hook
					if sc.mutate != nil {
						sc.mutate(c)
					}
				}, true)
				e.store.CrashHook = crash.hook
				ctx := context.Background()
				e.create("p", "")
				e.write("p", "f", "p")
				if sc.remove {
					e.create("k", "p")
					e.remove("k")
					e.images("") // k's deletion done before the crash is armed
				}

				crash.armed.Store(true)
				crashed := e.d
				opDone := make(chan error, 1)
				go func() {
					if sc.remove {
						opDone <- crashed.Remove(ctx, "p")
					} else {
						opDone <- crashed.Create(ctx, "c", "p", graph.CreateOptions{Size: sc.size})
					}
				}()
				var limit <-chan time.Time = time.After(60 * time.Second)
			wait:
				for {
					select {
					case <-crash.hit:
						break wait
					case err := <-opDone:
						// A flatten, and a removed layer's deletion,
						// run on in the background.
						if !sc.flatten && !(sc.remove && background[step]) {
							t.Fatalf("the operation ended (%v) without reaching step %s", err, step)
						}
						opDone = nil
					case <-limit:
						t.Fatalf("step %s not reached within 60s", step)
					}
				}

				// Restart on the same store and home.
				e.d = e.open()
				l := "c"
				if sc.remove {
					l = "p"
				}
				image := "t-layer-" + l
				// A Create that crashed before its record said ready
				// never happened: its layer must be gone (the
				// clone carries its parent's record, as librbd copies
				// image-meta, which must not pass for the layer's own).
				if !sc.remove {
					want := step == graph.StepCreateReady || step == graph.StepFlattenDone
					if got := e.d.Exists(l); got != want {
						t.Fatalf("after a crash at %s, Exists(%s) = %t, want %t", step, l, got, want)
					}
				}
				if e.d.Exists(l) {
					t.Logf("after a crash at %s, layer %s is there", step, l)
					if got := e.read(l, "f"); got != "p" {
						t.Fatalf("layer %s reads %q after the restart, want \"p\"", l, got)
					}
					e.create("x", l)
					if got := e.read("x", "f"); got != "p" {
						t.Fatalf("a new child of %s reads %q, want \"p\"", l, got)
					}
					e.remove("x")
					e.remove(l)
				} else {
					t.Logf("after a crash at %s, layer %s is gone", step, l)
					if slices.Contains(e.images("t-layer-"), image) {
						t.Fatalf("layer %s does not exist but its image %s is left", l, image)
					}
				}
				if !sc.remove {
					// The parent can still get children and be removed.
					e.create("y", "p")
					if got := e.read("y", "f"); got != "p" {
						t.Fatalf("a new child of p reads %q, want \"p\"", got)
					}
					e.remove("y")
					e.remove("p")
				}
				if left := e.images("t-layer-"); len(left) != 0 {
					t.Fatalf("images left after removing every layer: %v", left)
				}
			})
		}
	}
}
