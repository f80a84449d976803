package nbd

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxIovecs is IOV_MAX on Linux: the most buffers one writev(2) takes.
const maxIovecs = 1024

// vectorWriter writes a list of buffers to a connection with as few
// writev(2) calls as the kernel allows, without allocating: the iovec
// array and the callback handed to syscall.RawConn are built once.
// net.Buffers would do the same work but allocates on every call.
//
// Connections without a file descriptor (net.Pipe in tests) fall back to
// one Write per buffer. A vectorWriter is not safe for concurrent use:
// its owner serialises calls.
type vectorWriter struct {
	conn net.Conn
	raw  syscall.RawConn
	iov  []unix.Iovec
	// State of the call in progress, read by writeFn. pos survives a
	// tryFlush that left buffers unwritten, for the flush that ends it.
	pos   int
	errno syscall.Errno
	// noWait makes writeFn give up (setting blocked) where it would wait
	// for the socket to become writable.
	noWait, blocked bool
	// writeFn is w.write bound once, so RawConn.Write gets the same func
	// value every time instead of a fresh closure.
	writeFn func(fd uintptr) bool
}

func newVectorWriter(conn net.Conn) *vectorWriter {
	w := &vectorWriter{conn: conn, iov: make([]unix.Iovec, 0, 64)}
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			w.raw = raw
		}
	}
	w.writeFn = w.write
	return w
}

// add queues b for the next flush. Empty buffers are skipped (an iovec
// with a nil base would be fine for the kernel but not for the fallback).
func (w *vectorWriter) add(b []byte) {
	if len(b) == 0 {
		return
	}
	var v unix.Iovec
	v.Base = &b[0]
	v.SetLen(len(b))
	w.iov = append(w.iov, v)
}

// flush writes every queued buffer in order (the rest of them after a
// tryFlush that returned false), completely, or fails. The queue is
// empty afterwards either way.
func (w *vectorWriter) flush() error {
	defer w.reset()
	if len(w.iov) == 0 {
		return nil
	}
	if w.raw == nil {
		for i := w.pos; i < len(w.iov); i++ {
			b := unsafe.Slice(w.iov[i].Base, w.iov[i].Len)
			if _, err := w.conn.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
	w.errno, w.noWait = 0, false
	if err := w.raw.Write(w.writeFn); err != nil {
		return err
	}
	return w.err()
}

// tryFlush writes what the socket takes now without waiting for it to
// drain. It returns true when the queue is done with (written, or failed
// with err; it is empty then), false when buffers remain: the caller
// must then call flush, on a goroutine that may wait, to write them.
func (w *vectorWriter) tryFlush() (bool, error) {
	if len(w.iov) == 0 {
		return true, nil
	}
	if w.raw == nil {
		// A TLS or in-memory connection cannot say whether a write
		// would wait: leave it all to flush.
		return false, nil
	}
	w.errno, w.noWait, w.blocked = 0, true, false
	err := w.raw.Write(w.writeFn)
	if err == nil && w.errno == 0 && w.blocked {
		return false, nil
	}
	w.reset()
	if err != nil {
		return true, err
	}
	return true, w.err()
}

func (w *vectorWriter) err() error {
	if w.errno != 0 {
		return &net.OpError{Op: "writev", Net: w.conn.LocalAddr().Network(), Addr: w.conn.RemoteAddr(), Err: w.errno}
	}
	return nil
}

func (w *vectorWriter) reset() {
	// Drop the references so the buffers are not kept alive by the array.
	clear(w.iov)
	w.iov = w.iov[:0]
	w.pos = 0
}

// write is the RawConn callback: it returns false to wait for the socket
// to become writable, true when done or failed.
func (w *vectorWriter) write(fd uintptr) bool {
	for w.pos < len(w.iov) {
		cnt := min(len(w.iov)-w.pos, maxIovecs)
		// A raw call: writev of a non-blocking socket never blocks, and
		// entering the syscall state would wake sysmon (see sockread.go).
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[w.pos])), uintptr(cnt))
		switch e {
		case 0:
			if n == 0 {
				// No progress and no error: never expected from a
				// socket, but looping on it would spin forever.
				w.errno = syscall.EIO
				return true
			}
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if w.noWait {
				w.blocked = true
				return true
			}
			return false
		default:
			w.errno = e
			return true
		}
		w.advance(int(n))
	}
	return true
}

// advance drops n written bytes from the front of the queue.
func (w *vectorWriter) advance(n int) {
	for n > 0 && w.pos < len(w.iov) {
		v := &w.iov[w.pos]
		if uint64(n) < v.Len {
			v.Base = (*byte)(unsafe.Add(unsafe.Pointer(v.Base), n))
			v.Len -= uint64(n)
			return
		}
		n -= int(v.Len)
		w.pos++
	}
}
