package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/rbdstore"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// openRBDBackend connects to the cluster the options name and returns
// the graph driver's store (the pool, through rbdio) and attacher (the
// images served to the kernel through package nbd, in this process). It
// fails early, with the kernel-support message, where NBD is missing.
func openRBDBackend(ctx context.Context, o graph.Options, log *slog.Logger) (dockerplugin.Backend, error) {
	if err := nbdattach.Probe(ctx, log); err != nil {
		return dockerplugin.Backend{}, err
	}
	conn, err := rbdio.Connect(ctx, rbdio.Config{
		ConfFile:  o.ConfigFile,
		Keyring:   o.Keyring,
		ID:        o.Client,
		Pool:      o.Pool,
		Namespace: o.Namespace,
		// Layers are remounted under a restarted driver: writes it
		// acknowledged must be in the cluster, not in a dead cache.
		CachePolicy: rbdio.CachePolicy(o.CachePolicy),
		// A stuck cluster fails IO after this instead of hanging the
		// layers' devices, Remove and Cleanup (0 waits, as krbd).
		OSDTimeout:     o.OSDTimeout,
		ConnectTimeout: o.ConnectTimeout,
		AbortOnFull:    o.AbortOnFull,
	})
	if err != nil {
		return dockerplugin.Backend{}, fmt.Errorf("connect to the cluster (rbd.pool=%s rbd.client=%s rbd.configfile=%q): %w", o.Pool, o.Client, o.ConfigFile, err)
	}
	store := rbdstore.New(conn, rbdstore.Config{Pool: o.Pool, Namespace: o.Namespace, DataPool: o.DataPool,
		Version: rbdstore.CephVersion(ctx), Crash: graph.CrashAtFromEnv()})
	att := nbdattach.New(nbdattach.Config{Open: store.OpenImage, Where: store.Where(), Options: o.NBD, Logger: log})
	return dockerplugin.Backend{Store: store, Attacher: att, Close: conn.Close}, nil
}
