package rbdstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The store's cluster connection, renewed after a blocklisting.
//
// All layers and metadata operations share one connection (a session).
// Once the cluster blocklists it (ceph osd blocklist add), librados
// never serves it again: every request fails with ESHUTDOWN. The first
// caller that sees that (a metadata operation, or a layer's Reopener)
// renews the session: one new connection for the generation, made under
// a semaphore so that the others waiting find it made. The old session's
// dead channel then tells every layer's Reopener to reopen its image on
// the new one. The old connection is closed once nothing holds it any
// more (refs: images opened on it, operations in flight).

// session is one generation of the store's connection.
type session struct {
	conn     *rbdio.Conn
	gen      int
	dead     chan struct{} // closed once replaced
	refs     int           // sessions.mu
	replaced bool          // sessions.mu
}

// sessions owns the store's current session and its renewals.
type sessions struct {
	connect func(ctx context.Context) (*rbdio.Conn, error)
	log     *slog.Logger
	sem     chan struct{} // one renewal at a time
	stop    chan struct{}
	closing sync.WaitGroup

	mu       sync.Mutex
	cur      *session
	closed   bool
	images   map[*Reopener]struct{}
	renewals int
	last     time.Time
	// A failed renewal is not tried again before failWait has passed
	// (doubling to reopenMax): every layer's Reopener asks, and one
	// attempt per backoff step is enough for all.
	failedAt time.Time
	failWait time.Duration
	failErr  error
	obs      ClusterObserver // nil: nobody follows the connection
}

func newSessions(conn *rbdio.Conn, connect func(context.Context) (*rbdio.Conn, error), log *slog.Logger) *sessions {
	return &sessions{connect: connect, log: log, sem: make(chan struct{}, 1), stop: make(chan struct{}),
		cur: &session{conn: conn, dead: make(chan struct{})}, images: make(map[*Reopener]struct{})}
}

// blocklisted reports whether err means the cluster blocklisted the
// connection (and not that the store was closed).
func blocklisted(err error) bool {
	return errors.Is(err, syscall.ESHUTDOWN) && !errors.Is(err, rbdio.ErrClosed)
}

var errStoreClosed = &rbdio.Error{Op: "use the layer store", Kind: rbdio.ErrClosed, Errno: syscall.ESHUTDOWN}

// acquire holds the current session (release).
func (s *sessions) acquire() *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.refs++
	return s.cur
}

func (s *sessions) release(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss.refs--
	if ss.replaced && ss.refs == 0 {
		s.closeLocked(ss)
	}
}

func (s *sessions) closeLocked(ss *session) {
	s.closing.Add(1)
	go func() {
		defer s.closing.Done()
		if err := ss.conn.Close(); err != nil {
			s.log.Warn("rbd: closing the blocklisted cluster connection", "generation", ss.gen, "err", err)
		}
	}()
}

// renew returns, held, a session newer than old: the current one if
// another caller renewed already, else a new connection. It fails when
// connecting fails (and, for failWait after that, at once with the same
// error), ctx ends or the store is closed.
func (s *sessions) renew(ctx context.Context, old *session) (*session, error) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.stop:
		return nil, errStoreClosed
	}
	defer func() { <-s.sem }()
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return nil, errStoreClosed
	case s.cur != old:
		s.cur.refs++
		ss := s.cur
		s.mu.Unlock()
		return ss, nil
	case time.Since(s.failedAt) < s.failWait:
		err := s.failErr
		s.mu.Unlock()
		return nil, err
	}
	obs := s.obs
	s.mu.Unlock()

	if obs != nil {
		obs.SetConnected(false)
	}
	s.log.Error("rbd: the cluster blocklisted the layer store's client (requests fail with ESHUTDOWN); opening a new connection for all layers", "generation", old.gen)
	conn, err := s.connect(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failedAt, s.failErr = time.Now(), err
		s.failWait = min(max(2*s.failWait, reopenMin), reopenMax)
		s.log.Warn("rbd: a new cluster connection after the blocklisting failed; retrying", "err", err, "retry", s.failWait)
		return nil, err
	}
	if s.closed {
		conn.Close()
		return nil, errStoreClosed
	}
	next := &session{conn: conn, gen: old.gen + 1, dead: make(chan struct{}), refs: 1}
	s.cur = next
	s.renewals++
	s.last = time.Now()
	s.failedAt, s.failWait, s.failErr = time.Time{}, 0, nil
	old.replaced = true
	close(old.dead)
	if old.refs == 0 {
		s.closeLocked(old)
	}
	if obs != nil {
		obs.SetConnected(true)
		obs.BlocklistRecovered()
	}
	s.log.Info("rbd: new cluster connection open; reopening the layers' images on it", "generation", next.gen, "images", len(s.images))
	return next, nil
}

