package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/snapshotter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestServeOverGRPC: containerd's own proxy client (what a proxy_plugins
// entry uses) talks to Serve on a 0600 unix socket, and the errdefs
// codes survive the trip; cancelling the context stops Serve.
func TestServeOverGRPC(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(t.TempDir(), "snapshotter.sock")
	ln, err := snapshotter.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v, %v; want mode 0600", path, fi.Mode(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- snapshotter.Serve(ctx, ln, e.sn) }()
	defer func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return within 30 s of its context ending")
		}
	}()
	if _, err := snapshotter.Listen(path); err == nil {
		t.Fatal("a second Listen on a live socket succeeded")
	}

	conn, err := grpc.Dial("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "rbd-nbd")
	cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer ccancel()

	ms, err := sn.Prepare(cctx, "k", "", snapshots.WithLabels(map[string]string{"l": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	checkMount(t, ms, "rw")
	if err := sn.Commit(cctx, "c", "k"); err != nil {
		t.Fatal(err)
	}
	var names []string
	if err := sn.Walk(cctx, func(_ context.Context, i snapshots.Info) error {
		names = append(names, i.Name+"/"+i.Kind.String())
		return nil
	}, "kind==committed"); err != nil || len(names) != 1 || names[0] != "c/Committed" {
		t.Fatalf("Walk over gRPC = %v, %v", names, err)
	}
	if _, err := sn.Stat(cctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat missing over gRPC: %v, want NotFound", err)
	}
	if _, err := sn.Prepare(cctx, "c", ""); !errdefs.IsAlreadyExists(err) {
		t.Errorf("Prepare of an existing name over gRPC: %v, want AlreadyExists", err)
	}
	if _, err := sn.View(cctx, "v", "c"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(cctx, "c"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Remove of a parent over gRPC: %v, want FailedPrecondition", err)
	}
	if err := sn.Commit(cctx, "x", "v"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Commit of a view over gRPC: %v, want FailedPrecondition", err)
	}
	if _, err := sn.Prepare(cctx, "p", "v"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Prepare on a view over gRPC: %v, want InvalidArgument", err)
	}
	for _, k := range []string{"v", "c"} {
		if err := sn.Remove(cctx, k); err != nil {
			t.Fatal(err)
		}
	}
}
