package graph

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// spaceWatch follows whether the pools behind the store are full (the
// store's SpaceReporter ability): a full pool makes every layer's
// writes wait, or fail with ENOSPC under rbd.abortonfull, and nothing in
// a container says why. It checks every interval and when Status asks,
// logs each change once (full, room again, cannot tell), and gives
// Status its lines.
type spaceWatch struct {
	rep         SpaceReporter
	log         *slog.Logger
	abortOnFull bool
	interval    time.Duration

	mu       sync.Mutex
	full     []PoolSpace // the pools full at the last check
	err      error       // the last check's failure
	at       time.Time   // when the last check ended
	checking chan struct{}

	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}
}

// DefaultSpaceCheckInterval is how often the driver asks whether its
// pools are full, besides every Status (docker info).
const DefaultSpaceCheckInterval = 10 * time.Second

// spaceCheckTimeout bounds one check: a monitor that does not answer
// must not hold docker info up.
const spaceCheckTimeout = 5 * time.Second

func startSpaceWatch(rep SpaceReporter, log *slog.Logger, abortOnFull bool, interval time.Duration) *spaceWatch {
	if interval <= 0 {
		interval = DefaultSpaceCheckInterval
	}
	w := &spaceWatch{rep: rep, log: log, abortOnFull: abortOnFull, interval: interval,
		stopCh: make(chan struct{}), done: make(chan struct{})}
	go w.loop()
	return w
}

func (w *spaceWatch) loop() {
	defer close(w.done)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.check()
		select {
		case <-w.stopCh:
			return
		case <-t.C:
		}
	}
}

func (w *spaceWatch) stop() {
	w.stopOnce.Do(func() { close(w.stopCh) })
	<-w.done
}

// check asks the store (one check at a time: a second caller waits for
// the running one, up to spaceCheckTimeout) and logs what changed.
func (w *spaceWatch) check() {
	w.mu.Lock()
	if ch := w.checking; ch != nil {
		w.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(spaceCheckTimeout):
		}
		return
	}
	ch := make(chan struct{})
	w.checking = ch
	w.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), spaceCheckTimeout)
	pools, err := w.rep.Space(ctx)
	cancel()
	var full []PoolSpace
	for _, p := range pools {
		if p.Full {
			full = append(full, p)
		}
	}

	w.mu.Lock()
	w.checking = nil
	prevFull, prevErr := w.full, w.err
	if err == nil {
		w.full = full
	}
	w.err = err
	w.at = time.Now()
	w.mu.Unlock()
	close(ch)

	if err != nil {
		if prevErr == nil {
			w.log.Warn("cannot tell whether the pool is full (checked again every interval)", "interval", w.interval, "err", err)
		}
		return
	}
	if prevErr != nil {
		w.log.Info("the pool's state can be read again")
	}
	for _, p := range full {
		if !slices.Contains(prevFull, p) {
			w.log.Error("pool full: "+w.consequence(), "pool", p.Pool, "detail", p.Detail)
		}
	}
	for _, p := range prevFull {
		if !slices.ContainsFunc(full, func(q PoolSpace) bool { return q.Pool == p.Pool }) {
			w.log.Info("pool has room again: writes go through", "pool", p.Pool)
		}
	}
}

// consequence says what a full pool does to the layers under the
// driver's rbd.abortonfull.
func (w *spaceWatch) consequence() string {
	if w.abortOnFull {
		return "writes to layers fail with ENOSPC until space is freed (rbd.abortonfull=true)"
	}
	return "writes to layers wait until space is freed (rbd.abortonfull=true fails them with ENOSPC instead)"
}

// status checks again unless the last check is fresh, and gives the
// Status lines: one "Pool Full" line per full pool, or why the state is
// unknown.
func (w *spaceWatch) status() [][2]string {
	w.mu.Lock()
	fresh := !w.at.IsZero() && time.Since(w.at) < time.Second
	w.mu.Unlock()
	if !fresh {
		w.check()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var st [][2]string
	for _, p := range w.full {
		st = append(st, [2]string{"Pool Full", p.Detail + "; " + w.consequence()})
	}
	if w.err != nil {
		st = append(st, [2]string{"Pool Space", "unknown: " + w.err.Error()})
	}
	return st
}
