package nbd

import (
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// byteBudget bounds the payload bytes held by requests in flight across
// every connection of a Server, on top of each connection's own
// MaxInFlightBytes: without it N clients that send large READs and never
// read the replies pin N times the per-connection bound.
//
// take admits n bytes when they fit, when nothing at all is held (so a
// request larger than the budget still runs, alone), or when floor is
// set: the caller's connection holds nothing and the request is small
// (at most slotKeepPayload). The floor keeps a connection from starving
// behind others that hold the whole budget and never read; it lets the
// total exceed the limit by at most one small request per connection.
// Requests that do not fit wait; none is dropped.
//
// When the budget has lent large buffers and then stays idle for
// idleRelease, the process's free memory goes back to the OS: the
// buffers sit in sync.Pools that only a collection empties, and a
// server between bursts allocates too little to trigger one.
type byteBudget struct {
	limit   int64
	used    atomic.Int64
	waiting atomic.Int32
	mu      sync.Mutex
	cond    sync.Cond

	// Large lends since the last release to the OS, and the pending
	// release (guarded by mu).
	large   atomic.Bool
	release *time.Timer
}

// idleRelease is how long the budget must stay unused after lending
// large buffers before free memory goes back to the OS. Long enough that
// a client pausing between bursts keeps its buffers pooled.
const idleRelease = 2 * time.Second

func newByteBudget(limit int64) *byteBudget {
	b := &byteBudget{limit: limit}
	b.cond.L = &b.mu
	return b
}

// tryTake takes n bytes if they are admitted now.
func (b *byteBudget) tryTake(n int64, floor bool) bool {
	for {
		u := b.used.Load()
		if u != 0 && u+n > b.limit && !floor {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			if n > slotKeepPayload && !b.large.Load() {
				b.large.Store(true)
			}
			return true
		}
	}
}

// take waits until n bytes are admitted and takes them.
func (b *byteBudget) take(n int64, floor bool) {
	if b.tryTake(n, floor) {
		return
	}
	b.mu.Lock()
	// waiting is raised before the retry, so a give that the retry
	// misses sees it and wakes us (both are sequentially consistent).
	b.waiting.Add(1)
	for !b.tryTake(n, floor) {
		b.cond.Wait()
	}
	b.waiting.Add(-1)
	b.mu.Unlock()
}

// give returns n bytes taken before.
func (b *byteBudget) give(n int64) {
	u := b.used.Add(-n)
	if b.waiting.Load() > 0 {
		b.mu.Lock()
		b.cond.Broadcast()
		b.mu.Unlock()
	}
	if u == 0 && b.large.Load() {
		b.scheduleRelease()
	}
}

func (b *byteBudget) scheduleRelease() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.release == nil {
		b.release = time.AfterFunc(idleRelease, b.releaseIfIdle)
	} else {
		b.release.Reset(idleRelease)
	}
}

// releaseIfIdle empties the buffer pools and returns free memory to the
// OS if the budget is still unused. Two collections: sync.Pool keeps
// its contents through the first as victims.
func (b *byteBudget) releaseIfIdle() {
	if b.used.Load() != 0 || !b.large.Swap(false) {
		return
	}
	runtime.GC()
	debug.FreeOSMemory()
}
