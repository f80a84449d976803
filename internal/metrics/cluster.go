package metrics

import "github.com/prometheus/client_golang/prometheus"

// Cluster shows the state of the process's Ceph connection(s).
type Cluster struct {
	connected  prometheus.Gauge
	recoveries prometheus.Counter
}

func newCluster(reg prometheus.Registerer) *Cluster {
	c := &Cluster{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: "cluster", Name: "connected",
			Help: "1 while the Ceph connection serves requests, 0 before it is open and while it is blocklisted."}),
		recoveries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: "cluster", Name: "blocklist_recoveries_total",
			Help: "New connections opened after the cluster blocklisted this client."}),
	}
	reg.MustRegister(c.connected, c.recoveries)
	return c
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
