package bench

import (
	"fmt"
	"io"
)

// WriteComparison sets every target against the first: the cost of each
// layer added on top.
func WriteComparison(w io.Writer, rs []*Result) {
	base := rs[0]
	fmt.Fprintf(w, "compared with %s:\n", base.Target)
	for _, r := range rs[1:] {
		ratio := 0.0
		if base.Total.IOPS > 0 {
			ratio = r.Total.IOPS / base.Total.IOPS
		}
		fmt.Fprintf(w, "  %-7s %5.1f%% of the IOPS, p50 %+s, p99 %+s, cpu/IO %+s\n", r.Target, 100*ratio,
			signedLatency(r.Total.Latency.P50-base.Total.Latency.P50),
			signedLatency(r.Total.Latency.P99-base.Total.Latency.P99),
			signedLatency(int64(r.CPU.PerIO-base.CPU.PerIO)))
	}
}

func signedLatency(ns int64) string {
	if ns < 0 {
		return "-" + FormatLatency(-ns)
	}
	return "+" + FormatLatency(ns)
}
