package clients

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/metrics"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// export --metrics-listen: nbdcopy writes through the export and the
// write counters on the endpoint grow by at least the bytes written;
// reads, flushes and the latency histogram move too, and nothing is left
// in flight.
func TestExportMetricsMoveWithIO(t *testing.T) {
	dir := t.TempDir()
	const size = 8 << 20
	src, _ := testkit.RandomFile(t, dir, size, 7)
	msock := filepath.Join(dir, "metrics.sock")
	uri := export(t, "--name", "disk", "--metrics-listen", "unix:"+msock, "mem:8M")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before, err := metrics.Scrape(ctx, "unix:"+msock)
	if err != nil {
		t.Fatal(err)
	}
	writes := metrics.Series("rbd_nbd_graph_nbd_bytes_total", "device", "disk", "op", "write")
	reads := metrics.Series("rbd_nbd_graph_nbd_bytes_total", "device", "disk", "op", "read")
	runTool(t, "nbdcopy", "--flush", src, uri)
	runTool(t, "nbdcopy", uri, filepath.Join(dir, "out.bin"))
	after, err := metrics.Scrape(ctx, "unix:"+msock)
	if err != nil {
		t.Fatal(err)
	}
	if got := after[writes] - before[writes]; got < size {
		t.Errorf("%s grew by %.0f, want at least %d", writes, got, size)
	}
	if got := after[reads] - before[reads]; got < size {
		t.Errorf("%s grew by %.0f, want at least %d", reads, got, size)
	}
	for _, s := range []string{
		metrics.Series("rbd_nbd_graph_nbd_requests_total", "device", "disk", "op", "write"),
		metrics.Series("rbd_nbd_graph_nbd_requests_total", "device", "disk", "op", "flush"),
		metrics.Series("rbd_nbd_graph_nbd_request_duration_seconds_count", "device", "disk", "op", "write"),
	} {
		if after[s] <= before[s] {
			t.Errorf("%s: %v before, %v after: did not move", s, before[s], after[s])
		}
	}
	if n := after[metrics.Series("rbd_nbd_graph_nbd_requests_in_flight", "device", "disk")]; n != 0 {
		t.Errorf("%v requests in flight after the clients finished", n)
	}
	for s, v := range after {
		if strings.HasPrefix(s, "rbd_nbd_graph_nbd_errors_total") && v != 0 {
			t.Errorf("%s = %v, want no errors", s, v)
		}
	}
}

// The endpoint has no authentication: a TCP address off loopback is a
// usage error (exit 2) unless --metrics-allow-remote says so.
func TestExportMetricsRefusesRemoteAddress(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:9137", "relative.sock"} {
		out, err := runBinary(t, "export", "--socket", filepath.Join(t.TempDir(), "s"), "--metrics-listen", addr, "mem:1M")
		if err == nil || !strings.Contains(out, "--metrics-listen") {
			t.Errorf("--metrics-listen %s: err %v, output:\n%s", addr, err, out)
		}
	}
}
