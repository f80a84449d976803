package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LayerBuckets are the layer operation histogram's bounds in seconds:
// 1 ms (a cached lookup) to about 4 minutes (a flatten of a large image).
var LayerBuckets = prometheus.ExponentialBuckets(0.001, 4, 10)

// Layers counts the layer driver's operations (a graph.Observer):
// create, remove, mount, unmount, snapshot, flatten, attach, detach, ...
// with their durations, and shows the flattens pending.
type Layers struct {
	ops     *prometheus.CounterVec
	took    *prometheus.HistogramVec
	pending atomic.Pointer[func() int]
}

func newLayers(reg prometheus.Registerer) *Layers {
	l := &Layers{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: "layer", Name: "operations_total",
			Help: "Layer operations finished, by kind (create, remove, mount, unmount, snapshot, flatten, attach, detach, ...) and result (ok, error)."},
			[]string{"op", "result"}),
		took: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Subsystem: "layer", Name: "operation_duration_seconds",
			Help: "Duration of layer operations, by kind.", Buckets: LayerBuckets},
			[]string{"op"}),
	}
	flattens := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Subsystem: "layer", Name: "flattens_pending",
		Help: "Layers queued for or being flattened (clone chains past rbd.maxclonedepth)."},
		func() float64 {
			if f := l.pending.Load(); f != nil {
				return float64((*f)())
			}
			return 0
		})
	reg.MustRegister(l.ops, l.took, flattens)
	return l
}

// LayerOp records one finished operation of kind op.
func (l *Layers) LayerOp(op string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	l.ops.WithLabelValues(op, result).Inc()
	l.took.WithLabelValues(op).Observe(took.Seconds())
}

// FlattensPendingFrom makes rbd_nbd_graph_layer_flattens_pending read
// pending at each scrape (the driver's queue).
func (l *Layers) FlattensPendingFrom(pending func() int) { l.pending.Store(&pending) }
