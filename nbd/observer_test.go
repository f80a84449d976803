package nbd

import (
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/metrics"
)

// countingObserver records what the loop tells an Observer.
type countingObserver struct {
	mu      sync.Mutex
	started map[uint16]int
	done    map[uint16]int
	bytes   map[uint16]int64
	errnos  map[uint32]int
	open    int
	maxOpen int
}

func newCountingObserver() *countingObserver {
	return &countingObserver{started: map[uint16]int{}, done: map[uint16]int{}, bytes: map[uint16]int64{}, errnos: map[uint32]int{}}
}

func (o *countingObserver) RequestStarted(cmd uint16) {
	o.mu.Lock()
	o.started[cmd]++
	o.open++
	o.maxOpen = max(o.maxOpen, o.open)
	o.mu.Unlock()
}

func (o *countingObserver) RequestDone(cmd uint16, length, errno uint32, took time.Duration) {
	o.mu.Lock()
	o.done[cmd]++
	o.open--
	if errno == 0 {
		o.bytes[cmd] += int64(length)
	} else {
		o.errnos[errno]++
	}
	o.mu.Unlock()
}

// Every request is started and done once, errors included (a refused
// out-of-range read, a backend failure), on the inline and worker paths.
func TestObserverSeesEveryRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    func() Backend
	}{
		{"inline", func() Backend { return failingRead{NewMemory(1 << 20), true} }},
		{"workers", func() Backend { return failingRead{NewMemory(1 << 20), false} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := newCountingObserver()
			sock := startServer(t, Export{Name: "x", Backend: tc.b(), Options: TransmissionOptions{Observer: obs}})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := Dial(ctx, "unix", sock, "x")
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 8192)
			for i := 0; i < 3; i++ {
				if _, err := c.WriteAt(buf, int64(i)*8192); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := c.ReadAt(buf[:4096], 0); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := c.Discard(0, 4096); err != nil {
				t.Fatal(err)
			}
			if _, err := c.ReadAt(buf[:512], failAt); !errors.Is(err, syscall.EIO) {
				t.Fatalf("read at %d: %v, want EIO", failAt, err)
			}
			c.Close()
			// The server's reply is queued before the client sees it.
			obs.mu.Lock()
			defer obs.mu.Unlock()
			want := map[uint16]int{CmdWrite: 3, CmdRead: 2, CmdFlush: 1, CmdTrim: 1}
			for cmd, n := range want {
				if obs.started[cmd] != n || obs.done[cmd] != n {
					t.Errorf("%s: started %d, done %d, want %d", CommandName(cmd), obs.started[cmd], obs.done[cmd], n)
				}
			}
			if obs.bytes[CmdWrite] != 3*8192 || obs.bytes[CmdRead] != 4096 || obs.bytes[CmdTrim] != 4096 {
				t.Errorf("bytes %v", obs.bytes)
			}
			if obs.errnos[EIO] != 1 || len(obs.errnos) != 1 {
				t.Errorf("errnos %v, want one EIO", obs.errnos)
			}
			if obs.open != 0 {
				t.Errorf("%d requests still open after the connection closed", obs.open)
			}
		})
	}
}

// failingRead fails reads at failAt with EIO.
type failingRead struct {
	Backend
	nonBlocking bool
}

const failAt = 512 << 10

func (f failingRead) NonBlocking() bool { return f.nonBlocking }
func (f failingRead) ReadAt(p []byte, off int64) (int, error) {
	if off == failAt {
		return 0, syscall.EIO
	}
	return f.Backend.ReadAt(p, off)
}
func (f failingRead) Discard(off, n int64) error { return f.Backend.(Discarder).Discard(off, n) }

// The metrics package keeps its own table of operation names (it does
// not import nbd): it must name every command as CommandName does.
func TestMetricsOperationNames(t *testing.T) {
	reg := metrics.New()
	d := reg.Device("names")
	for cmd := uint16(0); cmd <= CmdBlockStatus; cmd++ {
		d.RequestStarted(cmd)
		d.RequestDone(cmd, 1, 0, time.Millisecond)
	}
	mfs, err := reg.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "rbd_nbd_graph_nbd_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" {
					seen[l.GetValue()] = true
				}
			}
		}
	}
	for cmd := uint16(0); cmd <= CmdBlockStatus; cmd++ {
		if name := strings.ToLower(CommandName(cmd)); !seen[name] {
			t.Errorf("command %d (%s): no op=%q series; metrics saw %v", cmd, CommandName(cmd), name, seen)
		}
	}
}

