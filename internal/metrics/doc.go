// Package metrics is the process's Prometheus endpoint: one Registry per
// process, served as the text exposition format over HTTP on a loopback
// TCP address or a unix socket (Listen; the endpoint has no
// authentication, so any other TCP address needs allowRemote).
//
// The packages that do the work do not import Prometheus: each
// declares the small observer interface it calls, and this package
// implements them.
//
//   - nbd.go: Device, an nbd.Observer (and nbd.ConnectionObserver) for one
//     kernel device or export. Its children (counters, histogram) are
//     resolved once per operation and then cached, so the IO loop's hot
//     path makes no label lookup and no allocation. Forget drops its
//     series when the device goes.
//   - layer.go: Layers, the layer driver's observer: operations by kind
//     (create, remove, mount, unmount, snapshot, flatten, ...) with their
//     durations and results, and flattens pending.
//   - cluster.go: Cluster, the Ceph connection's state (1 connected, 0
//     not) and its blocklist recoveries.
//
// Every name starts with rbd_nbd_graph_; README "Metrics" lists them with
// their labels, and a test keeps that list and the Registry in step.
package metrics
