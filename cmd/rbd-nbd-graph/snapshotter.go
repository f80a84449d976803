package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
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
	ln, err := snapshotter.Listen(*socket)
	if err != nil {
		return err
	}
	defer ln.Close()
	backend, err := openRBDBackend(ctx, o, env.log)
	if err != nil {
		return err
	}
	backend = observeBackend(reg, backend)
	d, err := graph.New(ctx, graph.Config{
		Home: filepath.Join(*root, "layers"), Options: o.layers, Store: backend.Store, Attacher: backend.Attacher,
		HostID: *hostID, Logger: env.log, BlockDevices: true, Observer: layerObserver(reg),
	})
	if err != nil {
		return errors.Join(err, closeBackend(backend.Close))
	}
	sn, err := snapshotter.New(ctx, snapshotter.Config{Home: *root, Driver: d, Logger: env.log,
		SharedPrefix: *shared, Store: backend.Store, HostID: *hostID})
	if err != nil {
		return errors.Join(err, d.Close(context.WithoutCancel(ctx)), closeBackend(backend.Close))
	}
	env.log.Info("serving containerd's snapshots API", "socket", *socket, "root", *root, "prefix", d.Prefix(), "shared_prefix", *shared)
	// Listening and the driver open: a Type=notify unit ordered before
	// containerd.service lets containerd start now.
	defer notifySystemd(ctx, env.log, "serving "+*socket)()
	err = snapshotter.Serve(ctx, ln, sn)

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if *detachOnExit {
		err = errors.Join(err, sn.Close())
	} else {
		err = errors.Join(err, sn.Release(sctx))
	}
	return errors.Join(err, closeBackend(backend.Close))
}

func closeBackend(close func() error) error {
	if close == nil {
		return nil
	}
	return close()
}