const (
	blockingOff = false
	blockingOn  = true
)

// BenchmarkObserverPaired4K alternates rounds of requests on two loops,
// metrics off and on, so that the load of a shared machine falls on
// both alike; it reports each side's ns per request and their ratio.
// Both sides must stay at 0 allocs/op (b.ReportAllocs covers both).
func BenchmarkObserverPaired4K(b *testing.B) {
	for _, tc := range []struct {
		name    string
		cmd     uint16
		workers bool
	}{{"read", CmdRead, blockingOff}, {"write", CmdWrite, blockingOff}, {"workers-read", CmdRead, blockingOn}} {
		b.Run(tc.name, func(b *testing.B) {
			off := startPaired(b, nil, tc.cmd, tc.workers)
			on := startPaired(b, metrics.New().Device("bench"), tc.cmd, tc.workers)
			const round = 2000
			b.ReportAllocs()
			b.SetBytes(4096)
			b.ResetTimer()
			var tOff, tOn time.Duration
			for done := 0; done < b.N; done += round {
				n := min(round, b.N-done)
				t0 := time.Now()
				off.run(b, n)
				t1 := time.Now()
				on.run(b, n)
				tOff += t1.Sub(t0)
				tOn += time.Since(t1)
			}
			b.StopTimer()
			b.ReportMetric(float64(tOff.Nanoseconds())/float64(b.N), "off-ns/req")
			b.ReportMetric(float64(tOn.Nanoseconds())/float64(b.N), "on-ns/req")
			b.ReportMetric(float64(tOn)/float64(tOff), "on/off")
		})
	}
}

// startPaired serves a 64 MiB memory backend with obs on a socket pair
// until the benchmark ends and returns its warmed-up pipelined client.
func startPaired(b *testing.B, obs Observer, cmd uint16, workers bool) *pipeliner {
	const depth = 16
	var m Backend = NewMemory(64 << 20)
	m.(ZeroWriter).WriteZeroes(0, m.Size(), false)
	if workers {
		m = blocking{m.(*Memory)}
	}
	cli, srv := socketPair(b)
	log, _ := testLogger(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	opts := TransmissionOptions{QueueDepth: depth, Logger: log}
	if obs != nil {
		opts.Observer = obs
	}
	go func() { done <- ServeTransmission(ctx, srv, m, opts) }()
	b.Cleanup(func() {
		var disc [RequestSize]byte
		(&Request{Type: CmdDisc}).Encode(disc[:])
		cli.Write(disc[:])
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			b.Error("ServeTransmission did not end after DISC")
		}
		cancel()
		cli.Close()
	})
	p := newPipeliner(cli, cmd, 4096, depth, m.Size())
	p.run(b, 4*depth)
	return p
}

// A request the timer answers with EIO is done once, with that EIO; the
// backend's late result for it is not counted again (worker and async
// paths), and its time covers the wait.
func TestObserverCountsTimedOutRequestOnce(t *testing.T) {
	for _, mode := range []string{"worker", "async"} {
		t.Run(mode, func(t *testing.T) {
			g := newGateBackend(1 << 20)
			defer g.open()
			b := servedOn(t, mode, g)
			obs := newCountingObserver()
			c, done := serving(t, b, TransmissionOptions{RequestTimeout: 100 * time.Millisecond, Observer: obs})
			rc := rawConn{t, c}
			rc.send(Request{Type: CmdRead, Cookie: 1, Offset: 0, Length: 512}, nil)
			<-g.entered
			if r, _ := rc.reply(map[uint64]int{1: 512}); r.Errno != EIO {
				t.Fatalf("reply %+v, want EIO", r)
			}
			g.open()
			if errno, _ := rc.roundTrip(Request{Type: CmdRead, Cookie: 2, Offset: 4096, Length: 512}, nil); errno != 0 {
				t.Fatalf("read after the timeout: errno %d", errno)
			}
			rc.send(Request{Type: CmdDisc}, nil)
			rc.expectClosed()
			if err := waitErr(t, done); err != nil {
				t.Fatal(err)
			}
			obs.mu.Lock()
			defer obs.mu.Unlock()
			if obs.started[CmdRead] != 2 || obs.done[CmdRead] != 2 || obs.errnos[EIO] != 1 || obs.bytes[CmdRead] != 512 || obs.open != 0 {
				t.Errorf("started %v done %v errnos %v bytes %v open %d; want 2 reads started and done, one EIO, 512 bytes, 0 open",
					obs.started, obs.done, obs.errnos, obs.bytes, obs.open)
			}
		})
	}
}
