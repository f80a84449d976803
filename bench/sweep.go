package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The graph driver's option names for the NBD knobs a sweep tunes
// (graph/nbdattach.Options; `--storage-opt KEY=VALUE`). cmd's tests check that
// the driver accepts them.
const (
	DriverOptConnections = "nbd.connections"
	DriverOptQueueDepth  = "nbd.queuedepth"
)

// SweepOptions describe a sweep: every block size × connection count ×
// queue depth, each run with Base.
type SweepOptions struct {
	Base        Options // the workload, runtime, ramp; IODepth is ignored
	IODepths    []int
	Connections []int
	BlockSizes  []int
	// QueueDepth per connection for the server/kernel; 0: each point's
	// iodepth divided over its connections (what the recommendation
	// then names).
	QueueDepth int
	P99Budget  time.Duration
	// OnPoint, if set, is called before each point runs (i from 0 of n)
	// and returns that run's Options.Progress (nil for none).
	OnPoint func(i, n int, p SweepPoint) func(Progress)
}

// SweepPoint is one run's settings.
type SweepPoint struct {
	BlockSize, IODepth, Connections, QueueDepth int
}

// SweepReport is the sweep's JSON (results.json) and the chart's data.
type SweepReport struct {
	Schema          string            `json:"schema"`
	Kind            string            `json:"kind"` // "sweep"
	Target          string            `json:"target"`
	Backend         string            `json:"backend"`
	RW              string            `json:"rw"`
	P99BudgetNS     int64             `json:"p99_budget_ns"`
	Started         time.Time         `json:"started"`
	Results         []*Result         `json:"results"`
	Recommendations []*Recommendation `json:"recommendations"` // one per block size
}

// Recommendation is the best point of one block size within the p99
// budget, as driver options.
type Recommendation struct {
	WithinBudget bool    `json:"within_budget"` // false: nothing met the budget; this is the lowest p99
	BlockSize    int     `json:"bs"`
	IODepth      int     `json:"iodepth"`
	Connections  int     `json:"connections"`
	QueueDepth   int     `json:"queue_depth"` // per connection
	IOPS         float64 `json:"iops"`
	P99NS        int64   `json:"p99_ns"`
	BestIOPS     float64 `json:"best_iops"` // the highest IOPS within budget (the choice may be a cheaper point within 3%)
	// DriverOptions are KEY=VALUE pairs for `--storage-opt` (empty for
	// the raw target, which has no NBD settings).
	DriverOptions []string `json:"driver_options"`
	Note          string   `json:"note"`
}

// pointQueueDepth is the per-connection depth a point runs with.
func (o *SweepOptions) pointQueueDepth(iodepth, conns int) int {
	if o.QueueDepth > 0 {
		return o.QueueDepth
	}
	return (iodepth + conns - 1) / conns
}

// Points lists the runs in order: block size, then connections, then
// depth. Depths below the connection count (idle connections) are left
// out.
func (o *SweepOptions) Points() []SweepPoint {
	var pts []SweepPoint
	for _, bs := range o.BlockSizes {
		for _, c := range o.Connections {
			for _, qd := range o.IODepths {
				if qd < c {
					continue
				}
				pts = append(pts, SweepPoint{BlockSize: bs, IODepth: qd, Connections: c, QueueDepth: o.pointQueueDepth(qd, c)})
			}
		}
	}
	return pts
}

// Check validates every point before any runs.
func (o *SweepOptions) Check(ctx context.Context, t Target) error {
	if len(o.IODepths) == 0 || len(o.Connections) == 0 || len(o.BlockSizes) == 0 {
		return &OptionError{Option: "iodepth", Value: "", Reason: "a sweep needs at least one iodepth, connection count and block size"}
	}
	if o.P99Budget <= 0 {
		return &OptionError{Option: "p99-budget", Value: o.P99Budget.String(), Reason: "must be positive, e.g. 5ms"}
	}
	pts := o.Points()
	if len(pts) == 0 {
		return &OptionError{Option: "iodepth", Value: fmt.Sprint(o.IODepths),
			Reason: "every depth is below every connection count; add depths at least as large"}
	}
	for _, p := range pts {
		opts := o.Base
		opts.IODepth, opts.BlockSize = p.IODepth, p.BlockSize
		if err := opts.Check(); err != nil {
			return err
		}
		if err := t.Check(ctx, Setup{Connections: p.Connections, QueueDepth: p.QueueDepth}); err != nil {
			return err
		}
	}
	return nil
}

