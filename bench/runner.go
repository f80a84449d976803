package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// IOError is an IO the target failed; the run stops at the first one, as
// fio does by default.
type IOError struct {
	Write bool
	Off   int64
	Len   int
	Err   error
}

func (e *IOError) Error() string {
	op := "read"
	if e.Write {
		op = "write"
	}
	return fmt.Sprintf("%s of %d bytes at offset %d: %v", op, e.Len, e.Off, e.Err)
}

func (e *IOError) Unwrap() error { return e.Err }

const (
	phaseRamp int32 = iota
	phaseMeasure
	phaseStop
)

// worker is one IO in flight: a goroutine issuing one IO at a time. Each
// is allocated on its own (the histograms make it ~60 KiB), so the
// counters of different workers do not share cache lines.
type worker struct {
	read, write Histogram
	completed   atomic.Uint64 // every completed IO, for the live line
	buf         []byte
}

// run is the state the workers share. The hot path touches only phase
// (read) and, with a byte limit, done.
type run struct {
	opts   *Options
	phase  atomic.Int32
	done   atomic.Int64 // measured bytes, only kept with a byte limit
	ver    *verifier
	cursor Cursor

	stopOnce  sync.Once
	stopped   chan struct{}
	start     time.Time
	startUser time.Duration
	startSys  time.Duration
	end       time.Time
	endUser   time.Duration
	endSys    time.Duration
	errOnce   sync.Once
	firstErr  error
}

// Run drives the session's backends with opts and returns the measured
// figures. Workers are assigned to backends round-robin (one backend per
// connection). Cancelling ctx ends the run early: the figures so far come
// back marked Interrupted, with ctx's error.
func Run(ctx context.Context, sess *Session, opts Options) (*Result, error) {
	if len(sess.Backends) == 0 {
		return nil, errors.New("bench: session has no backends")
	}
	size := sess.Backends[0].Size()
	if opts.Size == 0 {
		opts.Size = size - opts.Offset
	}
	if err := opts.Validate(size); err != nil {
		return nil, err
	}
	r := &run{opts: &opts, stopped: make(chan struct{})}
	workers := make([]*worker, opts.IODepth)
	for i := range workers {
		workers[i] = &worker{buf: alignedBuffer(opts.BlockSize)}
	}
	res := &Result{
		Target: sess.Target, Backend: sess.Backend, Device: sess.Device,
		RW: opts.Pattern.String(), BlockSize: opts.BlockSize, IODepth: opts.IODepth,
		Connections: sess.Connections, Offset: opts.Offset, Size: opts.Size, Seed: opts.Seed,
		RampNS: int64(opts.Ramp), RuntimeNS: int64(opts.Runtime), TotalBytes: opts.TotalBytes,
	}
	if opts.Pattern.Mixed() {
		res.ReadPercent = opts.ReadPercent
	}
	if opts.Verify {
		r.ver = newVerifier(opts.Workload, uint64(time.Now().UnixNano()))
		res.Verify = &VerifyStats{}
		if !opts.Pattern.Writes() {
			n, err := prefill(ctx, sess.Backends, &opts, r.ver)
			if err != nil {
				return nil, fmt.Errorf("verify: filling the region with the pattern: %w", err)
			}
			res.Verify.PrefillBytes = n
		}
	}

	if opts.Ramp > 0 {
		r.phase.Store(phaseRamp)
	} else {
		r.beginMeasure()
	}
	var wg sync.WaitGroup
	if ab, ok := sess.Backends[0].(nbd.AsyncBackend); ok && len(sess.Backends) == 1 {
		// One goroutine keeps IODepth requests in flight through the
		// backend's own asynchronous IO, as fio's rbd engine does with
		// rbd_aio_*: a goroutine parked per IO would add a wake-up per
		// IO that the ceiling being measured does not pay.
		streams := make([]*Stream, len(workers))
		for i := range streams {
			streams[i] = opts.NewStream(i, &r.cursor)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.workAsync(workers, streams, ab)
		}()
	} else {
		for i, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.work(w, sess.Backends[i%len(sess.Backends)], opts.NewStream(i, &r.cursor))
			}()
		}
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	progressDone := r.startProgress(workers)

	interrupted := false
	if opts.Ramp > 0 {
		t := time.NewTimer(opts.Ramp)
		select {
		case <-t.C:
			r.beginMeasure()
		case <-r.stopped:
		case <-ctx.Done():
			interrupted = true
			r.stop()
		}
		t.Stop()
	}
	var timeout <-chan time.Time
	if opts.Runtime > 0 {
		t := time.NewTimer(opts.Runtime)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-timeout:
	case <-r.stopped: // byte limit reached or an IO failed
	case <-allDone:
	case <-ctx.Done():
		interrupted = true
	}
	r.stop()
	<-allDone
	close(progressDone)
	if r.firstErr != nil {
		return nil, r.firstErr
	}

	var rd, wr, all Histogram
	for _, w := range workers {
		rd.Merge(&w.read)
		wr.Merge(&w.write)
	}
	all.Merge(&rd)
	all.Merge(&wr)
	elapsed := r.end.Sub(r.start)
	if r.start.IsZero() { // interrupted during the ramp
		elapsed = 0
	}
	res.ElapsedNS = int64(elapsed)
	res.Interrupted = interrupted
	if opts.Pattern.Reads() {
		s := newStats(&rd, opts.BlockSize, elapsed)
		res.Read = &s
	}
	if opts.Pattern.Writes() {
		s := newStats(&wr, opts.BlockSize, elapsed)
		res.Write = &s
	}
	res.Total = newStats(&all, opts.BlockSize, elapsed)
	if !r.start.IsZero() {
		user, sys := r.endUser-r.startUser, r.endSys-r.startSys
		res.CPU = CPU{UserNS: int64(user), SysNS: int64(sys)}
		if all.Count() > 0 {
			res.CPU.PerIO = float64(user+sys) / float64(all.Count())
		}
		if elapsed > 0 {
			res.CPU.Cores = float64(user+sys) / float64(elapsed)
		}
	}
	if interrupted {
		return res, ctx.Err()
	}
	if r.ver != nil {
		n, err := readBack(ctx, sess.Backends, &opts, r.ver)
		res.Verify.ReadBack = n
		res.Verify.Checked = r.ver.checked.Load()
		if err != nil {
			return nil, err
		}
	}
	return res, nil
}

