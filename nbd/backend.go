package nbd

import "context"

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

// AsyncBackend is an optional ability of backends with native
// asynchronous IO (rbdio.Image over librbd's rbd_aio_* calls). The IO
// loop then starts each READ, WRITE and FLUSH from the goroutine that
// reads the requests, with no hand-off to a worker and no goroutine
// parked per request, and replies when the backend reports the outcome
// through Completer; the replies of a batch of completions go out in one
// vectored write. TRIM, WRITE_ZEROES and writes through a FUAWriter
// still use the synchronous methods.
//
// The Start methods return at once: they must not wait for the IO (a
// call that blocks stalls the whole connection). Each start is answered
// by exactly one c.Complete(tag, n, err), on any goroutine, possibly
// before the Start call returns (a request refused at once); n and err
// mean what ReadAt, WriteAt and Flush would return. p belongs to the
// backend until then. StartFlush covers every write whose completion was
// reported before it was started.
//
// A backend calls c.FlushCompletions after every run of Complete calls
// it makes in a row on one goroutine (once per distinct Completer),
// before that goroutine waits or returns: the receiver may hold replies
// back until then, so one write answers a whole batch.
type AsyncBackend interface {
	StartReadAt(p []byte, off int64, c Completer, tag uint64)
	StartWriteAt(p []byte, off int64, c Completer, tag uint64)
	StartFlush(c Completer, tag uint64)
}

// Completer receives the outcomes of requests started on an
// AsyncBackend. Its methods are safe for concurrent use and do not
// block; they may start further requests on the backend.
type Completer interface {
	// Complete reports the outcome of the request started with tag.
	Complete(tag uint64, n int, err error)
	// FlushCompletions ends a run of Complete calls.
	FlushCompletions()
}

// Extent is a byte range of an export.
type Extent struct {
	Offset, Length int64
}

// Extenter is an optional ability: Extents reports which parts of
// [off, off+length) hold data, for NBD_CMD_BLOCK_STATUS with the
// base:allocation meta context, so sparse-aware clients (nbdcopy,
// qemu-img convert) skip the rest. It returns the allocated extents in
// increasing order, not overlapping, at most limit of them; everything
// between them is a hole that reads as zeroes. When it returns limit
// extents the range after the last one is unknown (the client asks
// again from there). Reporting a range allocated that is not is always
// correct, only slower for the client; reporting data as a hole loses
// it. A backend without Extenter is reported allocated throughout.
type Extenter interface {
	Extents(ctx context.Context, off, length int64, limit int) ([]Extent, error)
}
