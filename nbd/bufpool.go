package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come in power-of-two size classes from 4 KiB to
// DefaultMaxPayload, each with replyHeadroom bytes of headroom so a read
// reply's header and data sit in one contiguous buffer (one iovec).
//
// A request slot keeps its buffer between requests when it is no larger
// than slotKeepPayload, which covers the kernel's and most clients'
// request sizes, so the steady-state hot path never touches the pools.
// Larger buffers go back to the shared pool when the request completes.
const (
	minClassShift   = 12 // 4 KiB
	slotKeepPayload = 256 << 10
	numClasses      = 26 - minClassShift + 1 // up to 64 MiB
)

// bufferPool holds payload buffers by size class. sync.Pool keeps them
// process-wide and lets the GC reclaim them when idle, so many
// connections share a few large buffers.
type bufferPool struct {
	classes [numClasses]sync.Pool
}

// payloadBuffers is shared by every connection: buffers are
// interchangeable and sync.Pool is safe for concurrent use.
var payloadBuffers bufferPool

// class returns the size class whose payload capacity holds n bytes.
func payloadClass(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// get returns a buffer of length replyHeadroom+n. Its capacity is
// that of its class, so put can find the class again.
func (p *bufferPool) get(n int) *[]byte {
	c := payloadClass(n)
	if c >= numClasses {
		b := make([]byte, replyHeadroom+n)
		return &b
	}
	if v := p.classes[c].Get(); v != nil {
		bp := v.(*[]byte)
		*bp = (*bp)[:replyHeadroom+n]
		return bp
	}
	b := make([]byte, replyHeadroom+n, replyHeadroom+(1<<(c+minClassShift)))
	return &b
}

// put returns a buffer from get to its class.
func (p *bufferPool) put(bp *[]byte) {
	c := payloadClass(cap(*bp) - replyHeadroom)
	if c >= numClasses || cap(*bp) != replyHeadroom+(1<<(c+minClassShift)) {
		return // not one of ours: let the GC have it
	}
	p.classes[c].Put(bp)
}
