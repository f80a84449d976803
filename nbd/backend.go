package nbd

// Backend is the block store an export or a kernel device serves. It is
// the boundary between the protocol engine (this package) and the storage
// (rbdio, or the memory and file backends here).
//
// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt and are called
// concurrently from up to the queue depth of goroutines per connection, so
// implementations must be safe for concurrent use. The IO loop never hands
// a backend a range past Size(); it calls Size on every request, so Size
// must be cheap (cache it; update it when the size changes).
//
// Errors are mapped to NBD error replies by Errno: return (or wrap with %w)
// a syscall.Errno such as EIO, ENOSPC, EROFS or EINVAL to choose the reply;
// anything else becomes EIO.
type Backend interface {
	ReadAt(p []byte, off int64) (n int, err error)
	WriteAt(p []byte, off int64) (n int, err error)
	// Flush makes every write that completed before the call durable.
	Flush() error
	// Size is the export size in bytes. It may change over time (see Resizer).
	Size() int64
}

// Discarder is an optional ability: the range may be deallocated; later
// reads of it return zeroes or the old data (NBD_CMD_TRIM semantics).
type Discarder interface {
	Discard(off, length int64) error
}

// ZeroWriter is an optional ability: after WriteZeroes the range reads as
// zeroes. With mayUnmap false (NBD_CMD_FLAG_NO_HOLE) the range must stay
// allocated.
type ZeroWriter interface {
	WriteZeroes(off, length int64, mayUnmap bool) error
}

// FUAWriter is an optional ability: WriteAtFUA writes like WriteAt and
// returns once the written range is durable (NBD_CMD_FLAG_FUA), usually
// cheaper than WriteAt followed by a Flush of everything. Without it the
// IO loop does exactly that.
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (n int, err error)
}

// NonBlocking is an optional ability of backends whose calls complete in
// microseconds without waiting on a device or the network: memory, or a
// file on tmpfs. When NonBlocking reports true the IO loop serves their
// requests on the goroutine that reads them, with no hand-off to a
// worker, and answers everything one socket read brought in with one
// vectored write. A call that does block would stall its whole
// connection, so a backend that may wait must not claim it.
type NonBlocking interface {
	NonBlocking() bool
}

// Resizer is an optional ability of backends whose size can change while
// they are served (an RBD image resized by another client). The channel
// receives the new size each time it changes and is closed when the
// backend is closed.
type Resizer interface {
	SizeChanges() <-chan int64
}