// Sweep runs every point against t, opening a fresh session for each
// (so connection counts and queue depths take effect), and recommends.
func Sweep(ctx context.Context, t Target, o SweepOptions) (*SweepReport, error) {
	if err := o.Check(ctx, t); err != nil {
		return nil, err
	}
	rep := &SweepReport{Schema: Schema, Kind: "sweep", Target: t.Name(), RW: o.Base.Pattern.String(),
		P99BudgetNS: int64(o.P99Budget), Started: time.Now().UTC().Truncate(time.Second)}
	pts := o.Points()
	for i, p := range pts {
		opts := o.Base
		opts.IODepth, opts.BlockSize = p.IODepth, p.BlockSize
		if o.OnPoint != nil {
			opts.Progress = o.OnPoint(i, len(pts), p)
		}
		sess, err := t.Open(ctx, Setup{Connections: p.Connections, QueueDepth: p.QueueDepth})
		if err != nil {
			return rep, fmt.Errorf("point %d (bs %d, iodepth %d, %d connections): %w", i+1, p.BlockSize, p.IODepth, p.Connections, err)
		}
		res, err := Run(ctx, sess, opts)
		cerr := sess.Close()
		if err != nil {
			return rep, fmt.Errorf("point %d (bs %d, iodepth %d, %d connections): %w", i+1, p.BlockSize, p.IODepth, p.Connections, err)
		}
		if cerr != nil {
			return rep, fmt.Errorf("closing the %s session: %w", t.Name(), cerr)
		}
		rep.Backend = res.Backend
		rep.Results = append(rep.Results, res)
	}
	rep.Recommendations = Recommend(rep.Results, o.P99Budget, t.Name(), o.QueueDepth)
	return rep, nil
}

// nearBest: points within this share of the best IOPS count as equally
// good, and the cheapest of them (fewest connections, then lowest depth)
// is recommended: a few percent is within run-to-run noise, while each
// connection costs a socket and a serving goroutine per device.
const nearBest = 0.97

// Recommend picks, per block size, the point with the best IOPS whose
// p99 latency (all IOs) is within budget, preferring a cheaper point
// within 3% of it. When no point meets the budget it names the one with
// the lowest p99 and says so.
func Recommend(results []*Result, budget time.Duration, target string, fixedQD int) []*Recommendation {
	var sizes []int
	for _, r := range results {
		if !slices.Contains(sizes, r.BlockSize) {
			sizes = append(sizes, r.BlockSize)
		}
	}
	var out []*Recommendation
	for _, bs := range sizes {
		var in, all []*Result
		for _, r := range results {
			if r.BlockSize != bs {
				continue
			}
			all = append(all, r)
			if r.Total.Latency.P99 <= int64(budget) {
				in = append(in, r)
			}
		}
		rec := &Recommendation{BlockSize: bs, WithinBudget: len(in) > 0}
		var pick *Result
		if len(in) > 0 {
			best := in[0]
			for _, r := range in {
				if r.Total.IOPS > best.Total.IOPS {
					best = r
				}
			}
			rec.BestIOPS = best.Total.IOPS
			pick = best
			for _, r := range in {
				if r.Total.IOPS >= nearBest*best.Total.IOPS && cheaper(r, pick) {
					pick = r
				}
			}
		} else {
			pick = all[0]
			for _, r := range all {
				if r.Total.Latency.P99 < pick.Total.Latency.P99 {
					pick = r
				}
			}
		}
		rec.IODepth, rec.Connections = pick.IODepth, pick.Connections
		rec.QueueDepth = fixedQD
		if rec.QueueDepth == 0 {
			rec.QueueDepth = (pick.IODepth + pick.Connections - 1) / pick.Connections
		}
		rec.IOPS, rec.P99NS = pick.Total.IOPS, pick.Total.Latency.P99
		// Only the kernel's device is what the driver configures: an
		// export sweep runs our client over a socket, whose best depth
		// and connection count need not be the kernel's (its request
		// sizes, plugging and per-connection queues differ).
		if target == "device" {
			rec.DriverOptions = []string{
				fmt.Sprintf("%s=%d", DriverOptConnections, rec.Connections),
				fmt.Sprintf("%s=%d", DriverOptQueueDepth, rec.QueueDepth),
			}
		}
		switch {
		case !rec.WithinBudget:
			rec.Note = fmt.Sprintf("no setting kept p99 within %s; this one has the lowest p99", FormatLatency(int64(budget)))
		case pick.Total.IOPS < rec.BestIOPS:
			rec.Note = fmt.Sprintf("within %.0f%% of the best IOPS (%s) with fewer connections or a lower depth",
				(1-nearBest)*100, FormatCount(rec.BestIOPS))
		default:
			rec.Note = "the best IOPS within the p99 budget"
		}
		switch target {
		case "raw":
			rec.Note += "; the raw target has no NBD settings: this is the backend's own ceiling"
		case "device":
		default:
			rec.Note += "; driver options come only from a --target device sweep (the kernel's NBD device, which the driver configures)"
		}
		out = append(out, rec)
	}
	return out
}

