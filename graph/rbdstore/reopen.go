package rbdstore

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// Reopener serves an image and recovers from blocklisting: once a
// request fails with ESHUTDOWN (ceph osd blocklist add of this client;
// librados never recovers such a client), or the connection under the
// image is known dead (the Store renewed it), it opens the image again
// on a new connection and sends the next requests there. An rbd: target
// has a connection of its own (OpenReopening); a Store's layers share
// the store's, renewed once for all of them.
//
// Requests that failed on the blocklisted handle, and those that reach
// it before the new one is open, are resubmitted on the new handle if it
// opens within ReopenPolicy.Wait: a write that failed with ESHUTDOWN
// either never reached the OSDs or is written again with the same data
// at the same offset, and nobody else wrote there meanwhile, since the
// new handle holds the exclusive lock again. A flush is resubmitted only
// without a writeback cache (a flush on the new handle cannot vouch for
// writes acknowledged from the dead handle's cache). After Wait, or at
// once while fenced, the request fails with its error (EIO to the
// kernel).
//
// The blocklist is Ceph's fencing: a read-write reopen takes the
// exclusive lock only if its holder is gone (librbd breaks the lock of a
// client that has no watch left, as our blocklisted one); a live holder
// (another client took the image meanwhile) makes the reopen fail with
// rbdio.ErrLocked. The image is then fenced (Fenced): its IO fails at
// once, and the reopen is retried with backoff, never forced, so it
// serves again once that client lets go.
type Reopener struct {
	open   func(ctx context.Context, prev *opened) (*opened, error)
	policy ReopenPolicy
	log    *slog.Logger
	name   string

	cur    atomic.Pointer[opened]
	obs    atomic.Pointer[ClusterObserver]
	fenced atomic.Bool
	closed atomic.Bool
	// changed is closed and replaced whenever cur or fenced changes, for
	// requests waiting to be resubmitted.
	mu      sync.Mutex
	changed chan struct{}

	sizeCh  chan int64
	stop    chan struct{}
	done    chan struct{}
	onClose func()
}

// opened is one handle on the image: the image, what its connection's
// death signals (nil for a connection of its own: only the image's
// Blocklisted tells), and how to let go of the connection.
type opened struct {
	im      *rbdio.Image
	dead    <-chan struct{}
	release func() error
	sess    *session // the Store's connection it was opened on, if any
}

// ReopenPolicy says how requests meet a reopen.
type ReopenPolicy struct {
	// Wait bounds how long a request that failed on the blocklisted
	// handle waits for the new one to be resubmitted there; 0 fails it
	// at once.
	Wait time.Duration
	// ResubmitFlush allows resubmitting flushes: only when librbd
	// acknowledges writes once they are on the OSDs (no writeback cache).
	ResubmitFlush bool
}

// DefaultReopenWait is ReopenPolicy.Wait unless set (rbd.reopenwait):
// a reopen took 0.2-1 s here (docs/2026-12-04-ceph-faults.md), and a
// connect is bounded by its own 30 s timeout.
const DefaultReopenWait = 30 * time.Second

// policyFor is the reopen policy for a connection made with c.
func policyFor(c rbdio.Config, wait time.Duration) ReopenPolicy {
	return ReopenPolicy{Wait: wait, ResubmitFlush: c.CachePolicy == "" || c.CachePolicy == rbdio.CacheNone || c.CachePolicy == rbdio.CacheWritethrough}
}

var (
	_ nbd.AsyncBackend = (*Reopener)(nil)
	_ nbd.Discarder    = (*Reopener)(nil)
	_ nbd.ZeroWriter   = (*Reopener)(nil)
	_ nbd.Resizer      = (*Reopener)(nil)
	_ nbd.Extenter     = (*Reopener)(nil)
)

// ClusterObserver is told the state of the connection a Reopener
// serves through (for metrics): connected or blocklisted, and each
// recovery from a blocklisting.
type ClusterObserver interface {
	SetConnected(ok bool)
	BlocklistRecovered()
}

// Observe makes o follow r's connection from now on; it is told at once
// that r is connected.
func (r *Reopener) Observe(o ClusterObserver) {
	r.obs.Store(&o)
	o.SetConnected(true)
}

func (r *Reopener) observe(f func(ClusterObserver)) {
	if o := r.obs.Load(); o != nil {
		f(*o)
	}
}

// Reopen attempts back off from reopenMin to reopenMax.
const (
	reopenMin     = time.Second
	reopenMax     = 30 * time.Second
	reopenTimeout = time.Minute // one attempt: connect and open
)