func (r *run) beginMeasure() {
	r.startUser, r.startSys = rusage()
	r.start = time.Now()
	r.phase.Store(phaseMeasure)
}

// stop ends the measured window (once): later completions do not count.
func (r *run) stop() {
	r.stopOnce.Do(func() {
		r.end = time.Now()
		r.endUser, r.endSys = rusage()
		r.phase.Store(phaseStop)
		close(r.stopped)
	})
}

func (r *run) fail(err error) {
	r.errOnce.Do(func() { r.firstErr = err })
	r.stop()
}

// work issues one IO at a time until the run stops. An IO counts if it
// completes in the measured window (fio's rule), so IOs begun during the
// ramp and finished after it count and the window has no gap.
func (r *run) work(w *worker, b nbd.Backend, s *Stream) {
	for r.phase.Load() != phaseStop {
		op := s.Next()
		check := r.prepare(w, op)
		t0 := time.Now()
		var n int
		var err error
		if op.Write {
			n, err = b.WriteAt(w.buf, op.Off)
		} else {
			n, err = b.ReadAt(w.buf, op.Off)
		}
		if !r.complete(w, op, check, n, err, time.Since(t0)) {
			return
		}
	}
}

// prepare readies w's buffer for op and says whether a read is to be
// checked. A read is checked only if the block was written before the
// read was issued: a write completing while the read is in flight may or
// may not be seen. (Every write of a block in a run writes the same
// bytes, so a block once written always reads as the pattern.)
func (r *run) prepare(w *worker, op Op) (check bool) {
	if r.ver == nil {
		return false
	}
	if op.Write {
		fillPattern(w.buf, op.Off, r.ver.nonce)
		return false
	}
	return r.ver.isWritten(op.Off)
}

// complete accounts for an IO that finished after lat; false means the
// worker stops issuing (an IO failed, or the byte limit is reached).
func (r *run) complete(w *worker, op Op, check bool, n int, err error, lat time.Duration) bool {
	if err == nil && n != len(w.buf) {
		err = fmt.Errorf("short transfer: %d of %d bytes", n, len(w.buf))
	}
	if err != nil {
		r.fail(&IOError{Write: op.Write, Off: op.Off, Len: len(w.buf), Err: err})
		return false
	}
	w.completed.Add(1)
	if r.ver != nil {
		if op.Write {
			r.ver.markWritten(op.Off)
		} else if check {
			if err := checkPattern(w.buf, op.Off, r.ver.nonce); err != nil {
				r.fail(err)
				return false
			}
			r.ver.checked.Add(1)
		}
	}
	if r.phase.Load() != phaseMeasure {
		return true
	}
	if r.opts.TotalBytes > 0 {
		// Count exactly the limit (rounded up to whole blocks), however
		// many IOs complete at once.
		bs := int64(r.opts.BlockSize)
		limit := (r.opts.TotalBytes + bs - 1) / bs * bs
		done := r.done.Add(bs)
		if done > limit {
			r.stop()
			return false
		}
		r.record(w, op.Write, lat)
		if done >= limit {
			r.stop()
			return false
		}
		return true
	}
	r.record(w, op.Write, lat)
	return true
}

