package metrics

import "github.com/prometheus/client_golang/prometheus"

// clusterFamilies show the state of the process's Ceph connections, one
// series per connection (label connection): a process can hold more than
// one (serve and snapshotter delete removed layers on a connection of
// their own), and a blocklisted or lost connection must be seen as
// itself, not hidden behind one that is fine.
type clusterFamilies struct {
	connected  *prometheus.GaugeVec
	recoveries *prometheus.CounterVec
}

func newClusterFamilies(reg prometheus.Registerer) *clusterFamilies {
	c := &clusterFamilies{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: "cluster", Name: "connected",
			Help: "1 while the Ceph connection serves requests, 0 before it is open and while it is blocklisted."}, []string{"connection"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: "cluster", Name: "blocklist_recoveries_total",
			Help: "New connections opened after the cluster blocklisted this client."}, []string{"connection"}),
	}
	reg.MustRegister(c.connected, c.recoveries)
	return c
}

// Cluster observes one Ceph connection of the process.
type Cluster struct {
	connected  prometheus.Gauge
	recoveries prometheus.Counter
}

// SetConnected records whether the connection serves requests.
func (c *Cluster) SetConnected(ok bool) {
	v := 0.0
	if ok {
		v = 1
	}
	c.connected.Set(v)
}

// BlocklistRecovered: a new connection replaced a blocklisted one.
func (c *Cluster) BlocklistRecovered() { c.recoveries.Inc() }
