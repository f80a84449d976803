package bench

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

func point(bs, qd, conns int, iops float64, p99 time.Duration) *Result {
	return &Result{BlockSize: bs, IODepth: qd, Connections: conns,
		Total: Stats{IOPS: iops, Latency: Latency{P99: int64(p99)}}}
}

func TestRecommendBestWithinBudget(t *testing.T) {
	rs := []*Result{
		point(4096, 1, 1, 5000, 300*time.Microsecond),
		point(4096, 16, 1, 20000, 2*time.Millisecond),
		point(4096, 16, 2, 30000, 3*time.Millisecond),
		point(4096, 64, 2, 40000, 12*time.Millisecond), // best IOPS but over budget
		point(4096, 32, 4, 29500, 4*time.Millisecond),  // within 3% of 30000 but more connections
		point(65536, 4, 1, 3000, 20*time.Millisecond),  // another block size, all over budget
		point(65536, 8, 1, 3100, 30*time.Millisecond),
	}
	recs := Recommend(rs, 10*time.Millisecond, "device", 0)
	if len(recs) != 2 {
		t.Fatalf("%d recommendations, want one per block size", len(recs))
	}
	r := recs[0]
	if !r.WithinBudget || r.IODepth != 16 || r.Connections != 2 || r.QueueDepth != 8 {
		t.Fatalf("4k: got %+v, want iodepth 16 over 2 connections (queue depth 8)", r)
	}
	if !slices.Equal(r.DriverOptions, []string{"nbd.connections=2", "nbd.queuedepth=8"}) {
		t.Fatalf("driver options %v", r.DriverOptions)
	}
	r = recs[1]
	if r.WithinBudget || r.IODepth != 4 || !strings.Contains(r.Note, "lowest p99") {
		t.Fatalf("64k: got %+v, want the lowest-p99 point flagged as over budget", r)
	}
	// A cheaper point within 3% of the best wins, and says so.
	rs = []*Result{point(4096, 32, 4, 30000, time.Millisecond), point(4096, 16, 1, 29400, time.Millisecond)}
	r = Recommend(rs, 10*time.Millisecond, "device", 0)[0]
	if r.Connections != 1 || r.BestIOPS != 30000 || !strings.Contains(r.Note, "within 3%") {
		t.Fatalf("near-best: got %+v", r)
	}
	// An export sweep picks a point but names no driver options: the
	// driver configures the kernel's device, which only a device sweep
	// measures.
	if r := Recommend(rs, 10*time.Millisecond, "export", 0)[0]; len(r.DriverOptions) != 0 || r.Connections != 1 || !strings.Contains(r.Note, "--target device") {
		t.Fatalf("export: %+v", r)
	}
	// raw has no NBD settings.
	if r := Recommend(rs, 10*time.Millisecond, "raw", 0)[0]; len(r.DriverOptions) != 0 || !strings.Contains(r.Note, "raw") {
		t.Fatalf("raw: %+v", r)
	}
}

func TestSweepPointsAndChecks(t *testing.T) {
	o := SweepOptions{Base: Options{Workload: Workload{Pattern: RandRead}, Runtime: time.Second},
		IODepths: []int{1, 4, 16}, Connections: []int{1, 4}, BlockSizes: []int{4096}, P99Budget: time.Millisecond}
	var got []SweepPoint
	got = append(got, o.Points()...)
	want := []SweepPoint{{4096, 1, 1, 1}, {4096, 4, 1, 4}, {4096, 16, 1, 16}, {4096, 4, 4, 1}, {4096, 16, 4, 4}}
	if !slices.Equal(got, want) {
		t.Fatalf("points %v, want %v (iodepth below connections left out)", got, want)
	}
	raw := Raw{Backend: nbd.NewMemory(1 << 20)}
	if err := o.Check(context.Background(), raw); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("raw sweep over 4 connections: %v, want an option error", err)
	}
	o.Connections = []int{1}
	o.BlockSizes = []int{4096, 1000}
	var oe *OptionError
	if err := o.Check(context.Background(), raw); !errors.As(err, &oe) || oe.Option != "bs" {
		t.Fatalf("bad block size in the list: %v", err)
	}
}

