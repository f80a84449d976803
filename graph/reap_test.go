package graph_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
)

// gatedStore holds every deletion of a layer image until the gate opens
// (or the caller's ctx ends), and fails the first deletion of the
// images in failOnce: a slow, then flaky, cluster.
type gatedStore struct {
	*graphtest.FileStore
	gate     chan struct{}
	deaf     bool // the held deletions ignore ctx, as a paused cluster's
	mu       sync.Mutex
	failOnce map[string]bool
	deleting chan string // each layer image whose deletion starts
}

func (s *gatedStore) RemoveImage(ctx context.Context, name string) error {
	if strings.HasPrefix(name, "t-layer-") {
		select {
		case s.deleting <- name:
		default:
		}
		if s.deaf {
			<-s.gate
		}
		select {
		case <-s.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
		fail := s.failOnce[name]
		delete(s.failOnce, name)
		s.mu.Unlock()
		if fail {
			return errors.New("injected: the cluster refused the deletion")
		}
	}
	return s.FileStore.RemoveImage(ctx, name)
}

// removeUnheld removes layer id, failing if Remove waits for the
// held deletion of its image.
func removeUnheld(t *testing.T, d *graph.Driver, id string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- d.Remove(context.Background(), id) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Remove(%s): %v", id, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Remove(%s) waited for the image's deletion (held by the store)", id)
	}
}

func newGatedEnv(t *testing.T) (*env, *gatedStore) {
	var gs *gatedStore
	e := newEnv(t, func(c *graph.Config) {
		gs = &gatedStore{FileStore: c.Store.(*graphtest.FileStore), gate: make(chan struct{}),
			failOnce: map[string]bool{}, deleting: make(chan string, 16)}
		c.Store = gs
	})
	return e, gs
}

// Remove answers once the layer is durably removing and out of the
// tables; its image is deleted in the background, children before
// parents, and a new layer of the same ID waits for the old image to go.
func TestRemoveDeletesImagesInTheBackground(t *testing.T) {
	e, gs := newGatedEnv(t)
	ctx := context.Background()
	e.create("p", "")
	e.create("c", "p")
	e.write("c", "f", "old c")
	e.create("q", "")
	e.create("r", "q")

	for _, id := range []string{"c", "p"} {
		removeUnheld(t, e.d, id)
		if e.d.Exists(id) {
			t.Fatalf("Exists(%s) after Remove", id)
		}
	}
	if names, _ := gs.FileStore.ListImages(ctx, "t-layer-"); !slices.Contains(names, "t-layer-c") || !slices.Contains(names, "t-layer-p") {
		t.Fatalf("images while the deletions are held: %v, want t-layer-c and t-layer-p still there", names)
	}
	// A layer with a child in the tables is still refused, at once.
	if err := e.d.Remove(ctx, "q"); !errors.Is(err, graph.ErrHasChildren) || !strings.Contains(err.Error(), "r") {
		t.Fatalf("Remove(q) with child r: %v, want ErrHasChildren naming r", err)
	}
	if !e.d.Exists("q") {
		t.Fatal("a refused Remove removed the layer")
	}

	// The same ID again: Create waits for the old image's deletion.
	created := make(chan error, 1)
	go func() { created <- e.d.Create(ctx, "c", "", graph.CreateOptions{}) }()
	select {
	case err := <-created:
		t.Fatalf("Create(c) while t-layer-c is still being deleted returned %v; want it to wait", err)
	case <-time.After(300 * time.Millisecond):
	}
	gs.mu.Lock()
	gs.failOnce["t-layer-p"] = true // p's deletion fails once and is retried
	gs.mu.Unlock()
	close(gs.gate)
	select {
	case err := <-created:
		if err != nil {
			t.Fatalf("Create(c) after the old c's deletion: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Create(c) still waiting after the deletion was let through")
	}
	if got := e.read("c", "f"); got != "<missing>" {
		t.Fatalf("the new layer c reads %q from the removed one", got)
	}
	e.remove("c")
	e.remove("r")
	e.remove("q")
	if got := e.images("t-"); !slices.Equal(got, []string{"t-base"}) {
		t.Fatalf("images after WaitRemovals: %v, want only t-base", got)
	}
}

// A driver stopped (Release, as for a restart) while deletions are held
// leaves them removing, and the next start deletes them; Close finishes
// its queue first.
func TestRemovalsLeftAtStopAreFinishedByTheNextStart(t *testing.T) {
	e, gs := newGatedEnv(t)
	ctx := context.Background()
	e.create("p", "")
	e.create("c", "p")
	removeUnheld(t, e.d, "c")
	removeUnheld(t, e.d, "p")
	select {
	case <-gs.deleting:
	case <-time.After(10 * time.Second):
		t.Fatal("the reaper never started a deletion")
	}
	if err := e.d.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if names, _ := gs.FileStore.ListImages(ctx, "t-layer-"); len(names) != 2 {
		t.Fatalf("images after Release with the deletions held: %v, want both still there", names)
	}
	close(gs.gate)
	e.d = e.open()
	if e.d.Exists("c") || e.d.Exists("p") {
		t.Fatal("a removed layer exists after the restart")
	}
	if got := e.images("t-layer-"); len(got) != 0 {
		t.Fatalf("images after the restart: %v, want none", got)
	}

	// Close drains the queue.
	e.create("x", "")
	e.remove("x")
	if err := e.d.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if names, _ := gs.FileStore.ListImages(ctx, "t-layer-"); len(names) != 0 {
		t.Fatalf("images after Close: %v, want none", names)
	}
}

// A deletion that never answers (a paused cluster) holds Release no
// longer than its ctx: the restart handover must not wait for it.
func TestReleaseDoesNotWaitForAStuckDeletion(t *testing.T) {
	e, gs := newGatedEnv(t)
	gs.deaf = true
	e.create("x", "")
	removeUnheld(t, e.d, "x")
	select {
	case <-gs.deleting:
	case <-time.After(10 * time.Second):
		t.Fatal("the reaper never started a deletion")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	if err := e.d.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Release took %v with a deletion stuck, want about its 1 s ctx", took)
	}
	close(gs.gate)
	e.d = e.open()
	if got := e.images("t-layer-"); len(got) != 0 {
		t.Fatalf("images after the restart: %v, want none", got)
	}
}
