package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/rbdstore"
)

// backendOptions are the driver options of a front end on RBD and NBD:
// the graph core's layer keys, the store's rbd.* connection keys and the
// attacher's nbd.* keys, each parsed and validated by its owner.
type backendOptions struct {
	layers graph.Options
	store  rbdstore.Options
	nbd    nbdattach.Options
}

func defaultBackendOptions() backendOptions {
	return backendOptions{layers: graph.DefaultOptions(), store: rbdstore.DefaultOptions(), nbd: nbdattach.DefaultOptions()}
}

func (o *backendOptions) sets() []graph.OptionSet {
	return []graph.OptionSet{&o.layers, &o.store, &o.nbd}
}

// parseBackendOptions applies key=value strings (later ones win) to the
// defaults.
func parseBackendOptions(kvs []string) (backendOptions, error) {
	o := defaultBackendOptions()
	err := graph.ParseOptionSets(kvs, o.sets()...)
	return o, err
}

// backendOptionKeys lists every key, sorted (for help texts).
func backendOptionKeys() []string {
	o := defaultBackendOptions()
	return graph.OptionKeys(o.sets()...)
}

// openRBDBackend connects to the cluster the options name and returns
// the graph driver's store (the pool, through rbdio), its deletions store
// (openStores) and attacher (the images served to the kernel through
// package nbd, in this process). It fails early, with the kernel-support
// message, where NBD is missing.
func openRBDBackend(ctx context.Context, o backendOptions, log *slog.Logger) (dockerplugin.Backend, error) {
	if err := nbdattach.Probe(ctx, log); err != nil {
		return dockerplugin.Backend{}, err
	}
	store, dels, err := openStores(ctx, o, log)
	if err != nil {
		return dockerplugin.Backend{}, err
	}
	att := nbdattach.New(store.OpenImage, store.Where(), o.nbd, log)
	return dockerplugin.Backend{Store: store, Deletions: dels, Attacher: att,
		Close: func() error { return errors.Join(store.Close(), dels.Close()) }}, nil
}

// openStores opens the layer store and, on a second cluster client to
// the same pool, the store the background deletions go through: rbdio
// runs a connection's image opens and removals one at a time, so on the
// store's own connection every deletion would hold up the opens of the
// Creates and Gets dockerd waits for.
func openStores(ctx context.Context, o backendOptions, log *slog.Logger) (store, dels *rbdstore.Store, err error) {
	conn, err := rbdstore.Connect(ctx, o.store)
	if err != nil {
		return nil, nil, err
	}
	store = rbdstore.New(ctx, conn, o.store, log)
	dconn, err := rbdstore.Connect(ctx, o.store)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("second connection, for deletions: %w", err), store.Close())
	}
	return store, rbdstore.New(ctx, dconn, o.store, log.With("connection", "deletions")), nil
}