// OpenReopening connects with c, opens image (image@snap, always
// read-only, when snap is set) and serves it through a Reopener, which
// owns the connection and the image from then on (Close). A read-write
// image is held with its exclusive lock, so a second writer is refused
// instead of interleaving.
func OpenReopening(ctx context.Context, c rbdio.Config, image, snap string, readOnly bool, log *slog.Logger) (*Reopener, error) {
	open := func(ctx context.Context, _ *opened) (*opened, error) {
		conn, err := rbdio.Connect(ctx, c)
		if err != nil {
			return nil, err
		}
		im, err := conn.OpenImage(ctx, image, rbdio.OpenOptions{ReadOnly: readOnly, Snapshot: snap})
		if err != nil {
			conn.Close()
			return nil, err
		}
		return &opened{im: im, release: conn.Close}, nil
	}
	first, err := open(ctx, nil)
	if err != nil {
		return nil, err
	}
	return newReopener(first, open, policyFor(c, DefaultReopenWait), log), nil
}

// newReopener serves first and, after a blocklisting, what open returns
// (given the handle that failed); it owns them from now on (Close).
func newReopener(first *opened, open func(context.Context, *opened) (*opened, error), policy ReopenPolicy, log *slog.Logger) *Reopener {
	r := &Reopener{open: open, policy: policy, log: log, name: first.im.String(), changed: make(chan struct{}),
		sizeCh: make(chan int64, 1), stop: make(chan struct{}), done: make(chan struct{})}
	r.use(first)
	go r.loop()
	return r
}

// use makes o the handle requests go to.
func (r *Reopener) use(o *opened) {
	o.im.OnUnusable(func(q rbdio.AsyncRequest) bool { return r.resubmit(o, q) })
	r.cur.Store(o)
	r.fenced.Store(false)
	r.broadcast()
}

