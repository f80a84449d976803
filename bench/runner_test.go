package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

func memSession(b nbd.Backend) *Session {
	return &Session{Target: "raw", Backend: "mem:test", Connections: 1, Backends: []nbd.Backend{b}}
}

func TestRunByteLimitCountsExactly(t *testing.T) {
	mem := nbd.NewMemory(64 << 20)
	res, err := Run(context.Background(), memSession(mem), Options{
		Workload: Workload{Pattern: RandRW, BlockSize: 4096, ReadPercent: 60, Seed: 1},
		IODepth:  8, TotalBytes: 40 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(40 << 20 / 4096); res.Total.IOs != want {
		t.Fatalf("counted %d IOs, want exactly %d", res.Total.IOs, want)
	}
	if res.Read == nil || res.Write == nil || res.Read.IOs+res.Write.IOs != res.Total.IOs {
		t.Fatalf("read+write do not add up to total: %+v %+v %+v", res.Read, res.Write, res.Total)
	}
	if share := float64(res.Read.IOs) / float64(res.Total.IOs); share < 0.55 || share > 0.65 {
		t.Errorf("read share %.2f, want about 0.60", share)
	}
	if res.Size != 64<<20 {
		t.Errorf("region %d, want the whole backend", res.Size)
	}
	l := res.Total.Latency
	if !(l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) || l.Max == 0 {
		t.Errorf("latency figures out of order: %+v", l)
	}
	if res.ElapsedNS <= 0 || res.Total.IOPS <= 0 || res.Total.BytesPerSec != res.Total.IOPS*4096 {
		t.Errorf("rates: elapsed %d iops %v bw %v", res.ElapsedNS, res.Total.IOPS, res.Total.BytesPerSec)
	}
	if res.CPU.UserNS+res.CPU.SysNS <= 0 || res.CPU.PerIO <= 0 {
		t.Errorf("cpu not measured: %+v", res.CPU)
	}
}

func TestRunRuntimeWithRampAndProgress(t *testing.T) {
	mem := nbd.NewMemory(16 << 20)
	var mu sync.Mutex
	var seen []Progress
	start := time.Now()
	res, err := Run(context.Background(), memSession(mem), Options{
		Workload: Workload{Pattern: RandRead, BlockSize: 4096, Seed: 1},
		IODepth:  4, Runtime: 300 * time.Millisecond, Ramp: 150 * time.Millisecond,
		ProgressInterval: 50 * time.Millisecond,
		Progress: func(p Progress) {
			mu.Lock()
			seen = append(seen, p)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if el := time.Duration(res.ElapsedNS); el < 300*time.Millisecond || el > 400*time.Millisecond {
		t.Errorf("measured window %v, want about 300ms", el)
	}
	if took < 450*time.Millisecond {
		t.Errorf("run took %v, less than ramp+runtime", took)
	}
	if res.Read.IOs == 0 || res.Write != nil {
		t.Errorf("randread: read %+v write %+v", res.Read, res.Write)
	}
	mu.Lock()
	defer mu.Unlock()
	var ramp, measure int
	for _, p := range seen {
		if p.Ramping {
			ramp++
		} else if p.IOPS > 0 {
			measure++
		}
	}
	if ramp == 0 || measure == 0 {
		t.Errorf("progress samples: %d during ramp, %d measuring with IOPS; want both", ramp, measure)
	}
}

func TestRunVerifyChecksWhatItWrote(t *testing.T) {
	for _, p := range []Pattern{RandWrite, RandRW, RandRead, Write} {
		t.Run(p.String(), func(t *testing.T) {
			mem := nbd.NewMemory(4 << 20)
			res, err := Run(context.Background(), memSession(mem), Options{
				Workload: Workload{Pattern: p, BlockSize: 8192, ReadPercent: 50, Seed: 3},
				IODepth:  4, TotalBytes: 8 << 20, Verify: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			v := res.Verify
			if v == nil {
				t.Fatal("no verify figures")
			}
			if p.Writes() && v.ReadBack == 0 {
				t.Error("nothing read back after writing")
			}
			if p.Reads() && v.Checked == 0 {
				t.Error("no read was checked during the run")
			}
			if !p.Writes() && v.PrefillBytes != 4<<20 {
				t.Errorf("read-only verify prefilled %d bytes, want the region", v.PrefillBytes)
			}
		})
	}
}

// corrupting flips one byte of every read at off, after passing writes
// through: a backend that loses data.
type corrupting struct {
	nbd.Backend
	off int64
}

func (c corrupting) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.Backend.ReadAt(p, off)
	if off <= c.off && c.off < off+int64(len(p)) {
		p[c.off-off+100] ^= 1
	}
	return n, err
}

// misdirecting writes every block one block further on.
type misdirecting struct{ nbd.Backend }

func (m misdirecting) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) < m.Size() {
		off += int64(len(p))
	}
	return m.Backend.WriteAt(p, off)
}

func TestRunVerifyDetectsBadData(t *testing.T) {
	// The region starts one block in, so the misdirected writes land
	// inside the backend and the region's first block is never written.
	opts := Options{Workload: Workload{Pattern: Write, BlockSize: 4096, Offset: 4096, Size: 64 * 4096},
		IODepth: 1, TotalBytes: 64 * 4096, Verify: true}
	_, err := Run(context.Background(), memSession(corrupting{nbd.NewMemory(1 << 20), 5 * 4096}), opts)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Off != 5*4096 || ve.Kind != "corrupt" {
		t.Fatalf("corrupted byte: got %v, want a corrupt-data VerifyError at offset %d", err, 5*4096)
	}
	_, err = Run(context.Background(), memSession(misdirecting{nbd.NewMemory(1 << 20)}), opts)
	if !errors.As(err, &ve) || (ve.Kind != "misdirected" && ve.Kind != "zeroes") {
		t.Fatalf("misdirected writes: got %v, want a VerifyError saying misdirected or zeroes", err)
	}
	// A block whose write went elsewhere and that holds another block's
	// data must be called misdirected, naming where its data belonged.
	v := newVerifier(opts.Workload, 77)
	p := make([]byte, 4096)
	fillPattern(p, 8192, v.nonce)
	if err := checkPattern(p, 12288, v.nonce); !errors.As(err, &ve) || ve.Kind != "misdirected" || ve.GotOff != 8192 {
		t.Fatalf("block holding offset 8192's data at 12288: %v", err)
	}
	fillPattern(p, 12288, 78) // an earlier run's nonce
	if err := checkPattern(p, 12288, v.nonce); !errors.As(err, &ve) || ve.Kind != "stale" {
		t.Fatalf("block from another run: %v", err)
	}
	if err := checkPattern(make([]byte, 4096), 12288, v.nonce); !errors.As(err, &ve) || ve.Kind != "zeroes" {
		t.Fatalf("zeroed block: %v", err)
	}
}

// slowReads copies the data at once, then waits before returning it, so
// writes of the same block complete while the read is in flight.
type slowReads struct{ nbd.Backend }

func (s slowReads) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.Backend.ReadAt(p, off)
	time.Sleep(5 * time.Millisecond)
	return n, err
}

func TestRunVerifyToleratesWritesDuringReads(t *testing.T) {
	// One block, read and written by 4 workers at once: a read that
	// began before the first write finished returns zeroes, which is
	// not an error.
	_, err := Run(context.Background(), memSession(slowReads{nbd.NewMemory(1 << 20)}), Options{
		Workload: Workload{Pattern: RandRW, BlockSize: 4096, ReadPercent: 50, Size: 4096, Seed: 4},
		IODepth:  4, TotalBytes: 200 * 4096, Verify: true,
	})
	if err != nil {
		t.Fatalf("verify failed on reads racing writes of the same block: %v", err)
	}
}

// failing returns EIO from the nth read on.
type failing struct {
	nbd.Backend
	reads atomic.Int64
	nth   int64
}

func (f *failing) ReadAt(p []byte, off int64) (int, error) {
	if f.reads.Add(1) >= f.nth {
		return 0, syscall.EIO
	}
	return f.Backend.ReadAt(p, off)
}

func TestRunStopsAtFirstIOError(t *testing.T) {
	f := &failing{Backend: nbd.NewMemory(1 << 20), nth: 50}
	_, err := Run(context.Background(), memSession(f), Options{
		Workload: Workload{Pattern: RandRead, BlockSize: 4096}, IODepth: 4, Runtime: 10 * time.Second})
	var ioe *IOError
	if !errors.As(err, &ioe) || !errors.Is(err, syscall.EIO) || ioe.Write {
		t.Fatalf("got %v, want an IOError wrapping EIO on a read", err)
	}
}

func TestRunInterruptedReturnsPartialFigures(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(150*time.Millisecond, cancel)
	res, err := Run(ctx, memSession(nbd.NewMemory(1<<20)), Options{
		Workload: Workload{Pattern: RandRead, BlockSize: 4096}, IODepth: 2, Runtime: time.Minute})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if res == nil || !res.Interrupted || res.Total.IOs == 0 {
		t.Fatalf("want partial, interrupted figures; got %+v", res)
	}
}

func TestRunRejectsBadOptionsBeforeIO(t *testing.T) {
	f := &failing{Backend: nbd.NewMemory(1 << 20), nth: 1}
	_, err := Run(context.Background(), memSession(f), Options{
		Workload: Workload{Pattern: RandRead, BlockSize: 4096}, IODepth: 0, Runtime: time.Second})
	if !errors.Is(err, ErrInvalidOption) || f.reads.Load() != 0 {
		t.Fatalf("iodepth 0: err %v after %d reads; want ErrInvalidOption and no IO", err, f.reads.Load())
	}
}

func TestResultJSONAndTable(t *testing.T) {
	res, err := Run(context.Background(), memSession(nbd.NewMemory(8<<20)), Options{
		Workload: Workload{Pattern: RandRW, BlockSize: 4096, ReadPercent: 70}, IODepth: 2, TotalBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	// The field names the README documents for --json.
	for _, k := range []string{"target", "backend", "rw", "bs", "rwmixread", "iodepth",
		"connections", "size", "seed", "elapsed_ns", "read", "write", "total", "cpu"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, raw)
		}
	}
	lat := m["total"].(map[string]any)["lat_ns"].(map[string]any)
	for _, k := range []string{"min", "mean", "p50", "p90", "p99", "p99.9", "max"} {
		if _, ok := lat[k]; !ok {
			t.Errorf("lat_ns lacks %q", k)
		}
	}
	var buf bytes.Buffer
	if err := res.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"randrw (70% reads)", "read", "write", "total", "p99.9", "cpu:", "per IO"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestFormatters(t *testing.T) {
	for in, want := range map[int64]string{512: "512", 4096: "4k", 1 << 30: "1G", 1536: "1.5k", 3 << 20: "3M"} {
		if got := FormatBytes(in); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[int64]string{850: "850ns", 12_340: "12.3µs", 456_000: "456µs", 2_500_000: "2.50ms", 1_500_000_000: "1.50s"} {
		if got := FormatLatency(in); got != want {
			t.Errorf("FormatLatency(%d) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[float64]string{950: "950", 22_512: "22.5k", 152_000: "152k", 1_234_000: "1.23M"} {
		if got := FormatCount(in); got != want {
			t.Errorf("FormatCount(%v) = %q, want %q", in, got, want)
		}
	}
}

// nop does no IO: what is left is bench's own cost per IO.
type nop struct{ size int64 }

func (n nop) ReadAt(p []byte, off int64) (int, error)  { return len(p), nil }
func (n nop) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (n nop) Flush() error                             { return nil }
func (n nop) Size() int64                              { return n.size }

// BenchmarkRunnerOverhead is the runner's cost per IO (generator, clock
// reads, histogram, phase checks) on a backend that does nothing: the
// floor under every figure bench reports. It must not allocate per IO.
func BenchmarkRunnerOverhead(b *testing.B) {
	for _, depth := range []int{1, 16} {
		b.Run(fmt.Sprintf("iodepth=%d", depth), func(b *testing.B) {
			sess := &Session{Target: "raw", Connections: 1, Backends: []nbd.Backend{nop{1 << 30}}}
			opts := Options{Workload: Workload{Pattern: RandRW, BlockSize: 4096, ReadPercent: 50},
				IODepth: depth, TotalBytes: int64(b.N) * 4096}
			b.ReportAllocs()
			b.ResetTimer()
			res, err := Run(context.Background(), sess, opts)
			if err != nil {
				b.Fatal(err)
			}
			if res.Total.IOs != uint64(b.N) {
				b.Fatalf("%d IOs counted, want %d", res.Total.IOs, b.N)
			}
		})
	}
}

// asyncMem is an nbd.AsyncBackend over nbd.Memory that completes every
// IO on another goroutine, as rbdio does, or with inline set on the
// calling goroutine before Start returns (as a refused request is). A
// read at failAt fails. The queue holds 64: runs use an IODepth below
// that, since the goroutine draining it also starts the next IOs.
type asyncMem struct {
	*nbd.Memory
	inline bool
	failAt int64
	starts atomic.Int64
	q      chan func()
}

func newAsyncMem(size int64) *asyncMem {
	a := &asyncMem{Memory: nbd.NewMemory(size), failAt: -1, q: make(chan func(), 64)}
	go func() {
		for f := range a.q {
			f()
		}
	}()
	return a
}

func (a *asyncMem) run(f func()) {
	a.starts.Add(1)
	if a.inline {
		f()
		return
	}
	a.q <- f
}

func (a *asyncMem) StartReadAt(p []byte, off int64, c nbd.Completer, tag uint64) {
	a.run(func() {
		n, err := a.ReadAt(p, off)
		if off == a.failAt {
			n, err = 0, errors.New("disk on fire")
		}
		c.Complete(tag, n, err)
		c.FlushCompletions()
	})
}

func (a *asyncMem) StartWriteAt(p []byte, off int64, c nbd.Completer, tag uint64) {
	a.run(func() { n, err := a.WriteAt(p, off); c.Complete(tag, n, err); c.FlushCompletions() })
}

func (a *asyncMem) StartFlush(c nbd.Completer, tag uint64) {
	a.run(func() { c.Complete(tag, 0, nil); c.FlushCompletions() })
}

// A backend with asynchronous IO is driven through it (raw on rbd:),
// with the same accounting: exact byte limits, verify, runtime stops,
// IO errors; also when it completes on the calling goroutine.
func TestRunAsyncBackend(t *testing.T) {
	for _, inline := range []bool{false, true} {
		a := newAsyncMem(4 << 20)
		a.inline = inline
		defer close(a.q)
		for _, p := range []Pattern{RandWrite, RandRW, RandRead} {
			before := a.starts.Load()
			res, err := Run(context.Background(), memSession(a), Options{
				Workload: Workload{Pattern: p, BlockSize: 4096, ReadPercent: 50, Seed: 5},
				IODepth:  8, TotalBytes: 4 << 20, Verify: true,
			})
			if err != nil {
				t.Fatalf("inline %v, %v: %v", inline, p, err)
			}
			if got := res.Total.IOs; got != 1024 {
				t.Errorf("inline %v, %v: %d IOs counted, want exactly 1024 (4 MiB of 4 KiB)", inline, p, got)
			}
			// Every IO of the run went through Start (verify's prefill
			// and read-back use ReadAt/WriteAt directly).
			if started := a.starts.Load() - before; started < 1024 {
				t.Errorf("inline %v, %v: %d IOs started asynchronously, want at least 1024", inline, p, started)
			}
			if p.Reads() && res.Verify.Checked == 0 {
				t.Errorf("inline %v, %v: no read checked", inline, p)
			}
		}
		// A runtime stop with IOs in flight returns (all of them
		// finished) with figures.
		res, err := Run(context.Background(), memSession(a), Options{
			Workload: Workload{Pattern: RandRead, BlockSize: 4096, Seed: 1}, IODepth: 16, Runtime: 200 * time.Millisecond,
		})
		if err != nil || res.Read == nil || res.Read.IOs == 0 {
			t.Fatalf("inline %v, runtime stop: %+v, %v", inline, res, err)
		}
		// The first failed IO ends the run with an IOError naming it.
		a.failAt = 4096
		_, err = Run(context.Background(), memSession(a), Options{
			Workload: Workload{Pattern: Read, BlockSize: 4096}, IODepth: 4, TotalBytes: 1 << 20,
		})
		var ioe *IOError
		if !errors.As(err, &ioe) || ioe.Off != 4096 || ioe.Write {
			t.Fatalf("inline %v, failing read: %v, want an IOError for the read at 4096", inline, err)
		}
		a.failAt = -1
	}
}
