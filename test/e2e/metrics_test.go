//go:build vmtest

package e2e

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/metrics"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// map --metrics-listen on loopback: dd writes to the device while the
// endpoint is scraped, and the write counters of the device grow by at
// least the bytes written; the device's path and the cluster connection
// show. This is issue 16's acceptance for metrics (a scrape during IO,
// counters that move).
func TestMapMetricsDuringIO(t *testing.T) {
	spec := newImage(t, 128, "")
	addr := freeLoopbackPort(t)
	target := "rbd:" + spec
	dev := mapDevice(t, target, "--metrics-listen", addr)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	scrape := func() map[string]float64 {
		t.Helper()
		m, err := metrics.Scrape(ctx, addr)
		if err != nil {
			t.Fatalf("scrape %s: %v", addr, err)
		}
		return m
	}
	writes := metrics.Series("rbd_nbd_graph_nbd_bytes_total", "device", target, "op", "write")
	writeReqs := metrics.Series("rbd_nbd_graph_nbd_requests_total", "device", target, "op", "write")
	before := scrape()
	if v := before[metrics.Series("rbd_nbd_graph_nbd_device_info", "device", target, "path", dev)]; v != 1 {
		t.Errorf("device_info for %s = %v, want 1", dev, v)
	}
	if v := before[metrics.Series("rbd_nbd_graph_cluster_connected", "connection", metrics.ConnTarget)]; v != 1 {
		t.Errorf("cluster_connected = %v, want 1", v)
	}

	const mib = 64
	dd := exec.CommandContext(ctx, testkit.Tool(t, "dd"), "if=/dev/urandom", "of="+dev, "bs=1M", fmt.Sprint("count=", mib), "oflag=direct", "conv=fsync")
	out := make(chan error, 1)
	if err := dd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { out <- dd.Wait() }()
	// Scrape while dd runs: the endpoint answers during IO and the
	// counters only grow.
	during, last := 0, before[writes]
	var ddErr error
wait:
	for {
		select {
		case ddErr = <-out:
			break wait
		case <-time.After(200 * time.Millisecond):
			v := scrape()[writes]
			if v < last {
				t.Errorf("%s went down during IO: %v -> %v", writes, last, v)
			}
			last = v
			during++
		}
	}
	if ddErr != nil {
		t.Fatalf("dd: %v", ddErr)
	}
	after := scrape()
	t.Logf("%d scrapes during dd; %s: %v -> %v; write requests %v -> %v", during, writes, before[writes], after[writes], before[writeReqs], after[writeReqs])
	if grew := after[writes] - before[writes]; grew < mib<<20 {
		t.Errorf("%s grew by %.0f bytes, want at least %d", writes, grew, mib<<20)
	}
	if after[writeReqs] <= before[writeReqs] {
		t.Errorf("%s did not move", writeReqs)
	}
	if n := after[metrics.Series("rbd_nbd_graph_nbd_request_duration_seconds_count", "device", target, "op", "write")]; n < after[writeReqs] {
		t.Errorf("write latency count %v < write requests %v", n, after[writeReqs])
	}
	if n := after[metrics.Series("rbd_nbd_graph_nbd_requests_in_flight", "device", target)]; n != 0 {
		t.Errorf("%v requests in flight after dd's fsync", n)
	}
	unmap(t, dev)
}

// freeLoopbackPort returns 127.0.0.1:PORT for a port free a moment ago.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