func (r *Reopener) broadcast() {
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Name is the image's spec (pool[/namespace]/image[@snap]).
func (r *Reopener) Name() string { return r.name }

// Fenced reports whether the image's reopen after a blocklisting is
// refused because another client holds its exclusive lock: its IO fails
// until that client lets go.
func (r *Reopener) Fenced() bool { return r.fenced.Load() }

func (r *Reopener) image() *rbdio.Image { return r.cur.Load().im }

// unusable reports whether err means the handle can serve nothing any
// more (blocklisted or closed under the request).
func unusable(err error) bool { return errors.Is(err, syscall.ESHUTDOWN) }

// next waits (at most policy.Wait) for a handle other than o, or nil
// when there will be none in time: the reopener is closed or fenced.
func (r *Reopener) next(o *opened) *opened {
	if r.policy.Wait <= 0 {
		return nil
	}
	timer := time.NewTimer(r.policy.Wait)
	defer timer.Stop()
	for {
		r.mu.Lock()
		ch := r.changed
		r.mu.Unlock()
		if n := r.cur.Load(); n != o {
			return n
		}
		if r.closed.Load() || r.fenced.Load() {
			return nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return nil
		}
	}
}

// resubmit takes over an asynchronous request that failed on o
// (rbdio.Image.OnUnusable): it must not block, so the wait is on a
// goroutine of its own (only after a blocklisting).
func (r *Reopener) resubmit(o *opened, q rbdio.AsyncRequest) bool {
	if r.closed.Load() || r.policy.Wait <= 0 || (q.Op == rbdio.AsyncFlush && !r.policy.ResubmitFlush) {
		return false
	}
	if r.cur.Load() == o && r.fenced.Load() {
		return false // fail at once: never hang a fenced layer's IO
	}
	go func() {
		n := r.next(o)
		if n == nil {
			q.C.Complete(q.Tag, 0, q.Err)
			q.C.FlushCompletions()
			return
		}
		switch q.Op {
		case rbdio.AsyncRead:
			n.im.StartReadAt(q.P, q.Off, q.C, q.Tag)
		case rbdio.AsyncWrite:
			n.im.StartWriteAt(q.P, q.Off, q.C, q.Tag)
		default:
			n.im.StartFlush(q.C, q.Tag)
		}
	}()
	return true
}

// again is the handle to retry a synchronous request on after err, or
// nil.
func (r *Reopener) again(o *opened, err error, flush bool) *opened {
	if err == nil || !unusable(err) || r.closed.Load() || (flush && !r.policy.ResubmitFlush) {
		return nil
	}
	return r.next(o)
}

func (r *Reopener) ReadAt(p []byte, off int64) (int, error) {
	o := r.cur.Load()
	n, err := o.im.ReadAt(p, off)
	if a := r.again(o, err, false); a != nil {
		return a.im.ReadAt(p, off)
	}
	return n, err
}

func (r *Reopener) WriteAt(p []byte, off int64) (int, error) {
	o := r.cur.Load()
	n, err := o.im.WriteAt(p, off)
	if a := r.again(o, err, false); a != nil {
		return a.im.WriteAt(p, off)
	}
	return n, err
}

func (r *Reopener) Flush() error {
	o := r.cur.Load()
	err := o.im.Flush()
	if a := r.again(o, err, true); a != nil {
		return a.im.Flush()
	}
	return err
}

func (r *Reopener) Size() int64 { return r.image().Size() }

func (r *Reopener) Discard(off, length int64) error {
	o := r.cur.Load()
	err := o.im.Discard(off, length)
	if a := r.again(o, err, false); a != nil {
		return a.im.Discard(off, length)
	}
	return err
}

func (r *Reopener) WriteZeroes(off, length int64, mayUnmap bool) error {
	o := r.cur.Load()
	err := o.im.WriteZeroes(off, length, mayUnmap)
	if a := r.again(o, err, false); a != nil {
		return a.im.WriteZeroes(off, length, mayUnmap)
	}
	return err
}

func (r *Reopener) StartReadAt(p []byte, off int64, c nbd.Completer, tag uint64) {
	r.image().StartReadAt(p, off, c, tag)
}
func (r *Reopener) StartWriteAt(p []byte, off int64, c nbd.Completer, tag uint64) {
	r.image().StartWriteAt(p, off, c, tag)
}
func (r *Reopener) StartFlush(c nbd.Completer, tag uint64) { r.image().StartFlush(c, tag) }
func (r *Reopener) SizeChanges() <-chan int64              { return r.sizeCh }
func (r *Reopener) Extents(ctx context.Context, off, length int64, limit int) ([]nbd.Extent, error) {
	return r.image().Extents(ctx, off, length, limit)
}

// loop forwards size changes and reopens after a blocklisting.
func (r *Reopener) loop() {
	defer close(r.done)
	defer close(r.sizeCh)
	for {
		o := r.cur.Load()
		sizes := o.im.SizeChanges()
		why := ""
		for why == "" {
			select {
			case <-r.stop:
				return
			case n, ok := <-sizes:
				if !ok {
					sizes = nil
					continue
				}
				r.sendSize(n)
			case <-o.im.Blocklisted():
				why = "this client was blocklisted by the cluster (requests fail with ESHUTDOWN); opening a new connection"
			case <-o.dead:
				why = "the connection under the image was blocklisted by the cluster; reopening the image on the new one"
			}
		}
		r.log.Error("rbd: "+why, "image", r.name)
		r.observe(func(o ClusterObserver) { o.SetConnected(false) })
		next, ok := r.reopen(o)
		if !ok {
			return
		}
		r.use(next)
		r.observe(func(o ClusterObserver) { o.SetConnected(true); o.BlocklistRecovered() })
		r.log.Info("rbd: reopened after the blocklisting; serving again", "image", r.name)
		if next.im.Size() != o.im.Size() {
			r.sendSize(next.im.Size())
		}
		// The old handle fails everything at once; closing it releases
		// what it holds here.
		go closeOpened(o)
	}
}

// reopen tries until it succeeds or the Reopener is closed.
func (r *Reopener) reopen(prev *opened) (*opened, bool) {
	wait := reopenMin
	for {
		ctx, cancel := context.WithTimeout(context.Background(), reopenTimeout)
		go func() {
			select {
			case <-r.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		o, err := r.open(ctx, prev)
		cancel()
		if err == nil {
			return o, true
		}
		if errors.Is(err, rbdio.ErrLocked) {
			if !r.fenced.Swap(true) {
				r.broadcast()
			}
			r.log.Error("rbd: another client holds the image's exclusive lock since this one was blocklisted: not taking it (the blocklist fences this client); its IO fails until that client lets go", "image", r.name, "err", err, "retry", wait)
		} else {
			r.log.Warn("rbd: reopen after the blocklisting failed; retrying", "image", r.name, "err", err, "retry", wait)
		}
		select {
		case <-r.stop:
			return nil, false
		case <-time.After(wait):
		}
		wait = min(2*wait, reopenMax)
	}
}

func (r *Reopener) sendSize(n int64) {
	select {
	case r.sizeCh <- n:
	default:
		// The consumer has not read the last one: replace it.
		select {
		case <-r.sizeCh:
		default:
		}
		select {
		case r.sizeCh <- n:
		default:
		}
	}
}

func closeOpened(o *opened) error {
	return errors.Join(o.im.Close(), o.release())
}

// Close stops recovering and closes the image and its connection.
// Closing twice is harmless.
func (r *Reopener) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	close(r.stop)
	<-r.done
	r.broadcast() // requests waiting for a new handle fail now
	err := closeOpened(r.cur.Load())
	if r.onClose != nil {
		r.onClose()
	}
	return err
}
