package rbdstore

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// Reopener serves an rbd: target and recovers from blocklisting: once a
// request fails with ESHUTDOWN (ceph osd blocklist add of this client;
// librados never recovers such a client) it opens a new connection and
// the image again and sends the next requests there. Requests in flight
// on the old handle fail with ESHUTDOWN; nothing is retried, as the
// kernel or client decides about its own retries.
//
// The blocklist is Ceph's fencing: a read-write reopen takes the
// exclusive lock only if its holder is gone (librbd breaks the lock of a
// client that has no watch left, as our blocklisted one); a live holder
// (another client took the image meanwhile) makes the reopen fail, and it
// is retried, never forced, while IO keeps failing with ESHUTDOWN.
type Reopener struct {
	open func(ctx context.Context) (*rbdio.Conn, *rbdio.Image, error)
	log  *slog.Logger

	cur    atomic.Pointer[opened]
	obs    atomic.Pointer[ClusterObserver]
	sizeCh chan int64
	stop   chan struct{}
	done   chan struct{}
}

type opened struct {
	conn *rbdio.Conn
	im   *rbdio.Image
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
	open := func(ctx context.Context) (*rbdio.Conn, *rbdio.Image, error) {
		conn, err := rbdio.Connect(ctx, c)
		if err != nil {
			return nil, nil, err
		}
		im, err := conn.OpenImage(ctx, image, rbdio.OpenOptions{ReadOnly: readOnly, Snapshot: snap})
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		return conn, im, nil
	}
	conn, im, err := open(ctx)
	if err != nil {
		return nil, err
	}
	return NewReopener(conn, im, open, log), nil
}

// NewReopener serves im (opened on conn) and, after a blocklisting,
// what open returns; it owns all three from now on (Close).
func NewReopener(conn *rbdio.Conn, im *rbdio.Image, open func(context.Context) (*rbdio.Conn, *rbdio.Image, error), log *slog.Logger) *Reopener {
	r := &Reopener{open: open, log: log, sizeCh: make(chan int64, 1), stop: make(chan struct{}), done: make(chan struct{})}
	r.cur.Store(&opened{conn: conn, im: im})
	go r.loop()
	return r
}

func (r *Reopener) image() *rbdio.Image { return r.cur.Load().im }

func (r *Reopener) ReadAt(p []byte, off int64) (int, error)  { return r.image().ReadAt(p, off) }
func (r *Reopener) WriteAt(p []byte, off int64) (int, error) { return r.image().WriteAt(p, off) }
func (r *Reopener) Flush() error                             { return r.image().Flush() }
func (r *Reopener) Size() int64                              { return r.image().Size() }
func (r *Reopener) Discard(off, length int64) error          { return r.image().Discard(off, length) }
func (r *Reopener) WriteZeroes(off, length int64, mayUnmap bool) error {
	return r.image().WriteZeroes(off, length, mayUnmap)
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
		for {
			select {
			case <-r.stop:
				return
			case n, ok := <-sizes:
				if !ok {
					sizes = nil
					continue
				}
				r.sendSize(n)
				continue
			case <-o.im.Blocklisted():
			}
			break
		}
		r.log.Error("rbd: this client was blocklisted by the cluster (requests fail with ESHUTDOWN); opening a new connection", "image", o.im.String())
		r.observe(func(o ClusterObserver) { o.SetConnected(false) })
		next, ok := r.reopen()
		if !ok {
			return
		}
		r.cur.Store(next)
		r.observe(func(o ClusterObserver) { o.SetConnected(true); o.BlocklistRecovered() })
		r.log.Info("rbd: reopened after the blocklisting; serving again", "image", next.im.String())
		if next.im.Size() != o.im.Size() {
			r.sendSize(next.im.Size())
		}
		// The old handle fails everything at once; closing it releases
		// what it holds here.
		go closeOpened(o)
	}
}

// reopen tries until it succeeds or the Reopener is closed.
func (r *Reopener) reopen() (*opened, bool) {
	wait := reopenMin
	for {
		ctx, cancel := context.WithTimeout(context.Background(), reopenTimeout)
		conn, im, err := r.open(ctx)
		cancel()
		if err == nil {
			return &opened{conn: conn, im: im}, true
		}
		if errors.Is(err, rbdio.ErrLocked) {
			r.log.Error("rbd: another client holds the image's exclusive lock since this one was blocklisted: not taking it (the blocklist fences this client); IO keeps failing with ESHUTDOWN", "err", err, "retry", wait)
		} else {
			r.log.Warn("rbd: reopen after the blocklisting failed; retrying", "err", err, "retry", wait)
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
	return errors.Join(o.im.Close(), o.conn.Close())
}

// Close stops recovering and closes the image and its connection.
func (r *Reopener) Close() error {
	close(r.stop)
	<-r.done
	return closeOpened(r.cur.Load())
}
