package metrics

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The observer's own cost per request (started and done), beside the
// cost of reading the clock the IO loop pays for it, so a change to
// either shows: both must be 0 allocs/op.
func BenchmarkDeviceRequest(b *testing.B) {
	d := New().Device("bench")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		d.RequestStarted(0)
		d.RequestDone(0, 4096, 0, 30*time.Microsecond)
	}
}

func BenchmarkClockAnchor(b *testing.B) {
	epoch := time.Now()
	var sum time.Duration
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sum += time.Since(epoch)
	}
	_ = sum
}

// A scrape of the handler shows a device's counters after requests, its
// errors by errno, and nothing of it after Forget.
func TestDeviceSeriesThroughHandler(t *testing.T) {
	reg := New()
	srv := httptest.NewServer(reg.Handler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	scrape := func() map[string]float64 {
		t.Helper()
		m, err := Scrape(ctx, strings.TrimPrefix(srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	d := reg.Device("nbd-test")
	d.SetPath("/dev/nbd7")
	for i := 0; i < 3; i++ {
		d.RequestStarted(1)
		d.RequestDone(1, 4096, 0, time.Millisecond)
	}
	d.RequestStarted(0)
	d.RequestDone(0, 512, 5, 2*time.Millisecond) // EIO
	d.RequestStarted(0)                          // still in flight
	d.ConnectionReplaced()
	reg.Cluster(ConnTarget).SetConnected(true)
	reg.Layers().LayerOp("create", 20*time.Millisecond, nil)
	reg.Layers().FlattensPendingFrom(func() int { return 2 })

	m := scrape()
	for s, want := range map[string]float64{
		Series("rbd_nbd_graph_nbd_requests_total", "device", "nbd-test", "op", "write"):                                  3,
		Series("rbd_nbd_graph_nbd_bytes_total", "device", "nbd-test", "op", "write"):                                     3 * 4096,
		Series("rbd_nbd_graph_nbd_requests_total", "device", "nbd-test", "op", "read"):                                   1,
		Series("rbd_nbd_graph_nbd_bytes_total", "device", "nbd-test", "op", "read"):                                      0,
		Series("rbd_nbd_graph_nbd_errors_total", "device", "nbd-test", "errno", "EIO", "op", "read"):                     1,
		Series("rbd_nbd_graph_nbd_requests_in_flight", "device", "nbd-test"):                                             1,
		Series("rbd_nbd_graph_nbd_reconnects_total", "device", "nbd-test"):                                               1,
		Series("rbd_nbd_graph_nbd_device_info", "device", "nbd-test", "path", "/dev/nbd7"):                               1,
		Series("rbd_nbd_graph_nbd_request_duration_seconds_count", "device", "nbd-test", "op", "write"):                  3,
		Series("rbd_nbd_graph_nbd_request_duration_seconds_bucket", "device", "nbd-test", "le", "0.0008", "op", "write"): 0,
		Series("rbd_nbd_graph_nbd_request_duration_seconds_bucket", "device", "nbd-test", "le", "0.0032", "op", "write"): 3,
		Series("rbd_nbd_graph_cluster_connected", "connection", "target"):                                                1,
		Series("rbd_nbd_graph_layer_operations_total", "op", "create", "result", "ok"):                                   1,
		Series("rbd_nbd_graph_layer_flattens_pending"):                                                                   2,
	} {
		if got, ok := m[s]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", s, got, ok, want)
		}
	}
	d.Forget()
	for s := range scrape() {
		if strings.Contains(s, `device="nbd-test"`) {
			t.Errorf("%s still shown after Forget", s)
		}
	}
}

// Listen refuses what it cannot protect: a TCP address off loopback
// without allowRemote, a relative socket path, a live socket.
func TestListen(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0", "[::]:0", "example.org:9137"} {
		if ln, _, err := Listen(addr, false); !errors.Is(err, ErrRemote) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("Listen(%q) = %v, want ErrRemote", addr, err)
		}
	}
	if _, _, err := Listen("unix:rel.sock", false); !errors.Is(err, ErrAddr) {
		t.Errorf("relative unix path: %v, want ErrAddr", err)
	}
	ln, exposure, err := Listen("127.0.0.1:0", false)
	if err != nil || exposure != "" {
		t.Fatalf("loopback: %v %q", err, exposure)
	}
	ln.Close()
	ln, exposure, err = Listen("0.0.0.0:0", true)
	if err != nil || exposure == "" {
		t.Fatalf("allowed remote: %v, exposure %q (want a warning's text)", err, exposure)
	}
	ln.Close()
	sock := filepath.Join(t.TempDir(), "m.sock")
	ln, _, err = Listen(sock, false)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != SocketMode {
		t.Errorf("socket %s: %v, mode %v, want %v", sock, err, fi.Mode().Perm(), os.FileMode(SocketMode))
	}
	if _, _, err := Listen("unix:"+sock, false); err == nil {
		t.Error("a second Listen on a live socket succeeded")
	}
	ln.Close()
}
