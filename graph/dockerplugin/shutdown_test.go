package dockerplugin_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
)

// stuckCluster makes the backend's opening block, whatever its context
// says, as a librbd call does while the pool is full or the OSDs are
// paused (a CI run saw `serve` ignore SIGTERM for 3 minutes while
// dockerd's Init waited on a full cluster). entered is closed once an
// open is under way; the test's end lets it go.
func stuckCluster(t *testing.T, entered chan struct{}) func(*dockerplugin.Config) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	return func(c *dockerplugin.Config) {
		c.ShutdownTimeout = time.Second
		c.Parse = func(kvs []string) (graph.Options, dockerplugin.Opener, error) {
			o, err := graph.ParseOptions(graph.DefaultOptions(), kvs)
			return o, func(context.Context) (dockerplugin.Backend, error) {
				close(entered)
				<-release
				return dockerplugin.Backend{}, errors.New("released by the test")
			}, err
		}
	}
}

// stopWithin is SIGTERM, failing t if Serve has not returned after limit.
func stopWithin(t *testing.T, srv *server, limit time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	srv.cancel()
	select {
	case err := <-srv.done:
		return time.Since(start), err
	case <-time.After(limit):
		t.Fatalf("Serve had not returned %v after SIGTERM while an Init waits for the cluster", limit)
		return 0, nil
	}
}

func TestSIGTERMDuringAnInitTheClusterHoldsIsBounded(t *testing.T) {
	dir := t.TempDir()
	entered := make(chan struct{})
	srv, err := startServer(dir, slog.New(slog.NewTextHandler(testWriter{t}, nil)), stuckCluster(t, entered))
	if err != nil {
		t.Fatal(err)
	}
	c, err := srv.client()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		var resp struct{ Err string }
		_ = c.Call("GraphDriver.Init", map[string]any{"Home": filepath.Join(dir, "home"), "Opts": testOpts}, &resp)
	}()
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("Init never reached the backend")
	}
	// Serve's grace for requests in flight is 10 s, then Shutdown's 1 s.
	took, err := stopWithin(t, srv, 40*time.Second)
	t.Logf("Serve returned %v after SIGTERM: %v", took.Round(100*time.Millisecond), err)
	if !errors.Is(err, dockerplugin.ErrShutdownBlocked) {
		t.Fatalf("Serve after SIGTERM during a stuck Init: %v, want ErrShutdownBlocked", err)
	}
}

func TestSIGTERMDuringAResumeTheClusterHoldsIsBounded(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state", "init.json")
	rec, _ := json.Marshal(map[string]any{"Home": filepath.Join(dir, "home"), "Options": testOpts})
	if err := os.MkdirAll(filepath.Dir(state), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, rec, 0o600); err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	srv, err := startServer(dir, slog.New(slog.NewTextHandler(testWriter{t}, nil)), stuckCluster(t, entered))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the resume never reached the backend")
	}
	took, err := stopWithin(t, srv, 20*time.Second)
	t.Logf("Serve returned %v after SIGTERM: %v", took.Round(100*time.Millisecond), err)
	if !errors.Is(err, dockerplugin.ErrShutdownBlocked) {
		t.Fatalf("Serve after SIGTERM during a stuck resume: %v, want ErrShutdownBlocked", err)
	}
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("the Init record is gone (%v): the next process could not resume", err)
	}
}
