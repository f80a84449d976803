package rbdstore

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// BenchmarkLayerCreateRemove is the cluster work of the driver's Create
// of a layer whose parent has no child yet (each step of a docker
// build): the parent's protected snapshot, the clone, and the layer's
// state record; then of removing both (the state record, the parent's
// snapshot, the images), as the background removal does; on a real
// cluster (CEPH_CONF). Each iteration gets a fresh parent
// (untimed), so the chain does not deepen with b.N; BENCH_SETTLE (a
// duration) waits that long after making it, so what the cluster still
// does for the untimed steps does not land in the timed ones. Reports
// each step's mean beside the whole.
//
// BENCH_SETTLE=100ms go test -tags pacific -run '^$' -bench LayerCreateRemove ./graph/rbdstore
func BenchmarkLayerCreateRemove(b *testing.B) {
	ctx, c := newBenchBase(b, "createbench", 30*time.Minute)
	base := c.images[0]
	if err := c.store.CreateSnapshot(ctx, base, "layer"); err != nil {
		b.Fatal(err)
	}
	var settle time.Duration
	if v := os.Getenv("BENCH_SETTLE"); v != "" {
		var err error
		if settle, err = time.ParseDuration(v); err != nil {
			b.Fatalf("BENCH_SETTLE=%s: %v", v, err)
		}
	}
	var snapshot, clone, record, remove time.Duration
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		parent := fmt.Sprintf("%sp%d", c.prefix, i)
		if err := c.store.CloneImage(ctx, base, "layer", parent); err != nil {
			b.Fatal(err)
		}
		c.images = append(c.images, parent)
		child := fmt.Sprintf("%sc%d", c.prefix, i)
		time.Sleep(settle)
		b.StartTimer()
		t0 := time.Now()
		if err := c.store.CreateSnapshot(ctx, parent, "layer"); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := c.store.CloneImage(ctx, parent, "layer", child); err != nil {
			b.Fatal(err)
		}
		c.images = append(c.images, child)
		t2 := time.Now()
		if err := c.store.SetMetadata(ctx, child, map[string]string{"rbd-nbd-graph.bench": `{"state":"ready"}`}); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		for _, img := range []string{child, parent} {
			if err := c.store.SetMetadata(ctx, img, map[string]string{"rbd-nbd-graph.bench": `{"state":"removing"}`}); err != nil {
				b.Fatal(err)
			}
			if err := c.store.RemoveSnapshot(ctx, img, "layer"); err != nil {
				b.Fatal(err)
			}
			if err := c.store.RemoveImage(ctx, img); err != nil {
				b.Fatal(err)
			}
		}
		c.images = c.images[:len(c.images)-2]
		snapshot += t1.Sub(t0)
		clone += t2.Sub(t1)
		record += t3.Sub(t2)
		remove += time.Since(t3)
	}
	n := float64(b.N) * float64(time.Millisecond)
	b.ReportMetric(float64(snapshot)/n, "ms-snapshot/op")
	b.ReportMetric(float64(clone)/n, "ms-clone/op")
	b.ReportMetric(float64(record)/n, "ms-record/op")
	b.ReportMetric(float64(remove)/n, "ms-remove/op")
}
