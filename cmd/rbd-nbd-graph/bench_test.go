package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/bench"
)

func runBenchCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &environment{stdout: &out, stderr: &errb, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	code = run(context.Background(), env, append([]string{"bench"}, args...))
	return code, out.String(), errb.String()
}

func TestBenchRejectsBadInputBeforeIO(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.img")
	cases := []struct {
		args []string
		code int
		want string // in the message: the flag and the fix
	}{
		{[]string{"--iodepth", "0"}, 2, "--iodepth 0: must be at least 1"},
		{[]string{"--bs", "1000"}, 2, "--bs 1000: must be a positive multiple of 512"},
		{[]string{"--bs", "4x"}, 2, "--bs 4x"},
		{[]string{"--rw", "trim"}, 2, "--rw trim: unknown pattern"},
		{[]string{"--rwmix", "120", "--rw", "mixed"}, 2, "--rwmix 120"},
		{[]string{"--target", "nbd"}, 2, "--target nbd: unknown target"},
		{[]string{"--target", "raw", "--connections", "2"}, 2, "raw target calls the backend directly"},
		{[]string{"--iodepth", "1,2"}, 2, "a list is for 'bench sweep'"},
		{[]string{"--backend", "mem:1M", "--size", "2M"}, 2, "past the end of the target"},
		{[]string{"--runtime", "0"}, 2, "--total"},
		{[]string{"--backend", "file:" + missing}, 1, "create it first"},
		{[]string{"--backend", "mem:1M", "extra"}, 2, "unexpected arguments"},
		{[]string{"sweep", "--target", "raw,export"}, 2, "one target"},
		{[]string{"sweep", "--p99-budget", "0s"}, 2, "--p99-budget"},
	}
	for _, c := range cases {
		code, stdout, stderr := runBenchCLI(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("bench %v: exit %d, stderr %q; want exit %d and %q", c.args, code, stderr, c.code, c.want)
		}
		if stdout != "" {
			t.Errorf("bench %v printed figures despite the error: %q", c.args, stdout)
		}
	}
}

func TestBenchDeviceTargetWithoutKernelNBD(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Skip("this kernel has NBD; the VM cross-check measures the device target")
	}
	code, stdout, stderr := runBenchCLI(t, "--target", "device", "--backend", "mem:16M", "--runtime", "1s")
	if code != 1 || !strings.Contains(stderr, "no NBD support") || !strings.Contains(stderr, "CONFIG_BLK_DEV_NBD") || stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want a clear no-NBD error and no figures", code, stdout, stderr)
	}
}

func TestBenchJSONAcrossTargets(t *testing.T) {
	code, stdout, stderr := runBenchCLI(t, "--target", "raw,export", "--backend", "mem:64M",
		"--rw", "randwrite", "--bs", "8k", "--iodepth", "4", "--total", "4M", "--verify", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, stdout)
	}
	if rep.Schema != bench.Schema || len(rep.Results) != 2 {
		t.Fatalf("schema %q, %d results; want %q and 2", rep.Schema, len(rep.Results), bench.Schema)
	}
	for i, want := range []string{"raw", "export"} {
		r := rep.Results[i]
		if r.Target != want || r.Write == nil || r.Write.IOs != 4<<20/8192 || r.Read != nil || r.Verify == nil || r.Verify.ReadBack == 0 {
			t.Errorf("result %d: %+v", i, r)
		}
	}
}

func TestBenchTableComparesTargets(t *testing.T) {
	code, stdout, stderr := runBenchCLI(t, "--target", "raw,export", "--backend", "mem:64M", "--runtime", "200ms")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"via raw", "via export", "compared with raw:", "of the IOPS", "cpu:"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestBenchSweepWritesChartAndJSON(t *testing.T) {
	out := t.TempDir()
	code, stdout, stderr := runBenchCLI(t, "sweep", "--target", "export", "--backend", "mem:64M",
		"--iodepth", "1,4", "--connections", "1,2", "--runtime", "100ms", "--ramp", "0", "--out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	js, err := os.ReadFile(filepath.Join(out, "sweep-export-randread.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.SweepReport
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 3 || len(rep.Recommendations) != 1 || rep.Backend != "mem:64M" {
		t.Fatalf("sweep JSON: %d results, %d recommendations, backend %q", len(rep.Results), len(rep.Recommendations), rep.Backend)
	}
	svg, err := os.ReadFile(filepath.Join(out, "sweep-export-randread.svg"))
	if err != nil || !bytes.HasPrefix(svg, []byte("<svg")) {
		t.Fatalf("chart: %v", err)
	}
	if !strings.Contains(stdout, "recommendation for bs 4k") || !strings.Contains(stdout, "--target device") || !strings.Contains(stdout, "chart: ") {
		t.Fatalf("no recommendation printed:\n%s", stdout)
	}
}

// The recommendation is only useful if the driver accepts it.
func TestRecommendedDriverOptionsParse(t *testing.T) {
	kvs := []string{bench.DriverOptConnections + "=4", bench.DriverOptQueueDepth + "=8"}
	o, err := parseBackendOptions(kvs)
	if err != nil {
		t.Fatalf("the driver refuses the options bench recommends: %v", err)
	}
	if o.nbd.Connections != 4 || o.nbd.QueueDepth != 8 {
		t.Fatalf("the driver read %v as %+v", kvs, o.nbd)
	}
}
