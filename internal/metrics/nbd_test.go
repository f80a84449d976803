package metrics

import (
	"testing"
	"time"
)

// The observer's own cost per request (started and done), beside the
// cost of reading the clock the IO loop pays for it, so a change to
// either shows: both must be 0 allocs/op.
func BenchmarkDeviceRequest(b *testing.B) {
	d := New().Device("bench")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		d.RequestStarted(0)
		d.RequestDone(0, 4096, 0, 30*time.Microsecond)
	}
}

func BenchmarkClockAnchor(b *testing.B) {
	epoch := time.Now()
	var sum time.Duration
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sum += time.Since(epoch)
	}
	_ = sum
}
