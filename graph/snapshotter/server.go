package snapshotter

import (
	"context"
	"errors"
	"net"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/snapshots"
	"google.golang.org/grpc"
)

// Serve answers containerd's snapshots API
// (containerd.services.snapshots.v1.Snapshots) for sn on ln until ctx
// ends; then it stops taking calls, lets the ones in flight finish and
// returns nil.
func Serve(ctx context.Context, ln net.Listener, sn snapshots.Snapshotter) error {
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	ctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		srv.GracefulStop()
	}()
	err := srv.Serve(ln) // nil once GracefulStop was called
	cancel()
	<-stopped
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}