// asyncSlot is one IO in flight of workAsync: what complete needs when
// the IO finishes (worker i has its buffer and histograms).
type asyncSlot struct {
	op    Op
	check bool
	t0    time.Time
}

// asyncDone is one completion reported by the backend.
type asyncDone struct {
	tag uint64
	n   int
	err error
}

// asyncRun drives an AsyncBackend with one IO in flight per worker. The
// backend's completion goroutine does the accounting and starts the next
// IOs itself (in FlushCompletions), so no goroutine of ours is woken per
// IO: the runner goroutine only starts the first IOs and waits for the
// last. Whoever finds the combiner free processes everything pending
// (flat combining), which also covers a Start that completes at once on
// the calling goroutine.
type asyncRun struct {
	r       *run
	b       nbd.AsyncBackend
	workers []*worker
	streams []*Stream
	slots   []asyncSlot

	mu         sync.Mutex
	pending    []asyncDone
	processing bool
	inflight   int  // guarded by mu
	issuing    bool // guarded by mu
	finished   chan struct{}

	batch   []asyncDone // owned by the combiner
	restart []int       // owned by the combiner
}

func (a *asyncRun) Complete(tag uint64, n int, err error) {
	a.mu.Lock()
	a.pending = append(a.pending, asyncDone{tag, n, err})
	a.mu.Unlock()
}

// FlushCompletions processes the pending completions, unless another
// goroutine (or this one, further up the stack) is already at it.
func (a *asyncRun) FlushCompletions() {
	a.mu.Lock()
	if a.processing {
		a.mu.Unlock()
		return
	}
	a.processing = true
	a.mu.Unlock()
	a.combine()
}

// combine processes pending completions until there are none, then
// gives up the combiner's role; the caller has taken it (processing).
func (a *asyncRun) combine() {
	a.mu.Lock()
	for len(a.pending) > 0 {
		a.batch, a.pending = a.pending, a.batch[:0]
		a.mu.Unlock()
		// One time for the batch: the completions were reaped together,
		// as fio's engines reap theirs.
		now := time.Now()
		a.restart = a.restart[:0]
		stop := false
		for _, d := range a.batch {
			sl := &a.slots[d.tag]
			if !a.r.complete(a.workers[d.tag], sl.op, sl.check, d.n, d.err, now.Sub(sl.t0)) {
				stop = true
			}
			if !stop && a.r.phase.Load() != phaseStop {
				a.restart = append(a.restart, int(d.tag))
			}
		}
		a.mu.Lock()
		if stop {
			a.issuing = false
		}
		if !a.issuing {
			a.restart = a.restart[:0]
		}
		a.inflight -= len(a.batch) - len(a.restart)
		a.mu.Unlock()
		for _, i := range a.restart {
			a.start(i)
		}
		a.mu.Lock()
	}
	a.processing = false
	done := a.inflight == 0
	a.mu.Unlock()
	if done {
		select {
		case a.finished <- struct{}{}:
		default:
		}
	}
}

// start issues worker i's next IO; the caller has counted it in flight.
func (a *asyncRun) start(i int) {
	sl, w := &a.slots[i], a.workers[i]
	sl.op = a.streams[i].Next()
	sl.check = a.r.prepare(w, sl.op)
	sl.t0 = time.Now()
	if sl.op.Write {
		a.b.StartWriteAt(w.buf, sl.op.Off, a, uint64(i))
	} else {
		a.b.StartReadAt(w.buf, sl.op.Off, a, uint64(i))
	}
}

// workAsync runs the IOs until the run stops, then waits for every IO
// still in flight (their buffers belong to the backend until then).
func (r *run) workAsync(workers []*worker, streams []*Stream, b nbd.AsyncBackend) {
	a := &asyncRun{r: r, b: b, workers: workers, streams: streams,
		slots:    make([]asyncSlot, len(workers)),
		pending:  make([]asyncDone, 0, len(workers)),
		batch:    make([]asyncDone, 0, len(workers)),
		restart:  make([]int, 0, len(workers)),
		issuing:  true,
		finished: make(chan struct{}, 1),
	}
	// The first IOs are started as the combiner, so completions that
	// arrive meanwhile (or at once, on this goroutine) wait until every
	// slot has been started instead of restarting the first slots only.
	a.mu.Lock()
	a.processing = true
	a.inflight = len(workers)
	a.mu.Unlock()
	for i := range workers {
		a.mu.Lock()
		if !a.issuing || r.phase.Load() == phaseStop {
			a.inflight -= len(workers) - i // never started
			a.mu.Unlock()
			break
		}
		a.mu.Unlock()
		a.start(i)
	}
	a.combine()
	<-r.stopped
	// Completions arriving after the stop finish their slots without a
	// restart; wait for the last one.
	for {
		a.mu.Lock()
		a.issuing = false
		n := a.inflight
		a.mu.Unlock()
		if n == 0 {
			return
		}
		<-a.finished
	}
}

