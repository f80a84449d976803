package nbd

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// socketReader reads a connection like conn.Read, but makes the read(2)
// itself a raw system call. conn.Read enters the Go scheduler's syscall
// state for every read; the first such entry after all Ps went idle
// wakes the runtime's sysmon thread, which then polls at 20 us for a
// while: on an IO loop that goes idle between requests that cost about
// 10 us of CPU and two context switches per request (doc.go has the
// measurements). A read of a non-blocking socket never blocks, so the
// raw call is safe; waiting for data still goes through the netpoller
// (syscall.RawConn.Read), deadlines and Close included.
//
// Connections without a file descriptor (net.Pipe in tests) use
// conn.Read. A socketReader is not safe for concurrent use.
type socketReader struct {
	conn net.Conn
	raw  syscall.RawConn
	// State of the call in progress, used by readFn.
	p     []byte
	n     int
	errno syscall.Errno
	// readFn is r.read bound once, so RawConn.Read gets the same func
	// value every time instead of a fresh closure.
	readFn func(fd uintptr) bool
}

func newSocketReader(conn net.Conn) *socketReader {
	r := &socketReader{conn: conn}
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			r.raw = raw
		}
	}
	r.readFn = r.read
	return r
}

// Read reads at least one byte into p, or returns io.EOF at the end of
// the stream, or an error.
func (r *socketReader) Read(p []byte) (int, error) {
	if r.raw == nil {
		return r.conn.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.errno = p, 0, 0
	err := r.raw.Read(r.readFn)
	r.p = nil
	if err != nil {
		return 0, err // closed, or past the deadline
	}
	if r.errno != 0 {
		return 0, r.readError()
	}
	if r.n == 0 {
		return 0, io.EOF
	}
	return r.n, nil
}

// readError builds the error conn.Read would return. It is a function
// of its own so the error's heap escape stays off the hot path.
//
//go:noinline
func (r *socketReader) readError() error {
	return &net.OpError{Op: "read", Net: r.conn.LocalAddr().Network(), Source: r.conn.LocalAddr(),
		Addr: r.conn.RemoteAddr(), Err: os.NewSyscallError("read", r.errno)}
}

// read is the RawConn callback: false to wait for the socket to become
// readable, true when done or failed.
func (r *socketReader) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch e {
		case 0:
			r.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			r.errno = e
			return true
		}
	}
}
