package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/rbdstore"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/metrics"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/spf13/pflag"
)

// metricsFlags are --metrics-listen and --metrics-allow-remote, shared by
// serve, snapshotter, map (and attach) and export.
type metricsFlags struct {
	listen      string
	allowRemote bool
}

// registerMetricsFlags adds the metrics flags to a subcommand's flag set:
// the one place each subcommand's flag code calls.
func registerMetricsFlags(fs *pflag.FlagSet) *metricsFlags {
	m := &metricsFlags{}
	fs.StringVar(&m.listen, "metrics-listen", "",
		"serve Prometheus metrics at /metrics on this loopback HOST:PORT (e.g. 127.0.0.1:9137) or unix socket (unix:/PATH or /PATH); empty: no metrics")
	fs.BoolVar(&m.allowRemote, "metrics-allow-remote", false,
		"let --metrics-listen use a non-loopback TCP address: the endpoint has no authentication")
	return m
}

// startMetrics listens on --metrics-listen and serves a new registry
// there until ctx ends. Without the flag it returns a nil registry: the
// callers then attach no observers and the IO loop counts nothing. stop
// closes the endpoint.
func startMetrics(ctx context.Context, env *environment, m *metricsFlags) (reg *metrics.Registry, stop func(), err error) {
	if m == nil || m.listen == "" {
		return nil, func() {}, nil
	}
	ln, exposure, err := metrics.Listen(m.listen, m.allowRemote)
	if errors.Is(err, metrics.ErrRemote) || errors.Is(err, metrics.ErrAddr) {
		return nil, nil, fmt.Errorf("%w: --metrics-listen: %v (or add --metrics-allow-remote)", errUsage, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	if exposure != "" {
		env.log.Warn("metrics: the endpoint has no authentication: anyone who can reach this address can read it",
			"listen", m.listen, "exposure", exposure)
	}
	reg = metrics.New()
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := metrics.Serve(ctx, ln, reg.Handler(), env.log); err != nil {
			env.log.Error("metrics: endpoint stopped", "listen", m.listen, "err", err)
		}
	}()
	env.log.Info("metrics: serving", "listen", ln.Addr().String(), "path", "/metrics")
	return reg, func() { cancel(); <-done }, nil
}

// observeTarget returns the observer of the device or export serving
// target's backend b under the label name (nil without metrics), and
// follows the cluster connection of an rbd: target.
func observeTarget(reg *metrics.Registry, name string, b nbd.Backend) *metrics.Device {
	if reg == nil {
		return nil
	}
	if r, ok := b.(*rbdstore.Reopener); ok {
		r.Observe(reg.Cluster(metrics.ConnTarget))
	}
	return reg.Device(name)
}

// clusterObservable is a layer store whose cluster connection can be
// followed (rbdstore.Store).
type clusterObservable interface {
	Observe(rbdstore.ClusterObserver)
}

// declareLayerConnections shows serve's and snapshotter's two cluster
// connections, the layer store's and the deletions', as not connected
// from the start, before the backend opens them (nothing without
// metrics).
func declareLayerConnections(reg *metrics.Registry) {
	if reg == nil {
		return
	}
	reg.Cluster(metrics.ConnLayers).SetConnected(false)
	reg.Cluster(metrics.ConnDeletions).SetConnected(false)
}

// observeBackend makes the devices of a layer backend report to reg
// (one device label per layer image) and follows its two cluster
// connections, the store's and the deletions store's (each down while a
// blocklisted one is renewed), until the backend closes. A backend
// without a deletions store of its own deletes through the store's
// connection, which the deletions series then follows too. Without
// metrics it returns b as is.
func observeBackend(reg *metrics.Registry, b dockerplugin.Backend) dockerplugin.Backend {
	if reg == nil || b.Attacher == nil {
		return b
	}
	if a, ok := b.Attacher.(*nbdattach.Attacher); ok {
		a.ObserveDevices(func(name string) nbdattach.DeviceObserver { return reg.Device(name) })
	}
	layers, deletions := reg.Cluster(metrics.ConnLayers), reg.Cluster(metrics.ConnDeletions)
	follow := func(st graph.ImageStore, o rbdstore.ClusterObserver) {
		if st, ok := st.(clusterObservable); ok {
			st.Observe(o) // a store has one observer: the last one set
		} else {
			o.SetConnected(true)
		}
	}
	if b.Deletions == nil {
		follow(b.Store, clusterObservers{layers, deletions})
	} else {
		follow(b.Store, layers)
		follow(b.Deletions, deletions)
	}
	if close := b.Close; close != nil {
		b.Close = func() error {
			layers.SetConnected(false)
			deletions.SetConnected(false)
			return close()
		}
	}
	return b
}

// clusterObservers tells each of its observers what one connection does.
type clusterObservers []rbdstore.ClusterObserver

func (obs clusterObservers) SetConnected(ok bool) {
	for _, o := range obs {
		o.SetConnected(ok)
	}
}

func (obs clusterObservers) BlocklistRecovered() {
	for _, o := range obs {
		o.BlocklistRecovered()
	}
}

// layerObserver is the layer driver's observer: nil without metrics (a
// nil graph.Observer, not a typed nil).
func layerObserver(reg *metrics.Registry) graph.Observer {
	if reg == nil {
		return nil
	}
	return reg.Layers()
}