func cheaper(a, b *Result) bool {
	if a.Connections != b.Connections {
		return a.Connections < b.Connections
	}
	return a.IODepth < b.IODepth
}

// WriteRecommendations prints the recommendations for a person.
func (rep *SweepReport) WriteRecommendations(w io.Writer) {
	for _, r := range rep.Recommendations {
		fmt.Fprintf(w, "recommendation for bs %s (p99 budget %s): iodepth %d over %d connection(s): %s IOPS, p99 %s\n",
			FormatBytes(int64(r.BlockSize)), FormatLatency(rep.P99BudgetNS), r.IODepth, r.Connections,
			FormatCount(r.IOPS), FormatLatency(r.P99NS))
		fmt.Fprintf(w, "  %s\n", r.Note)
		if len(r.DriverOptions) > 0 {
			fmt.Fprintf(w, "  driver options:")
			for _, kv := range r.DriverOptions {
				fmt.Fprintf(w, " --storage-opt %s", kv)
			}
			fmt.Fprintln(w)
		}
	}
}

// WriteSweepTable prints one line per point.
func (rep *SweepReport) WriteSweepTable(w io.Writer) {
	fmt.Fprintf(w, "%-6s %5s %7s %9s %9s %9s %9s %10s\n", "bs", "conns", "iodepth", "IOPS", "MiB/s", "p50", "p99", "cpu/IO")
	for _, r := range rep.Results {
		fmt.Fprintf(w, "%-6s %5d %7d %9s %9.1f %9s %9s %10s\n", FormatBytes(int64(r.BlockSize)), r.Connections, r.IODepth,
			FormatCount(r.Total.IOPS), r.Total.BytesPerSec/(1<<20), FormatLatency(r.Total.Latency.P50),
			FormatLatency(r.Total.Latency.P99), FormatLatency(int64(r.CPU.PerIO)))
	}
}

// Save writes the report as JSON and, when chart is set, its SVG chart
// into dir (created if missing), named after the target and pattern,
// and returns both paths.
func (rep *SweepReport) Save(dir string, chart bool) (jsonPath, svgPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	base := fmt.Sprintf("sweep-%s-%s", rep.Target, rep.RW)
	jsonPath = filepath.Join(dir, base+".json")
	svgPath = filepath.Join(dir, base+".svg")
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(jsonPath, append(js, '\n'), 0o644); err != nil {
		return "", "", err
	}
	if !chart {
		return jsonPath, "", nil
	}
	f, err := os.Create(svgPath)
	if err != nil {
		return "", "", err
	}
	if err = rep.WriteSVG(f); err == nil {
		err = f.Close()
	} else {
		f.Close()
	}
	if err != nil {
		return "", "", fmt.Errorf("writing %s: %w", svgPath, err)
	}
	return jsonPath, svgPath, nil
}
