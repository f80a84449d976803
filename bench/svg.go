package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The chart: for each block size a block of four panels: IOPS and p99
// latency against queue depth (log2 axis), p99 latency against IOPS (the
// "hockey stick": where added depth stops buying IOPS and only buys
// latency) and CPU per IO against queue depth; one line per connection
// count, points in depth order. Latency goes on a log axis when it spans
// more than a factor of 20 (low depths would otherwise sit flat on zero).
// The p99 budget is a dashed line; the recommended point is ringed on
// every panel. Each marker carries a <title> with its exact figures (a
// tooltip in browsers).

const (
	panelW      = 420.0 // plot area
	panelH      = 220.0
	marginLeft  = 78.0
	marginRight = 24.0
	marginTop   = 34.0 // panel title
	marginBot   = 52.0 // tick labels and axis title
	headerH     = 92.0 // figure title, subtitle, legend
	footerH     = 42.0
)

// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
var lineColours = []string{"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"}

// WriteSVG draws the sweep.
func (rep *SweepReport) WriteSVG(w io.Writer) error {
	var sizes, conns, depths []int
	for _, r := range rep.Results {
		if !slices.Contains(sizes, r.BlockSize) {
			sizes = append(sizes, r.BlockSize)
		}
		if !slices.Contains(conns, r.Connections) {
			conns = append(conns, r.Connections)
		}
		if !slices.Contains(depths, r.IODepth) {
			depths = append(depths, r.IODepth)
		}
	}
	slices.Sort(conns)
	slices.Sort(depths)
	if len(sizes) == 0 {
		return fmt.Errorf("sweep has no results to chart")
	}
	cellW := marginLeft + panelW + marginRight
	cellH := marginTop + panelH + marginBot
	width := 2*cellW + 20
	height := headerH + float64(len(sizes))*2*cellH + footerH

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	title := fmt.Sprintf("%s via %s: %s", rep.Backend, rep.Target, rep.RW)
	fmt.Fprintf(&b, `<text x="20" y="30" font-size="19" font-weight="bold" fill="#222">%s</text>`+"\n", esc(title))
	sub := fmt.Sprintf("one line per connection count · p99 budget %s", compactLatency(float64(rep.P99BudgetNS)))
	if len(rep.Results) > 0 {
		r := rep.Results[0]
		sub += fmt.Sprintf(" · %s per point", time.Duration(r.RuntimeNS).Round(time.Millisecond))
	}
	fmt.Fprintf(&b, `<text x="20" y="52" font-size="13" fill="#555">%s</text>`+"\n", esc(sub))

	// Legend: one swatch per connection count, plus the markings.
	lx := 20.0
	for i, c := range conns {
		col := lineColours[i%len(lineColours)]
		label := fmt.Sprintf("%d connection", c)
		if c != 1 {
			label += "s"
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="74" x2="%.1f" y2="74" stroke="%s" stroke-width="2.5"/><circle cx="%.1f" cy="74" r="3.5" fill="%s" stroke="#fff" stroke-width="1"/>`,
			lx, lx+26, col, lx+13, col)
		fmt.Fprintf(&b, `<text x="%.1f" y="78" font-size="12.5" fill="#333">%s</text>`+"\n", lx+32, esc(label))
		lx += 32 + 7.2*float64(len(label)) + 22
	}
	fmt.Fprintf(&b, `<circle cx="%.1f" cy="74" r="7" fill="none" stroke="#222" stroke-width="1.6"/><text x="%.1f" y="78" font-size="12.5" fill="#333">recommended</text>`+"\n", lx+8, lx+22)
	lx += 22 + 7.2*11 + 22
	fmt.Fprintf(&b, `<line x1="%.1f" y1="74" x2="%.1f" y2="74" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/><text x="%.1f" y="78" font-size="12.5" fill="#333">p99 budget</text>`+"\n", lx, lx+26, lx+32)

	byDepth := depthAxis(depths)
	budget := float64(rep.P99BudgetNS)
	p99 := func(r *Result) float64 { return float64(r.Total.Latency.P99) }
	for row, bs := range sizes {
		var rs []*Result
		for _, r := range rep.Results {
			if r.BlockSize == bs {
				rs = append(rs, r)
			}
		}
		var rec *Recommendation
		for _, r := range rep.Recommendations {
			if r.BlockSize == bs {
				rec = r
			}
		}
		y0 := headerH + float64(row)*2*cellH + marginTop
		left, right := 10+marginLeft, 10+cellW+marginLeft
		bsLabel := FormatBytes(int64(bs))
		panel{x: left, y: y0, xa: byDepth}.draw(&b, rs, conns, rec, panelSpec{
			title: fmt.Sprintf("IOPS · bs %s", bsLabel), axis: "IOPS",
			value: func(r *Result) float64 { return r.Total.IOPS }, format: compactCount,
		})
		panel{x: right, y: y0, xa: byDepth}.draw(&b, rs, conns, rec, panelSpec{
			title: fmt.Sprintf("p99 latency · bs %s", bsLabel), axis: "p99 latency",
			value: p99, format: compactLatency, budget: budget, logOK: true,
		})
		panel{x: left, y: y0 + cellH, xa: iopsAxis(rs)}.draw(&b, rs, conns, rec, panelSpec{
			title: fmt.Sprintf("p99 latency against IOPS · bs %s", bsLabel), axis: "p99 latency",
			value: p99, format: compactLatency, budget: budget, logOK: true,
		})
		panel{x: right, y: y0 + cellH, xa: byDepth}.draw(&b, rs, conns, rec, panelSpec{
			title: fmt.Sprintf("CPU per IO · bs %s", bsLabel), axis: "CPU time per IO",
			value: func(r *Result) float64 { return r.CPU.PerIO }, format: compactLatency,
		})
	}
	fmt.Fprintf(&b, `<text x="20" y="%.0f" font-size="11" fill="#888">CPU per IO: user+system time of the bench process (all its threads: workers, %s, librbd) per IO; not the OSDs' or the kernel's NBD threads.</text>`+"\n",
		height-25, esc(servedBy(rep.Target)))
	fmt.Fprintf(&b, `<text x="20" y="%.0f" font-size="11" fill="#888">rbd-nbd-graph bench sweep · %s · percentiles from a log-linear histogram (within 0.8%%)</text>`+"\n",
		height-9, esc(rep.Started.Format(time.RFC3339)))
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// servedBy names what the bench process runs besides its workers.
func servedBy(target string) string {
	if target == "raw" {
		return "no NBD server"
	}
	return "the NBD server"
}

type panelSpec struct {
	title, axis string
	value       func(*Result) float64
	format      func(float64) string
	budget      float64 // >0: a dashed line at this value
	logOK       bool    // a log axis when the values span orders of magnitude
}

// xAxis is a panel's horizontal axis: what it plots and where.
type xAxis struct {
	label  string
	value  func(*Result) float64
	pos    func(v float64) float64 // 0 (left edge) to 1 (right edge)
	ticks  []float64
	format func(float64) string
}

// depthAxis puts queue depths on a log2 axis, with half a step of air at
// both ends.
func depthAxis(depths []int) xAxis {
	lo, hi := math.Log2(float64(depths[0])), math.Log2(float64(depths[len(depths)-1]))
	if hi == lo {
		lo, hi = lo-1, hi+1
	}
	pad := (hi - lo) * 0.06
	lo, hi = lo-pad, hi+pad
	ticks := make([]float64, len(depths))
	for i, d := range depths {
		ticks[i] = float64(d)
	}
	return xAxis{
		label:  "queue depth (IOs in flight, log scale)",
		value:  func(r *Result) float64 { return float64(r.IODepth) },
		pos:    func(v float64) float64 { return (math.Log2(v) - lo) / (hi - lo) },
		ticks:  ticks,
		format: func(v float64) string { return strconv.Itoa(int(v)) },
	}
}

// iopsAxis is linear from 0 to just above the best IOPS of rs.
func iopsAxis(rs []*Result) xAxis {
	maxV := 0.0
	for _, r := range rs {
		maxV = max(maxV, r.Total.IOPS)
	}
	ticks := niceTicks(maxV * 1.04)
	top := ticks[len(ticks)-1]
	return xAxis{
		label:  "IOPS",
		value:  func(r *Result) float64 { return r.Total.IOPS },
		pos:    func(v float64) float64 { return v / top },
		ticks:  ticks,
		format: compactCount,
	}
}

type panel struct {
	x, y float64 // top-left of the plot area
	xa   xAxis
}

func (p panel) xPos(r *Result) float64 { return p.x + p.xa.pos(p.xa.value(r))*panelW }

func (p panel) draw(b *strings.Builder, rs []*Result, conns []int, rec *Recommendation, s panelSpec) {
	maxV, minV := 0.0, math.Inf(1)
	for _, r := range rs {
		v := s.value(r)
		maxV = max(maxV, v)
		if v > 0 {
			minV = min(minV, v)
		}
	}
	// Show the budget line when it is on the scale of the data; a
	// budget far above every point would flatten the lines.
	showBudget := s.budget > 0 && s.budget <= 1.6*maxV
	if showBudget {
		maxV = max(maxV, s.budget)
		minV = min(minV, s.budget)
	}
	var ticks []float64
	var yPos func(float64) float64
	axis := s.axis
	if s.logOK && minV > 0 && maxV/minV > 20 {
		ticks = logTicks(minV*0.8, maxV)
		lo, hi := math.Log10(ticks[0]), math.Log10(ticks[len(ticks)-1])
		yPos = func(v float64) float64 {
			v = max(v, ticks[0])
			return p.y + panelH - (math.Log10(v)-lo)/(hi-lo)*panelH
		}
		axis += " (log scale)"
	} else {
		ticks = niceTicks(maxV * 1.04)
		top := ticks[len(ticks)-1]
		yPos = func(v float64) float64 { return p.y + panelH - v/top*panelH }
	}

	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="14" font-weight="bold" fill="#222">%s</text>`+"\n", p.x, p.y-12, esc(s.title))
	fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#fafafa" stroke="none"/>`+"\n", p.x, p.y, panelW, panelH)
	for _, t := range ticks {
		y := yPos(t)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e3e3e3" stroke-width="1"/>`, p.x, y, p.x+panelW, y)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="11.5" fill="#555" text-anchor="end">%s</text>`+"\n", p.x-8, y+4, esc(s.format(t)))
	}
	for _, t := range p.xa.ticks {
		x := p.x + p.xa.pos(t)*panelW
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#efefef" stroke-width="1"/>`, x, p.y, x, p.y+panelH)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="11.5" fill="#555" text-anchor="middle">%s</text>`+"\n", x, p.y+panelH+17, esc(p.xa.format(t)))
	}
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888" stroke-width="1"/>`, p.x, p.y+panelH, p.x+panelW, p.y+panelH)
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888" stroke-width="1"/>`+"\n", p.x, p.y, p.x, p.y+panelH)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="12" fill="#444" text-anchor="middle">%s</text>`+"\n", p.x+panelW/2, p.y+panelH+38, esc(p.xa.label))
	fmt.Fprintf(b, `<text transform="translate(%.1f %.1f) rotate(-90)" font-size="12" fill="#444" text-anchor="middle">%s</text>`+"\n", p.x-60, p.y+panelH/2, esc(axis))

	if showBudget {
		y := yPos(s.budget)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/>`, p.x, y, p.x+panelW, y)
		// Left end: lines rise with depth, so the left is usually clear.
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="11" fill="#c0392b">budget %s</text>`+"\n", p.x+6, y-5, esc(s.format(s.budget)))
	} else if s.budget > 0 {
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="11" fill="#c0392b" text-anchor="end">budget %s (above every point)</text>`+"\n", p.x+panelW-4, p.y+13, esc(s.format(s.budget)))
	}

	for i, c := range conns {
		col := lineColours[i%len(lineColours)]
		var line []*Result
		for _, r := range rs {
			if r.Connections == c {
				line = append(line, r)
			}
		}
		// Depth order on every panel: on the IOPS axis the line then
		// walks the way the load grows, and bends back where IOPS fall.
		slices.SortFunc(line, func(a, b *Result) int { return a.IODepth - b.IODepth })
		if len(line) == 0 {
			continue
		}
		var pts []string
		for _, r := range line {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", p.xPos(r), yPos(s.value(r))))
		}
		fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2.5" stroke-linejoin="round"/>`+"\n", strings.Join(pts, " "), col)
		for _, r := range line {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s" stroke="#fff" stroke-width="1.2"><title>%s</title></circle>`+"\n",
				p.xPos(r), yPos(s.value(r)), col, esc(pointTitle(r)))
		}
	}
	if rec != nil {
		for _, r := range rs {
			if r.IODepth == rec.IODepth && r.Connections == rec.Connections {
				fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="8.5" fill="none" stroke="#222" stroke-width="1.8"/>`+"\n", p.xPos(r), yPos(s.value(r)))
			}
		}
	}
}

func pointTitle(r *Result) string {
	return fmt.Sprintf("iodepth %d, %d connection(s), bs %s: %s IOPS, %.1f MiB/s, p50 %s, p99 %s, p99.9 %s, cpu %s/IO",
		r.IODepth, r.Connections, FormatBytes(int64(r.BlockSize)), FormatCount(r.Total.IOPS), r.Total.BytesPerSec/(1<<20),
		FormatLatency(r.Total.Latency.P50), FormatLatency(r.Total.Latency.P99), FormatLatency(r.Total.Latency.P999),
		FormatLatency(int64(r.CPU.PerIO)))
}

// niceTicks returns 0 and evenly spaced round values (steps of 1, 2, 2.5
// or 5 times a power of ten) up to the first at or above maxV, about 5.
func niceTicks(maxV float64) []float64 {
	if maxV <= 0 || math.IsNaN(maxV) || math.IsInf(maxV, 0) {
		return []float64{0, 1}
	}
	raw := maxV / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag * 10
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var t []float64
	for v := 0.0; ; v += step {
		t = append(t, v)
		if v >= maxV {
			break
		}
	}
	return t
}

// compactCount and compactLatency label axes: round tick values print
// without trailing zeros (80k, 1.25ms, 250µs).
func compactCount(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 4, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 4, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func compactLatency(ns float64) string {
	switch {
	case ns == 0:
		return "0"
	case ns >= 1e9:
		return strconv.FormatFloat(ns/1e9, 'g', 4, 64) + "s"
	case ns >= 1e6:
		return strconv.FormatFloat(ns/1e6, 'g', 4, 64) + "ms"
	case ns >= 1e3:
		return strconv.FormatFloat(ns/1e3, 'g', 4, 64) + "µs"
	}
	return strconv.FormatFloat(ns, 'g', 4, 64) + "ns"
}

// logTicks returns 1-2-5 steps from the largest at or below lo to the
// first at or above hi.
func logTicks(lo, hi float64) []float64 {
	var t []float64
	for d := math.Pow(10, math.Floor(math.Log10(lo))); ; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			v := m * d
			if v <= lo {
				t = append(t[:0], v)
				continue
			}
			t = append(t, v)
			if v >= hi {
				return t
			}
		}
	}
}

func esc(s string) string { return html.EscapeString(s) }
