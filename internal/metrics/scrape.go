package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape GETs /metrics from an endpoint as Listen takes it (unix:/PATH,
// /PATH or HOST:PORT), asking for the plain text format, and returns
// every sample by its series: `name{label="value",...}` with the labels
// sorted (histograms as their _bucket, _sum and _count series). It is
// what the tests and `rbd-nbd-graph` users' scripts would do with curl.
func Scrape(ctx context.Context, addr string) (map[string]float64, error) {
	tr := &http.Transport{}
	url := "http://" + addr + "/metrics"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok || strings.HasPrefix(addr, "/") {
		if !ok {
			path = addr
		}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		url = "http://unix/metrics"
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("metrics: parse %s: %w", url, err)
	}
	out := map[string]float64{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := labelPairs(m.GetLabel())
			switch {
			case m.Counter != nil:
				out[Series(name, labels...)] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[Series(name, labels...)] = m.GetGauge().GetValue()
			case m.Untyped != nil:
				out[Series(name, labels...)] = m.GetUntyped().GetValue()
			case m.Histogram != nil:
				h := m.GetHistogram()
				out[Series(name+"_count", labels...)] = float64(h.GetSampleCount())
				out[Series(name+"_sum", labels...)] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					le := fmt.Sprint(b.GetUpperBound())
					out[Series(name+"_bucket", append(labels, "le", le)...)] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	return out, nil
}

func labelPairs(ls []*dto.LabelPair) []string {
	var kv []string
	for _, l := range ls {
		kv = append(kv, l.GetName(), l.GetValue())
	}
	return kv
}

// Series names one series as Scrape keys it: name and label pairs
// (name, value, name, value, ...), sorted by label name.
func Series(name string, labelPairs ...string) string {
	type kv struct{ k, v string }
	var ls []kv
	for i := 0; i+1 < len(labelPairs); i += 2 {
		ls = append(ls, kv{labelPairs[i], labelPairs[i+1]})
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].k < ls[j].k })
	var b strings.Builder
	b.WriteString(name)
	if len(ls) > 0 {
		b.WriteByte('{')
		for i, l := range ls {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=%q", l.k, l.v)
		}
		b.WriteByte('}')
	}
	return b.String()
}