// observe makes o follow the store's connection from now on; it is told
// at once whether the connection is up.
func (s *sessions) observe(o ClusterObserver) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.obs = o
	o.SetConnected(!s.closed && s.failErr == nil)
}

// openImage opens name on the current session; on a blocklisted one it
// renews it and tries once more.
func (s *sessions) openImage(ctx context.Context, name string, opts rbdio.OpenOptions) (*opened, error) {
	ss := s.acquire()
	im, err := ss.conn.OpenImage(ctx, name, opts)
	if blocklisted(err) {
		s.release(ss)
		var rerr error
		if ss, rerr = s.renew(ctx, ss); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		im, err = ss.conn.OpenImage(ctx, name, opts)
	}
	if err != nil {
		s.release(ss)
		return nil, err
	}
	return &opened{im: im, dead: ss.dead, sess: ss, release: func() error { s.release(ss); return nil }}, nil
}

// serve puts first behind a Reopener that reopens the image on the
// store's next session after a blocklisting, and keeps it in the list
// for status until it is closed.
func (s *sessions) serve(first *opened, name string, opts rbdio.OpenOptions, policy ReopenPolicy) *Reopener {
	reopen := func(ctx context.Context, prev *opened) (*opened, error) {
		ss, err := s.renew(ctx, prev.sess)
		if err != nil {
			return nil, err
		}
		s.release(ss) // openImage holds it again, or a newer one
		return s.openImage(ctx, name, opts)
	}
	r := newReopener(first, reopen, policy, s.log)
	s.mu.Lock()
	s.images[r] = struct{}{}
	s.mu.Unlock()
	r.onClose = func() {
		s.mu.Lock()
		delete(s.images, r)
		s.mu.Unlock()
	}
	return r
}

// status is docker info's lines about renewals and fenced layers.
func (s *sessions) status() [][2]string {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	renewals, last := s.renewals, s.last
	var fenced []string
	for r := range s.images {
		if r.Fenced() {
			fenced = append(fenced, r.Name())
		}
	}
	s.mu.Unlock()
	var st [][2]string
	if renewals > 0 {
		st = append(st, [2]string{"Cluster Connection", fmt.Sprintf("renewed %d time(s) after the cluster blocklisted this client, last at %s", renewals, last.UTC().Format(time.RFC3339))})
	}
	if len(fenced) > 0 {
		slices.Sort(fenced)
		st = append(st, [2]string{"Fenced Layers", fmt.Sprintf("%s: another Ceph client took the exclusive lock after this client was blocklisted; not taken back (the blocklist is Ceph's fencing), IO to them fails until it lets go (retrying)", strings.Join(fenced, ", "))})
	}
	return st
}

// close closes the images still open, then the connection: their IO
// fails with rbdio.ErrClosed from then on.
func (s *sessions) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	open := make([]*Reopener, 0, len(s.images))
	for r := range s.images {
		open = append(open, r)
	}
	cur := s.cur
	s.mu.Unlock()
	var errs []error
	for _, r := range open {
		errs = append(errs, r.Close())
	}
	errs = append(errs, cur.conn.Close())
	s.closing.Wait()
	return errors.Join(errs...)
}
