// Package bench measures the IO path: raw backend calls, our NBD export
// through an in-process client, and a kernel NBD device, with fio-like
// workloads and latency percentiles.
package bench
