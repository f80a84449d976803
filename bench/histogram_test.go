package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// exactQuantile is the nearest-rank quantile of sorted samples: the
// definition Histogram.Quantile approximates.
func exactQuantile(sorted []uint64, q float64) uint64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = max(rank, 1)
	return sorted[rank-1]
}

var quantiles = []float64{0.001, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1}

func TestHistogramQuantilesMatchSortedSamples(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	dists := map[string]func() uint64{
		// Small values take the exact buckets below 256 ns.
		"uniform small": func() uint64 { return rng.Uint64N(300) },
		"uniform":       func() uint64 { return 1000 + rng.Uint64N(10_000_000) },
		// IO latency looks like this: a hump with a long tail.
		"lognormal": func() uint64 { return uint64(math.Exp(11 + 1.2*rng.NormFloat64())) },
		"exponential": func() uint64 {
			return uint64(50_000 * rng.ExpFloat64())
		},
		"bimodal": func() uint64 {
			if rng.IntN(100) < 3 {
				return 5_000_000 + rng.Uint64N(1_000_000)
			}
			return 80_000 + rng.Uint64N(20_000)
		},
	}
	for name, gen := range dists {
		t.Run(name, func(t *testing.T) {
			for _, n := range []int{1, 7, 1000, 100_000} {
				var h Histogram
				samples := make([]uint64, n)
				var sum uint64
				for i := range samples {
					v := gen()
					samples[i] = v
					sum += v
					h.Record(time.Duration(v))
				}
				slices.Sort(samples)
				if h.Count() != uint64(n) {
					t.Fatalf("n=%d: Count = %d", n, h.Count())
				}
				if got := uint64(h.Min()); got != samples[0] {
					t.Errorf("n=%d: Min = %d, want %d", n, got, samples[0])
				}
				if got := uint64(h.Max()); got != samples[n-1] {
					t.Errorf("n=%d: Max = %d, want %d", n, got, samples[n-1])
				}
				if got, want := uint64(h.Mean()), sum/uint64(n); got != want {
					t.Errorf("n=%d: Mean = %d, want %d", n, got, want)
				}
				for _, q := range quantiles {
					exact := exactQuantile(samples, q)
					got := uint64(h.Quantile(q))
					// Never below the true sample, above it by at most
					// one bucket width (1/128 of the value).
					if got < exact || got > exact+exact/subBuckets {
						t.Errorf("n=%d q=%v: Quantile = %d, exact %d (allowed %d..%d)",
							n, q, got, exact, exact, exact+exact/subBuckets)
					}
				}
			}
		})
	}
}

func TestHistogramBucketsCoverEveryValue(t *testing.T) {
	// Walk the bucket edges: each bucket's range must start right after
	// the previous one ends, and values at both edges must map back to it.
	var prevHi uint64
	for i := 0; i < bucketCount; i++ {
		lo, hi := bucketRange(i)
		if i > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if lo > hi {
			t.Fatalf("bucket %d: lo %d > hi %d", i, lo, hi)
		}
		if i < bucketCount-1 { // the last bucket also takes everything above
			if got := bucketIndex(lo); got != i {
				t.Fatalf("bucketIndex(%d) = %d, want %d", lo, got, i)
			}
			if got := bucketIndex(hi); got != i {
				t.Fatalf("bucketIndex(%d) = %d, want %d", hi, got, i)
			}
			if width := hi - lo + 1; lo >= 2*subBuckets && width > lo/subBuckets {
				t.Fatalf("bucket %d [%d,%d] wider than 1/%d of its value", i, lo, hi, subBuckets)
			}
		}
		prevHi = hi
	}
	if got := bucketIndex(math.MaxUint64); got != bucketCount-1 {
		t.Fatalf("bucketIndex(max uint64) = %d, want last bucket %d", got, bucketCount-1)
	}
}

func TestHistogramHugeValuesKeepExactMax(t *testing.T) {
	var h Histogram
	h.Record(time.Microsecond)
	h.Record(10 * time.Minute) // beyond the tracked range
	if h.Max() != 10*time.Minute {
		t.Fatalf("Max = %v", h.Max())
	}
	if q := h.Quantile(1); q != 10*time.Minute {
		t.Fatalf("Quantile(1) = %v, want the exact max", q)
	}
	if q := h.Quantile(0.5); q < time.Microsecond || q > time.Microsecond+time.Microsecond/subBuckets {
		t.Fatalf("Quantile(0.5) = %v, want about 1µs", q)
	}
}

func TestHistogramMergeEqualsRecordingTogether(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var all, a, b Histogram
	for i := 0; i < 50_000; i++ {
		v := time.Duration(math.Exp(10 + rng.NormFloat64()))
		all.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	var merged Histogram
	merged.Merge(&a)
	merged.Merge(&b)
	merged.Merge(&Histogram{}) // an empty worker must not disturb min
	if merged != all {
		t.Fatalf("merged histogram differs: n %d/%d min %v/%v max %v/%v",
			merged.Count(), all.Count(), merged.Min(), all.Min(), merged.Max(), all.Max())
	}
}

func TestHistogramEmptyAndReset(t *testing.T) {
	var h Histogram
	if h.Quantile(0.99) != 0 || h.Mean() != 0 || h.Count() != 0 {
		t.Fatal("empty histogram must report zeroes")
	}
	h.Record(-5) // a clock step backwards counts as zero, not a huge value
	if h.Max() != 0 || h.Count() != 1 {
		t.Fatalf("negative duration: max %v count %d", h.Max(), h.Count())
	}
	h.Record(time.Second)
	h.Reset()
	if h.Count() != 0 || h.Max() != 0 {
		t.Fatal("Reset left samples")
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	h := new(Histogram)
	d := time.Duration(123456)
	if n := testing.AllocsPerRun(1000, func() { h.Record(d); d += 977 }); n != 0 {
		t.Fatalf("Record allocates %v times per call", n)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	h := new(Histogram)
	rng := rand.New(rand.NewPCG(5, 6))
	vals := make([]time.Duration, 4096)
	for i := range vals {
		vals[i] = time.Duration(math.Exp(11 + rng.NormFloat64()))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		h.Record(vals[i&4095])
	}
}

func BenchmarkHistogramQuantile(b *testing.B) {
	var h Histogram
	rng := rand.New(rand.NewPCG(7, 8))
	for i := 0; i < 100_000; i++ {
		h.Record(time.Duration(math.Exp(11 + rng.NormFloat64())))
	}
	b.ReportAllocs()
	for b.Loop() {
		h.Quantile(0.999)
	}
}