func TestSweepExportWritesChart(t *testing.T) {
	mem := nbd.NewMemory(64 << 20)
	var started []SweepPoint
	rep, err := Sweep(context.Background(), Export{Backend: mem, Spec: "mem:64M"}, SweepOptions{
		Base:        Options{Workload: Workload{Pattern: RandRead, Seed: 1}, Runtime: 60 * time.Millisecond},
		IODepths:    []int{1, 4, 16},
		Connections: []int{1, 2},
		BlockSizes:  []int{4096, 65536},
		P99Budget:   50 * time.Millisecond,
		OnPoint:     func(i, n int, p SweepPoint) func(Progress) { started = append(started, p); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 10 || len(started) != 10 {
		t.Fatalf("%d results, %d points started; want 10", len(rep.Results), len(started))
	}
	for _, r := range rep.Results {
		if r.Total.IOs == 0 || r.Target != "export" {
			t.Fatalf("empty point: %+v", r)
		}
	}
	if len(rep.Recommendations) != 2 || !rep.Recommendations[0].WithinBudget {
		t.Fatalf("recommendations: %+v", rep.Recommendations)
	}
	var svg bytes.Buffer
	if err := rep.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("BENCH_CHART_DIR"); dir != "" { // to look at it
		os.WriteFile(filepath.Join(dir, "test-sweep.svg"), svg.Bytes(), 0o644)
	}
	// Well-formed XML, with a line per connection count in each of the
	// four panels and a marker per point in each of two panels.
	chart := svg.String()
	dec := xml.NewDecoder(&svg)
	counts := map[string]int{}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			counts[se.Name.Local]++
		}
	}
	if counts["polyline"] != 2*4*2 {
		t.Errorf("%d lines, want 16 (2 connection counts × 4 panels × 2 block sizes)", counts["polyline"])
	}
	if counts["title"] != 4*len(rep.Results) {
		t.Errorf("%d point markers with tooltips, want %d", counts["title"], 4*len(rep.Results))
	}
	for _, panel := range []string{"p99 latency against IOPS", "CPU per IO"} {
		if !strings.Contains(chart, panel) {
			t.Errorf("chart lacks the %q panel", panel)
		}
	}
	var table, recs bytes.Buffer
	rep.WriteSweepTable(&table)
	rep.WriteRecommendations(&recs)
	if strings.Count(table.String(), "\n") != 11 || !strings.Contains(recs.String(), "--target device") || strings.Contains(recs.String(), "--storage-opt") {
		t.Errorf("table:\n%s\nrecommendations:\n%s", table.String(), recs.String())
	}
}

func TestNiceTicks(t *testing.T) {
	for maxV, want := range map[float64][]float64{
		9.3:    {0, 2, 4, 6, 8, 10},
		23000:  {0, 5000, 10000, 15000, 20000, 25000},
		1.2e6:  {0, 250000, 500000, 750000, 1e6, 1.25e6},
		0:      {0, 1},
		100000: {0, 20000, 40000, 60000, 80000, 100000},
	} {
		if got := niceTicks(maxV); !slices.Equal(got, want) {
			t.Errorf("niceTicks(%v) = %v, want %v", maxV, got, want)
		}
	}
}

func TestLogTicks(t *testing.T) {
	for _, c := range []struct {
		lo, hi float64
		want   []float64
	}{
		{30e3, 6e6, []float64{20e3, 50e3, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7}},
		{1e3, 1e5, []float64{1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5}},
	} {
		if got := logTicks(c.lo, c.hi); !slices.Equal(got, c.want) {
			t.Errorf("logTicks(%v, %v) = %v, want %v", c.lo, c.hi, got, c.want)
		}
	}
}

func TestCompactLabels(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 80000: "80k", 1.25e6: "1.25M", 500: "500", 12500: "12.5k"} {
		if got := compactCount(in); got != want {
			t.Errorf("compactCount(%v) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[float64]string{0: "0", 250e3: "250µs", 1.25e6: "1.25ms", 5e7: "50ms", 2e9: "2s", 800: "800ns"} {
		if got := compactLatency(in); got != want {
			t.Errorf("compactLatency(%v) = %q, want %q", in, got, want)
		}
	}
}
