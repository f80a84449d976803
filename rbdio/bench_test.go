package rbdio

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"
)

// BenchmarkIO compares the two ways to drive librbd from Go at queue
// depth 16 with 4 KiB random IO on a 256 MiB region: rbdio's Image
// (librbd's asynchronous API, goroutines park while a request is in
// flight) and a pool of 16 goroutines calling go-ceph's blocking
// ReadAt/WriteAt (rbd_read/rbd_write, one OS thread blocked in C per
// request). Needs the test cluster (CEPH_CONF). doc.go records results;
// bench/scripts/rbd.sh sets them beside fio's rbd engine.
//
//	go test -tags pacific -run '^$' -bench IO -benchtime 5s ./rbdio
func BenchmarkIO(b *testing.B) {
	const (
		region = 256 << 20
		bs     = 4096
		qd     = 16
	)
	c, name, im := filledImage(b, region)
	if err := im.Close(); err != nil {
		b.Fatal(err)
	}

	type ioFunc func(p []byte, off int64) (int, error)
	run := func(b *testing.B, do ioFunc) {
		b.ReportAllocs()
		b.SetBytes(bs)
		var next atomic.Int64
		var wg sync.WaitGroup
		var failed atomic.Pointer[error]
		b.ResetTimer()
		start := time.Now()
		for w := 0; w < qd; w++ {
			wg.Add(1)
			go func(seed uint64) {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, 7))
				p := pattern(bs, byte(seed))
				for next.Add(1) <= int64(b.N) {
					off := rng.Int64N(region/bs) * bs
					if _, err := do(p, off); err != nil {
						failed.CompareAndSwap(nil, &err)
						return
					}
				}
			}(uint64(w))
		}
		wg.Wait()
		b.StopTimer()
		if e := failed.Load(); e != nil {
			b.Fatal(*e)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "IOPS")
	}

	for _, rw := range []string{"randread", "randwrite"} {
		b.Run("aio/"+rw, func(b *testing.B) {
			im := openImage(b, c, name, OpenOptions{})
			do := ioFunc(im.ReadAt)
			if rw == "randwrite" {
				do = im.WriteAt
			}
			run(b, do)
			if err := im.Close(); err != nil {
				b.Fatal(err)
			}
		})
		b.Run("blocking/"+rw, func(b *testing.B) {
			img, err := rbd.OpenImage(c.ioctx, name, rbd.NoSnapshot)
			if err != nil {
				b.Fatal(err)
			}
			defer img.Close()
			do := ioFunc(img.ReadAt)
			if rw == "randwrite" {
				do = img.WriteAt
			}
			run(b, do)
		})
	}
}

// filledImage creates an image of size bytes and writes it in full, so
// reads hit real objects (not the object map's "no such object"
// shortcut); it returns the connection, the name and the open image.
func filledImage(b *testing.B, size int64) (*Conn, string, *Image) {
	b.Helper()
	c := testConn(b)
	name := createImage(b, c, size)
	im := openImage(b, c, name, OpenOptions{})
	fill := pattern(4<<20, 1)
	for off := int64(0); off < size; off += int64(len(fill)) {
		mustWrite(b, im, fill, off)
	}
	return c, name, im
}
