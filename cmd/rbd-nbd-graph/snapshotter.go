package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/snapshotter"
)

// runSnapshotter serves containerd's snapshots API over the layer store
// until SIGTERM or SIGINT: the proxy snapshotter front end beside serve's
// graph driver plugin, with the same options, config file, cluster
// connection and NBD attachment.
func runSnapshotter(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "snapshotter", "snapshotter [flags]", fmt.Sprintf(
		"Serves containerd's snapshots API (a proxy snapshotter): every snapshot is\n"+
			"an RBD image, attached through in-process NBD; containerd mounts the device.\n"+
			"In containerd's config.toml:\n\n"+
			"  [proxy_plugins.rbd-nbd]\n    type = \"snapshot\"\n    address = %q\n\n"+
			"Driver options (in the config file or with -o):\n  %s",
		snapshotter.DefaultSocket, strings.Join(backendOptionKeys(), "\n  ")))
	socket := fs.String("socket", snapshotter.DefaultSocket, "unix socket to listen on (containerd's proxy_plugins address)")
	root := fs.String("root", "/var/lib/rbd-nbd-graph/snapshotter", "local directory for the snapshot metadata (metadata.db) and the layer driver's home")
	config := fs.String("config", "", "file of driver options, one key=value per line (# comments)")
	var opts optionList
	fs.VarP(&opts, "option", "o", "driver option key=value (repeatable)")
	var ceph cephFlags
	ceph.register(fs)
	hostID := fs.String("host-id", "", "this host's identity in the cluster (default: the machine ID); with --root it names the host's images")
	shared := fs.String("shared-prefix", "",
		"share committed layers in the cluster under this image name prefix, named by chain ID (remote snapshots: a layer one host unpacked is not fetched again by another); every host of the pool must use the same; empty keeps layers per host")
	var shutdownTimeout time.Duration
	durationVar(fs, &shutdownTimeout, "shutdown-timeout", 30*time.Second,
		"on SIGTERM, how long to wait for IO in flight on the devices before exiting anyway")
	mflags := registerMetricsFlags(fs)
	detachOnExit := fs.Bool("detach-on-exit", false,
		"on SIGTERM detach every device (default: leave them attached for the next snapshotter process, so running containers keep their root filesystems through a restart)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if !filepath.IsAbs(*root) {
		return fmt.Errorf("%w: --root %q must be an absolute path", errUsage, *root)
	}
	logIOFlusher(env.log)

	kvs, err := commandLineOptions(*config, &ceph, fs, opts)
	if err != nil {
		return err
	}
	o, err := parseBackendOptions(kvs)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	// Listen first: a second instance on the same socket fails before
	// it touches devices the first one serves.
	reg, stopMetrics, err := startMetrics(ctx, env, mflags)
	if err != nil {
		return err
	}
	defer stopMetrics()
	declareLayerConnections(reg)
	ln, err := snapshotter.Listen(*socket)
	if err != nil {
		return err
	}
	defer ln.Close()
	var (
		backend dockerplugin.Backend
		d       *graph.Driver
		sn      *snapshotter.Snapshotter
	)
	err = unlessInterrupted(ctx, "starting the snapshotter", func() error {
		var err error
		backend, err = openRBDBackend(ctx, o, env.log)
		if err != nil {
			return err
		}
		backend = observeBackend(reg, backend)
		d, err = graph.New(ctx, graph.Config{
			Home: filepath.Join(*root, "layers"), Options: o.layers, Store: backend.Store, Deletions: backend.Deletions, Attacher: backend.Attacher,
			HostID: *hostID, Logger: env.log, BlockDevices: true, Observer: layerObserver(reg),
		})
		if err != nil {
			return errors.Join(err, closeBackend(backend.Close))
		}
		sn, err = snapshotter.New(ctx, snapshotter.Config{Home: *root, Driver: d, Logger: env.log,
			SharedPrefix: *shared, Store: backend.Store, HostID: *hostID})
		if err != nil {
			return errors.Join(err, d.Close(context.WithoutCancel(ctx)), closeBackend(backend.Close))
		}
		return nil
	})
	if err != nil {
		return err
	}
	env.log.Info("serving containerd's snapshots API", "socket", *socket, "root", *root, "prefix", d.Prefix(), "shared_prefix", *shared)
	// Listening and the driver open: a Type=notify unit ordered before
	// containerd.service lets containerd start now.
	defer notifySystemd(ctx, env.log, "serving "+*socket)()
	err = snapshotter.Serve(ctx, ln, sn)

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	var rerr error
	if *detachOnExit {
		rerr = sn.Close()
	} else {
		rerr = sn.Release(sctx)
	}
	if rerr != nil {
		// Requests still in flight in the cluster hold the connection:
		// closing it would wait for them (a paused or full pool: for
		// ever). Exiting releases it.
		env.log.Error("exiting without closing the cluster connection", "err", rerr)
		return errors.Join(err, rerr)
	}
	return errors.Join(err, closeBackend(backend.Close))
}

// unlessInterrupted runs start and returns its error, or returns at once
// when ctx ends first (SIGTERM) and leaves start running: a librbd call
// waits as long as the pool is full or the OSDs are paused, whatever a
// context says, and SIGTERM must still end the process. What start has
// half done then is what a crash at that point leaves, which the next
// start cleans up.
func unlessInterrupted(ctx context.Context, what string, start func() error) error {
	done := make(chan error, 1)
	go func() { done <- start() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s: %w before the cluster answered; check 'ceph -s' (a full or paused pool?)", what, ctx.Err())
	}
}

func closeBackend(close func() error) error {
	if close == nil {
		return nil
	}
	return close()
}
