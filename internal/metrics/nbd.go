package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The NBD protocol's command numbers and error values (nbd/proto.go;
// fixed by the protocol, so they are repeated here rather than imported:
// this package stays importable by nbd's own tests and benchmarks). A
// test in package nbd checks the names against nbd.CommandName.
var opNames = [...]string{0: "read", 1: "write", 2: "disc", 3: "flush", 4: "trim", 5: "cache", 6: "write_zeroes", 7: "block_status", 8: "other"}

const opOther = len(opNames) - 1

// errnoNames are the values an NBD reply carries, by index errnoIndex gives.
var errnoNames = [...]string{"EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "EOVERFLOW", "ENOTSUP", "ESHUTDOWN", "other"}

func errnoIndex(errno uint32) int {
	switch errno {
	case 1:
		return 0
	case 5:
		return 1
	case 12:
		return 2
	case 22:
		return 3
	case 28:
		return 4
	case 75:
		return 5
	case 95:
		return 6
	case 108:
		return 7
	}
	return len(errnoNames) - 1
}

// LatencyBuckets are the request duration histogram's upper bounds in
// seconds: 50 µs (a memory backend) to 13 s (a cluster in recovery),
// each 4 times the last.
var LatencyBuckets = prometheus.ExponentialBuckets(50e-6, 4, 10)

type nbdFamilies struct {
	requests   *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	errors     *prometheus.CounterVec
	inFlight   *prometheus.GaugeVec
	reconnects *prometheus.CounterVec
	info       *prometheus.GaugeVec
}

func newNBDFamilies(reg prometheus.Registerer) *nbdFamilies {
	f := &nbdFamilies{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: "nbd", Name: "requests_total",
			Help: "NBD requests answered, by operation (read, write, flush, trim, write_zeroes, cache, block_status, other), errors included."},
			[]string{"device", "op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: "nbd", Name: "bytes_total",
			Help: "Bytes of the NBD requests answered without error, by operation (the range for trim and write_zeroes)."},
			[]string{"device", "op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Subsystem: "nbd", Name: "request_duration_seconds",
			Help: "Time from reading an NBD request to queueing its reply, by operation.", Buckets: LatencyBuckets},
			[]string{"device", "op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: "nbd", Name: "errors_total",
			Help: "NBD requests answered with an error, by operation and NBD errno (EIO, EPERM, EINVAL, ENOSPC, ...)."},
			[]string{"device", "op", "errno"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: "nbd", Name: "requests_in_flight",
			Help: "NBD requests read and not yet answered."},
			[]string{"device"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: "nbd", Name: "reconnects_total",
			Help: "Kernel NBD connections replaced after the kernel dropped them."},
			[]string{"device"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: "nbd", Name: "device_info",
			Help: "1 for each kernel device served: its device label and its path (/dev/nbdN)."},
			[]string{"device", "path"}),
	}
	reg.MustRegister(f.requests, f.bytes, f.latency, f.errors, f.inFlight, f.reconnects, f.info)
	return f
}

// Device counts the requests of one kernel device or export: it is an
// nbd.Observer and an nbd.ConnectionObserver. Safe for concurrent use.
type Device struct {
	f          *nbdFamilies
	name       string
	inFlight   prometheus.Gauge
	reconnects prometheus.Counter
	path       atomic.Pointer[string]
	// The children of an operation are resolved the first time it is
	// seen (one label lookup), then loaded with one atomic read.
	ops  [len(opNames)]atomic.Pointer[opMetrics]
	errs [len(opNames)][len(errnoNames)]atomic.Pointer[counter]
}

type opMetrics struct {
	requests prometheus.Counter
	bytes    prometheus.Counter
	latency  prometheus.Observer
}

type counter struct{ prometheus.Counter }

// Device returns the observer of the device or export called name (the
// device label). Two calls with one name share the series.
func (r *Registry) Device(name string) *Device {
	return &Device{
		f:          r.nbd,
		name:       name,
		inFlight:   r.nbd.inFlight.WithLabelValues(name),
		reconnects: r.nbd.reconnects.WithLabelValues(name),
	}
}

// Name is the device label.
func (d *Device) Name() string { return d.name }

// SetPath records the kernel device that serves d (/dev/nbdN), in
// rbd_nbd_graph_nbd_device_info.
func (d *Device) SetPath(path string) {
	if old := d.path.Swap(&path); old != nil && *old != path {
		d.f.info.DeleteLabelValues(d.name, *old)
	}
	d.f.info.WithLabelValues(d.name, path).Set(1)
}

func opIndex(cmd uint16) int {
	if int(cmd) < opOther {
		return int(cmd)
	}
	return opOther
}

func (d *Device) op(i int) *opMetrics {
	if m := d.ops[i].Load(); m != nil {
		return m
	}
	name := opNames[i]
	m := &opMetrics{
		requests: d.f.requests.WithLabelValues(d.name, name),
		bytes:    d.f.bytes.WithLabelValues(d.name, name),
		latency:  d.f.latency.WithLabelValues(d.name, name),
	}
	if !d.ops[i].CompareAndSwap(nil, m) {
		return d.ops[i].Load() // another goroutine resolved it: same children
	}
	return m
}

// RequestStarted implements nbd.Observer.
func (d *Device) RequestStarted(uint16) { d.inFlight.Inc() }

// RequestDone implements nbd.Observer: no allocation once the
// operation (and, on error, its errno) has been seen.
func (d *Device) RequestDone(cmd uint16, length uint32, errno uint32, took time.Duration) {
	d.inFlight.Dec()
	i := opIndex(cmd)
	m := d.op(i)
	m.requests.Inc()
	m.latency.Observe(took.Seconds())
	if errno == 0 {
		m.bytes.Add(float64(length))
		return
	}
	d.errorCounter(i, errnoIndex(errno)).Inc()
}

func (d *Device) errorCounter(op, e int) prometheus.Counter {
	if c := d.errs[op][e].Load(); c != nil {
		return c.Counter
	}
	c := &counter{d.f.errors.WithLabelValues(d.name, opNames[op], errnoNames[e])}
	if !d.errs[op][e].CompareAndSwap(nil, c) {
		return d.errs[op][e].Load().Counter
	}
	return c.Counter
}

// ConnectionReplaced implements nbd.ConnectionObserver.
func (d *Device) ConnectionReplaced() { d.reconnects.Inc() }

// Forget removes d's series (the device is gone): a scrape no longer
// shows it. Requests answered after Forget recreate them.
func (d *Device) Forget() {
	l := prometheus.Labels{"device": d.name}
	d.f.requests.DeletePartialMatch(l)
	d.f.bytes.DeletePartialMatch(l)
	d.f.latency.DeletePartialMatch(l)
	d.f.errors.DeletePartialMatch(l)
	d.f.inFlight.DeletePartialMatch(l)
	d.f.reconnects.DeletePartialMatch(l)
	d.f.info.DeletePartialMatch(l)
	for i := range d.ops {
		d.ops[i].Store(nil)
		for e := range d.errs[i] {
			d.errs[i][e].Store(nil)
		}
	}
}
