package bench

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, in the manner of HdrHistogram: values below
// 256 ns get a bucket each; above that every power of two is split into
// 128 equal buckets, so a bucket is never wider than 1/128 of its lower
// bound and any percentile read from it is within 0.8% of the exact
// sample. Values up to maxTrackable land in their bucket; longer ones are
// counted in the last bucket (the exact maximum is kept separately).
const (
	subBucketBits = 7
	subBuckets    = 1 << subBucketBits // buckets per power of two
	// maxShift bounds the exponent: buckets reach 256<<maxShift ns, about
	// 68.7 s, far beyond any IO latency worth telling apart.
	maxShift    = 28
	bucketCount = (maxShift+1)<<subBucketBits + subBuckets
)

// Histogram records latencies in nanoseconds with bounded memory (about
// 30 KiB, fixed) and no allocation on Record. It is not safe for
// concurrent use: give each worker its own and Merge them afterwards.
type Histogram struct {
	counts [bucketCount]uint64
	n      uint64
	sum    uint64
	min    uint64
	max    uint64
}

// bucketIndex maps a value to its bucket. For v < 256 the bucket is v
// itself; otherwise the 8 most significant bits select the sub-bucket and
// the remaining bit count the power of two.
func bucketIndex(v uint64) int {
	shift := bits.Len64(v|0xff) - 8
	if shift > maxShift {
		return bucketCount - 1
	}
	return shift<<subBucketBits + int(v>>uint(shift))
}

// bucketRange returns the smallest and largest value that map to bucket i.
func bucketRange(i int) (lo, hi uint64) {
	if i < 2*subBuckets {
		return uint64(i), uint64(i)
	}
	shift := i>>subBucketBits - 1
	mantissa := uint64(i - shift<<subBucketBits)
	lo = mantissa << uint(shift)
	return lo, lo + 1<<uint(shift) - 1
}

// Record adds one latency. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[bucketIndex(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += v
}

// Merge adds every sample of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Reset forgets every sample.
func (h *Histogram) Reset() { *h = Histogram{} }

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Min and Max are exact.
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Max is the exact largest sample.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is exact (the sum is kept alongside the buckets).
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}

// Quantile returns the q-quantile (0 < q <= 1) by the nearest-rank rule:
// the smallest recorded value v such that at least q of the samples are
// <= v. The answer is the upper edge of the bucket holding that sample,
// clamped to the exact min and max, so it never understates the latency
// and overstates it by less than 1/128. It is 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketRange(i)
			if hi > h.max || i == bucketCount-1 {
				hi = h.max
			}
			if hi < h.min {
				hi = h.min
			}
			return time.Duration(hi)
		}
	}
	return time.Duration(h.max)
}
