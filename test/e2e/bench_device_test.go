//go:build vmtest

package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/bench"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// TestBenchDeviceTarget runs `bench --target device` for real: the tool
// attaches a kernel NBD device, drives it with direct IO and a verified
// mixed workload, and detaches it. The figures themselves are compared
// with fio by bench/scripts/crosscheck-vm.sh (make bench-vm).
func TestBenchDeviceTarget(t *testing.T) {
	testkit.RequireKernelNBD(t)
	cases := []struct {
		name    string
		backend func(t *testing.T) []string
	}{
		{"mem", func(t *testing.T) []string { return []string{"--backend", "mem:64M"} }},
		{"rbd", func(t *testing.T) []string {
			spec := newImage(t, 128, "")
			return []string{"--backend", "rbd:" + spec, "--ceph-conf", os.Getenv("CEPH_CONF")}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"bench", "--target", "device", "--rw", "mixed", "--rwmix", "60",
				"--bs", "4k", "--iodepth", "8", "--connections", "2", "--total", "8M", "--verify", "--json"},
				c.backend(t)...)
			out := testkit.Must(t, 5*time.Minute, testkit.Binary(t), args...)
			var rep bench.Report
			if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &rep); err != nil {
				t.Fatalf("bench --json: %v\n%s", err, out)
			}
			if len(rep.Results) != 1 {
				t.Fatalf("%d results", len(rep.Results))
			}
			r := rep.Results[0]
			if r.Target != "device" || !strings.HasPrefix(r.Device, "/dev/nbd") || r.Connections != 2 {
				t.Fatalf("ran on target %q device %q with %d connections", r.Target, r.Device, r.Connections)
			}
			if r.Total.IOs != 8<<20/4096 || r.Read == nil || r.Write == nil || r.Read.IOs == 0 || r.Write.IOs == 0 {
				t.Fatalf("IOs: total %d read %+v write %+v; want 2048 mixed", r.Total.IOs, r.Read, r.Write)
			}
			if r.Verify == nil || r.Verify.ReadBack == 0 {
				t.Fatalf("nothing verified: %+v", r.Verify)
			}
			// The device is gone afterwards: bench detaches what it attached.
			testkit.Eventually(t, 30*time.Second, r.Device+" detached", func() bool { return !isConnected(t, r.Device) })
		})
	}
}

// TestBenchMissingImage: an image that does not exist is a clear error
// before any IO, on every target.
func TestBenchMissingImage(t *testing.T) {
	needCeph(t)
	for _, target := range []string{"raw", "export", "device"} {
		out, err := testkit.Run(t, time.Minute, testkit.Binary(t), "bench", "--target", target, "--backend", "rbd:rbd/"+testkit.UniqueName(t, "e2e-"),
			"--ceph-conf", os.Getenv("CEPH_CONF"), "--runtime", "1s")
		if err == nil || !strings.Contains(out, "not found") || !strings.Contains(out, "create it first") || strings.Contains(out, "IOPS") {
			t.Errorf("--target %s on a missing image: err %v, output:\n%s\nwant a not-found error naming the fix and no figures", target, err, out)
		}
	}
}
