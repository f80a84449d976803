package nbd

import "time"

// Observer sees every request the IO loop answers, so a front end can
// count them (metrics) without this package knowing how. The loop calls
// it on its hot path, from the reading goroutine, the workers and the
// completion goroutine at once: an implementation must be safe for
// concurrent use, must not block, and should not allocate (the loop's
// benchmarks hold it to 0 allocs/op). One Observer may serve several
// connections (every connection of a device or of an export).
type Observer interface {
	// RequestStarted: a request of type cmd (CmdRead, CmdWrite, ...)
	// was read and takes a slot. Every RequestStarted is followed by
	// exactly one RequestDone for it, even when the request is refused
	// or times out; NBD_CMD_DISC is neither started nor done.
	RequestStarted(cmd uint16)
	// RequestDone: the request's reply is built and queued. errno is
	// the reply's NBD error value (0 on success, EIO, EPERM, ...),
	// length the request's length field (its payload bytes for READ and
	// WRITE, the range for TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS),
	// and took the time since RequestStarted.
	RequestDone(cmd uint16, length uint32, errno uint32, took time.Duration)
}

// ConnectionObserver is an optional ability of an Observer given to
// Attach or Reattach: the Device tells it each time it replaced a
// connection the kernel dropped (AttachOptions.Observer).
type ConnectionObserver interface {
	ConnectionReplaced()
}

// monoEpoch anchors monotonic(): time.Since of a fixed time reads the
// monotonic clock only, and a Duration fits in a request slot without
// the wall clock fields of a time.Time.
var monoEpoch = time.Now()

func monotonic() time.Duration { return time.Since(monoEpoch) }
