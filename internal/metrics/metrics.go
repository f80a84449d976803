package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// namespace prefixes every metric of this project.
const namespace = "rbd_nbd_graph"

// Registry holds the process's metrics. Its families exist from New on,
// so a scrape shows them (at zero, or without series) before any IO.
type Registry struct {
	reg     *prometheus.Registry
	nbd     *nbdFamilies
	layers  *Layers
	cluster *clusterFamilies
}

// New returns a Registry with the project's families, Go's runtime
// metrics and the process's (CPU, memory, descriptors).
func New() *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r.nbd = newNBDFamilies(r.reg)
	r.layers = newLayers(r.reg)
	r.cluster = newClusterFamilies(r.reg)
	return r
}

// Handler serves the registry in the Prometheus text format (or
// OpenMetrics, if the scraper asks for it).
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg, EnableOpenMetrics: true})
}

// Gatherer is the registry, for tests that read values directly.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Layers is the layer driver's observer.
func (r *Registry) Layers() *Layers { return r.layers }

// Connection names of the cluster families' connection label.
const (
	ConnTarget    = "target"    // map's or export's rbd: target
	ConnLayers    = "layers"    // serve's or snapshotter's layer store
	ConnDeletions = "deletions" // their background deletions (graph.Config.Deletions)
)

// Cluster is the observer of the Ceph connection named connection. Its
// series exist, at 0, from the first call on.
func (r *Registry) Cluster(connection string) *Cluster {
	return &Cluster{
		connected:  r.cluster.connected.WithLabelValues(connection),
		recoveries: r.cluster.recoveries.WithLabelValues(connection),
	}
}
