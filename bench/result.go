package bench

import (
	"fmt"
	"io"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Schema names the JSON layout of Report and SweepReport (documented in
// README.md, "bench --json"). Bump it when a field changes meaning or
// goes away.
const Schema = "rbd-nbd-graph.bench/v1"

// Report is the --json output of `bench`: one Result per target run.
type Report struct {
	Schema  string    `json:"schema"`
	Results []*Result `json:"results"`
}

// Result is one run's figures.
type Result struct {
	Target      string `json:"target"`  // raw, export or device
	Backend     string `json:"backend"` // as given: mem:1G, file:PATH, rbd:POOL/IMAGE
	Device      string `json:"device,omitempty"`
	RW          string `json:"rw"`
	BlockSize   int    `json:"bs"`
	ReadPercent int    `json:"rwmixread,omitempty"` // mixed patterns only
	IODepth     int    `json:"iodepth"`
	Connections int    `json:"connections"`
	Offset      int64  `json:"offset"`
	Size        int64  `json:"size"`
	Seed        uint64 `json:"seed"`
	RampNS      int64  `json:"ramp_ns"`
	RuntimeNS   int64  `json:"runtime_ns"`        // planned (0: bytes-limited)
	TotalBytes  int64  `json:"io_size,omitempty"` // planned byte limit
	ElapsedNS   int64  `json:"elapsed_ns"`        // measured window
	Interrupted bool   `json:"interrupted,omitempty"`

	Read  *Stats `json:"read,omitempty"`  // present when the pattern reads
	Write *Stats `json:"write,omitempty"` // present when the pattern writes
	Total Stats  `json:"total"`

	CPU    CPU          `json:"cpu"`
	Verify *VerifyStats `json:"verify,omitempty"`
}

// Stats are the figures of one direction (or both, in Total).
type Stats struct {
	IOs         uint64  `json:"ios"`
	Bytes       uint64  `json:"bytes"`
	IOPS        float64 `json:"iops"`
	BytesPerSec float64 `json:"bw_bytes_per_sec"`
	Latency     Latency `json:"lat_ns"`
}

// Latency percentiles in nanoseconds, each at most 1/128 above the exact
// sample (see Histogram); min, max and mean are exact.
type Latency struct {
	Min  int64 `json:"min"`
	Mean int64 `json:"mean"`
	P50  int64 `json:"p50"`
	P90  int64 `json:"p90"`
	P99  int64 `json:"p99"`
	P999 int64 `json:"p99.9"`
	Max  int64 `json:"max"`
}

// CPU is the process's CPU time (getrusage RUSAGE_SELF) over the
// measured window: every thread of this process, so the bench workers,
// Go's runtime and GC, and for the export target the in-process NBD
// server, for rbd: backends librbd's threads. It does not include other
// processes (Ceph OSDs, an external NBD server) or kernel threads
// (the NBD driver's workers for the device target).
type CPU struct {
	UserNS int64   `json:"user_ns"`
	SysNS  int64   `json:"sys_ns"`
	PerIO  float64 `json:"per_io_ns"` // (user+sys) / IOs: the efficiency figure
	Cores  float64 `json:"cores"`     // (user+sys) / elapsed: CPUs kept busy
}

// VerifyStats says how much data was checked.
type VerifyStats struct {
	Checked      uint64 `json:"checked_reads"`    // reads compared during the run
	ReadBack     uint64 `json:"read_back_blocks"` // written blocks read back at the end
	PrefillBytes int64  `json:"prefill_bytes,omitempty"`
}

func newStats(h *Histogram, bs int, elapsed time.Duration) Stats {
	s := Stats{IOs: h.Count(), Bytes: h.Count() * uint64(bs)}
	if sec := elapsed.Seconds(); sec > 0 {
		s.IOPS = float64(s.IOs) / sec
		s.BytesPerSec = float64(s.Bytes) / sec
	}
	s.Latency = Latency{
		Min: int64(h.Min()), Mean: int64(h.Mean()),
		P50: int64(h.Quantile(0.50)), P90: int64(h.Quantile(0.90)),
		P99: int64(h.Quantile(0.99)), P999: int64(h.Quantile(0.999)),
		Max: int64(h.Max()),
	}
	return s
}

// rusage is the process CPU time so far.
func rusage() (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0 // cannot fail for RUSAGE_SELF on Linux
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// WriteTable prints r for a person: one line per direction, then CPU.
func (r *Result) WriteTable(w io.Writer) error {
	var b strings.Builder
	mix := ""
	if r.Read != nil && r.Write != nil {
		mix = fmt.Sprintf(" (%d%% reads)", r.ReadPercent)
	}
	fmt.Fprintf(&b, "%s %s via %s: %s%s bs=%s iodepth=%d connections=%d, %s measured",
		r.Backend, r.sizeNote(), r.Target, r.RW, mix, FormatBytes(int64(r.BlockSize)),
		r.IODepth, r.Connections, time.Duration(r.ElapsedNS).Round(time.Millisecond))
	if r.Device != "" {
		fmt.Fprintf(&b, " on %s", r.Device)
	}
	if r.Interrupted {
		b.WriteString(" (interrupted)")
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tIOPS\tMiB/s\tmean\tp50\tp90\tp99\tp99.9\tmax\t")
	row := func(name string, s *Stats) {
		l := s.Latency
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name, FormatCount(s.IOPS),
			s.BytesPerSec/(1<<20), FormatLatency(l.Mean), FormatLatency(l.P50), FormatLatency(l.P90),
			FormatLatency(l.P99), FormatLatency(l.P999), FormatLatency(l.Max))
	}
	if r.Read != nil {
		row("read", r.Read)
	}
	if r.Write != nil {
		row("write", r.Write)
	}
	if r.Read != nil && r.Write != nil {
		row("total", &r.Total)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(&b, "cpu: %s per IO (user %s, sys %s, %.2f cores busy; whole process: workers, Go runtime%s)\n",
		FormatLatency(int64(r.CPU.PerIO)), time.Duration(r.CPU.UserNS).Round(time.Millisecond),
		time.Duration(r.CPU.SysNS).Round(time.Millisecond), r.CPU.Cores, r.cpuNote())
	if v := r.Verify; v != nil {
		fmt.Fprintf(&b, "verify: ok, %d reads checked during the run, %d written blocks read back", v.Checked, v.ReadBack)
		if v.PrefillBytes > 0 {
			fmt.Fprintf(&b, ", region prefilled (%s)", FormatBytes(v.PrefillBytes))
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Result) sizeNote() string { return "[" + FormatBytes(r.Size) + "]" }

func (r *Result) cpuNote() string {
	var parts []string
	if r.Target == "export" {
		parts = append(parts, "NBD client and server")
	}
	if strings.HasPrefix(r.Backend, "rbd:") {
		parts = append(parts, "librbd")
	}
	if r.Target == "device" {
		parts = append(parts, "NBD server; not the kernel's NBD threads")
	}
	if len(parts) == 0 {
		return ""
	}
	return ", " + strings.Join(parts, ", ")
}

// FormatLatency prints nanoseconds with a unit a person reads at once.
func FormatLatency(ns int64) string {
	d := time.Duration(ns)
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", ns)
	case d < 100*time.Microsecond:
		return fmt.Sprintf("%.1fµs", float64(ns)/1e3)
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(ns)/1e3)
	case d < 100*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(ns)/1e6)
	case d < time.Second:
		return fmt.Sprintf("%.0fms", float64(ns)/1e6)
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// FormatCount prints a rate with k/M suffixes (3 significant digits).
func FormatCount(v float64) string {
	switch {
	case v >= 10e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 100e3:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 10e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.2fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// FormatBytes prints a size in binary units, exact when it can be.
func FormatBytes(n int64) string {
	units := []string{"", "k", "M", "G", "T", "P"}
	i := 0
	for i < len(units)-1 && n >= 1024 && n%1024 == 0 {
		n /= 1024
		i++
	}
	if n >= 1024 && i < len(units)-1 { // not a whole number of the next unit
		return fmt.Sprintf("%.1f%s", float64(n)/1024, units[i+1])
	}
	return fmt.Sprintf("%d%s", n, units[i])
}
