// Package bench measures the IO path: raw backend calls, our NBD export
// through an in-process client, and a kernel NBD device, with fio-like
// workloads and latency percentiles. `rbd-nbd-graph bench` (cmd) is its
// front end; it opens the backend (mem:, file:, rbd:) and hands it here.
//
// The pieces:
//   - workload.go: Pattern and Workload (what to issue) and Stream, the
//     per-worker generator of IOs: aligned offsets from a seeded PCG, so a
//     seed always gives the same offsets; sequential patterns share a
//     Cursor.
//   - options.go: Options (depth, runtime or byte total, ramp, verify) and
//     OptionError, the typed "bad input" error every check returns before
//     any IO.
//   - target.go, target_export.go, target_device.go: a Target opens a
//     Session (one nbd.Backend per connection) for a run: Raw (the
//     backend itself), Export (our nbd.Server on a unix socket and
//     nbd.Client connections), Device (nbd.Attach and O_DIRECT on the
//     /dev/nbdN it gives).
//   - runner.go: Run drives a Session with IODepth goroutines, each one
//     IO in flight (or, for a single nbd.AsyncBackend such as raw rbd:,
//     IODepth IOs kept in flight through its asynchronous IO by the
//     completion goroutine), through ramp and measured phases, and builds
//     the Result; verify.go is the optional data check.
//   - histogram.go: the allocation-free, mergeable log-linear latency
//     histogram each worker records into.
//   - result.go: Result (the --json schema) and its table; compare.go
//     sets targets against the first; live.go draws progress on a
//     terminal.
//   - sweep.go, svg.go: Sweep over depth x connections x block size,
//     Recommend (driver options within a p99 budget), the SVG chart, and
//     SweepReport.Save (JSON and chart into a folder).
//
// No cgo here: the rbd: backend is opened by cmd through rbdio.
package bench
