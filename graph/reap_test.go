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

// connStore is a store on one cluster connection as rbdio makes it: the
// calls that open, make or remove an image context run one at a time
// (rbdio's Conn.imageCtx). The deletion of a layer image holds that
// lock until gate opens, as a slow rbd_remove does.
type connStore struct {
	*graphtest.FileStore
	mu       *sync.Mutex
	gate     chan struct{}
	deleting chan string
}

func (s *connStore) lock() func() { s.mu.Lock(); return s.mu.Unlock }

func (s *connStore) CreateImage(ctx context.Context, name string, size int64) error {
	defer s.lock()()
	return s.FileStore.CreateImage(ctx, name, size)
}

func (s *connStore) CloneImage(ctx context.Context, parent, snap, name string) error {
	defer s.lock()()
	return s.FileStore.CloneImage(ctx, parent, snap, name)
}

func (s *connStore) CreateSnapshot(ctx context.Context, image, snap string) error {
	defer s.lock()()
	return s.FileStore.CreateSnapshot(ctx, image, snap)
}

func (s *connStore) RemoveSnapshot(ctx context.Context, image, snap string) error {
	defer s.lock()()
	return s.FileStore.RemoveSnapshot(ctx, image, snap)
}

func (s *connStore) RemoveImage(ctx context.Context, name string) error {
	defer s.lock()()
	if strings.HasPrefix(name, "t-layer-") {
		select {
		case s.deleting <- name:
		default:
		}
		<-s.gate
	}
	return s.FileStore.RemoveImage(ctx, name)
}

// A layer's deletion in the background holds its connection's
// image-context lock (rbd_remove); with Config.Deletions on a
// connection of its own, dockerd's next Create does not wait for it.
// The "one connection" case is the control: the model does hold Create
// up when both share a connection, as the driver did before.
func TestDeletionsOnTheirOwnConnectionDoNotHoldUpCreate(t *testing.T) {
	for _, own := range []bool{false, true} {
		name := "one connection"
		if own {
			name = "own connection"
		}
		t.Run(name, func(t *testing.T) {
			gate, deleting := make(chan struct{}), make(chan string, 4)
			var opened sync.Once
			release := func() { opened.Do(func() { close(gate) }) }
			e := newEnv(t, func(c *graph.Config) {
				fs := c.Store.(*graphtest.FileStore)
				fg := &connStore{FileStore: fs, mu: &sync.Mutex{}, gate: gate, deleting: deleting}
				c.Store = fg
				if own {
					c.Deletions = &connStore{FileStore: fs, mu: &sync.Mutex{}, gate: gate, deleting: deleting}
				}
			})
			t.Cleanup(release) // before the driver's Close, which drains the reaper
			ctx := context.Background()
			e.create("old", "")
			removeUnheld(t, e.d, "old")
			select {
			case <-deleting:
			case <-time.After(10 * time.Second):
				t.Fatal("the reaper did not start deleting t-layer-old")
			}

			created := make(chan error, 1)
			go func() { created <- e.d.Create(ctx, "new", "", graph.CreateOptions{}) }()
			if own {
				select {
				case err := <-created:
					if err != nil {
						t.Fatalf("Create(new): %v", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("Create(new) waited for a background deletion on another connection")
				}
			} else {
				select {
				case err := <-created:
					t.Fatalf("Create(new) returned %v while its connection's lock was held by a deletion; the model does not hold it up", err)
				case <-time.After(300 * time.Millisecond):
				}
			}
			release()
			if !own {
				if err := <-created; err != nil {
					t.Fatalf("Create(new) after the deletion: %v", err)
				}
			}
			if err := e.d.WaitRemovals(ctx); err != nil {
				t.Fatal(err)
			}
			if got := e.images("t-layer-old"); len(got) != 0 {
				t.Fatalf("t-layer-old still there after WaitRemovals: %v", got)
			}
			e.remove("new")
		})
	}
}

// statusStore reports one line of its own, as rbdstore does after a
// renewal of its connection.
type statusStore struct {
	*graphtest.FileStore
	line [2]string
}

func (s statusStore) StoreStatus() [][2]string { return [][2]string{s.line} }

// docker info tells the deletions' connection's lines from the store's.
func TestStatusNamesTheDeletionsConnection(t *testing.T) {
	e := newEnv(t, func(c *graph.Config) {
		fs := c.Store.(*graphtest.FileStore)
		c.Store = statusStore{fs, [2]string{"Cluster Connection", "renewed 1 time(s)"}}
		c.Deletions = statusStore{fs, [2]string{"Cluster Connection", "renewed 2 time(s)"}}
	})
	var got []string
	for _, kv := range e.d.Status() {
		got = append(got, kv[0]+": "+kv[1])
	}
	for _, want := range []string{"Cluster Connection: renewed 1 time(s)", "Deletions Cluster Connection: renewed 2 time(s)"} {
		if !slices.Contains(got, want) {
			t.Errorf("Status has no %q: %q", want, got)
		}
	}
}