func (r *run) record(w *worker, write bool, lat time.Duration) {
	if write {
		w.write.Record(lat)
	} else {
		w.read.Record(lat)
	}
}

// startProgress calls opts.Progress every interval until the returned
// channel is closed.
func (r *run) startProgress(workers []*worker) chan struct{} {
	done := make(chan struct{})
	if r.opts.Progress == nil {
		return done
	}
	every := r.opts.ProgressInterval
	if every <= 0 {
		every = time.Second
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		begun := time.Now()
		last, lastAt := uint64(0), begun
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				var n uint64
				for _, w := range workers {
					n += w.completed.Load()
				}
				sec := now.Sub(lastAt).Seconds()
				p := Progress{Ramping: r.phase.Load() == phaseRamp, Elapsed: now.Sub(begun), Runtime: r.opts.Ramp}
				if !p.Ramping {
					if !r.measureBeganAt().IsZero() {
						p.Elapsed = now.Sub(r.measureBeganAt())
					}
					p.Runtime = r.opts.Runtime
				}
				p.IOPS = float64(n-last) / sec
				p.BytesPerSec = p.IOPS * float64(r.opts.BlockSize)
				last, lastAt = n, now
				r.opts.Progress(p)
			}
		}
	}()
	return done
}

// measureBeganAt is called by the progress goroutine: the phase store in
// beginMeasure publishes r.start (it is written before the store).
func (r *run) measureBeganAt() time.Time {
	if r.phase.Load() < phaseMeasure {
		return time.Time{}
	}
	return r.start
}

// alignedBuffer returns n bytes aligned to 4096, as O_DIRECT on a block
// device requires (the other targets do not care).
func alignedBuffer(n int) []byte {
	const align = 4096
	raw := make([]byte, n+align)
	shift := 0
	if rem := int(uintptr(unsafe.Pointer(&raw[0])) % align); rem != 0 {
		shift = align - rem
	}
	return raw[shift : shift+n : shift+n]
}

// parallel runs fn(i) for i in [0, n) on up to depth goroutines and
// returns the first error; it stops handing out work after an error or
// when ctx ends.
func parallel(ctx context.Context, n int64, depth int, fn func(worker int, i int64) error) error {
	var next atomic.Int64
	var once sync.Once
	var first error
	var failed atomic.Bool
	var wg sync.WaitGroup
	for wk := 0; wk < depth; wk++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(wk, i)
				}
				if err != nil {
					once.Do(func() { first = err })
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// prefill writes the pattern over the whole region (for verified
// read-only runs), in chunks of up to 1 MiB.
func prefill(ctx context.Context, backends []nbd.Backend, o *Options, v *verifier) (int64, error) {
	chunk := int64(o.BlockSize)
	for chunk < 1<<20 {
		chunk *= 2
	}
	chunks := (o.Size + chunk - 1) / chunk
	bufs := make([][]byte, o.IODepth)
	for i := range bufs {
		bufs[i] = alignedBuffer(int(chunk))
	}
	err := parallel(ctx, chunks, o.IODepth, func(wk int, i int64) error {
		off := o.Offset + i*chunk
		n := min(chunk, o.Offset+o.Size-off)
		n -= n % int64(o.BlockSize)
		if n == 0 {
			return nil
		}
		p := bufs[wk][:n]
		fillPattern(p, off, v.nonce)
		if _, err := backends[wk%len(backends)].WriteAt(p, off); err != nil {
			return &IOError{Write: true, Off: off, Len: len(p), Err: err}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	v.markAll(o.Blocks())
	return o.Blocks() * int64(o.BlockSize), nil
}

// readBack reads every block written in this run and checks it.
func readBack(ctx context.Context, backends []nbd.Backend, o *Options, v *verifier) (uint64, error) {
	bufs := make([][]byte, o.IODepth)
	for i := range bufs {
		bufs[i] = alignedBuffer(o.BlockSize)
	}
	var n atomic.Uint64
	err := parallel(ctx, o.Blocks(), o.IODepth, func(wk int, blk int64) error {
		off := o.Offset + blk*int64(o.BlockSize)
		if !v.isWritten(off) {
			return nil
		}
		if _, err := backends[wk%len(backends)].ReadAt(bufs[wk], off); err != nil {
			return &IOError{Off: off, Len: o.BlockSize, Err: err}
		}
		n.Add(1)
		return checkPattern(bufs[wk], off, v.nonce)
	})
	return n.Load(), err
}
