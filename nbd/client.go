package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// ErrClosed is returned by calls on a Client after Close.
var ErrClosed = errors.New("nbd: client closed")

// ErrUnknownExport is wrapped by Dial's error when the server has no
// export of the requested name.
var ErrUnknownExport = errors.New("nbd: unknown export")

// OptionError is an error reply to an option during the handshake.
type OptionError struct {
	Option  uint32
	Reply   uint32
	Message string // the server's message, if any
}

func (e *OptionError) Error() string {
	s := fmt.Sprintf("nbd: server refused NBD_OPT_%s with NBD_REP_%s", OptionName(e.Option), ReplyTypeName(e.Reply))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap lets errors.Is(err, ErrUnknownExport) match NBD_REP_ERR_UNKNOWN.
func (e *OptionError) Unwrap() error {
	if e.Reply == RepErrUnknown {
		return ErrUnknownExport
	}
	return nil
}

// Client is the client side of an NBD connection: the fixed-newstyle
// handshake (NBD_OPT_GO, falling back to NBD_OPT_EXPORT_NAME), then
// pipelined transmission. It is safe for concurrent use: calls from many
// goroutines are in flight at once on the one connection, each answered
// as its reply arrives. It satisfies Backend, Discarder and ZeroWriter,
// so an export can be served onwards or used as a test backend.
type Client struct {
	conn net.Conn
	info exportInfo

	wMu sync.Mutex // serialises request writes
	vw  *vectorWriter
	hdr [RequestSize]byte

	mu      sync.Mutex
	pending map[uint64]*call
	cookie  uint64
	err     error // set once the connection is unusable
	closed  bool
	done    chan struct{} // closed when the reply reader exits
	calls   sync.Pool
}

// call is one request waiting for its reply.
type call struct {
	req   Request
	data  []byte // READ destination
	errno uint32
	err   error
	done  chan struct{}
}

// Dial connects to an NBD server ("unix" or "tcp") and opens exportName
// ("" for the default export).
func Dial(ctx context.Context, network, address, exportName string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial: %w", err)
	}
	c, err := NewClient(ctx, conn, exportName)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient runs the handshake on an established connection and returns
// a client that owns it.
func NewClient(ctx context.Context, conn net.Conn, exportName string) (*Client, error) {
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	info, err := clientHandshake(conn, exportName)
	if !stop() {
		return nil, fmt.Errorf("nbd: handshake: %w", ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("nbd: handshake: %w", err)
	}
	conn.SetDeadline(time.Time{})
	c := &Client{
		conn:    conn,
		info:    *info,
		vw:      newVectorWriter(conn),
		pending: make(map[uint64]*call),
		done:    make(chan struct{}),
	}
	c.calls.New = func() any { return &call{done: make(chan struct{}, 1)} }
	go c.readReplies()
	return c, nil
}

func clientHandshake(conn net.Conn, name string) (*exportInfo, error) {
	var hello [18]byte
	if _, err := io.ReadFull(conn, hello[:]); err != nil {
		return nil, fmt.Errorf("reading server greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(hello[0:8]); m != magicNBD {
		return nil, fmt.Errorf("%w: bad server magic %#016x", ErrProtocol, m)
	}
	if m := binary.BigEndian.Uint64(hello[8:16]); m != magicOpt {
		return nil, fmt.Errorf("%w: server does not speak the newstyle handshake (magic %#x)", ErrProtocol, m)
	}
	hflags := binary.BigEndian.Uint16(hello[16:18])
	var cflags uint32
	if hflags&flagFixedNewstyle != 0 {
		cflags |= clientFlagFixedNewstyle
	}
	if hflags&flagNoZeroes != 0 {
		cflags |= clientFlagNoZeroes
	}
	if _, err := conn.Write(binary.BigEndian.AppendUint32(nil, cflags)); err != nil {
		return nil, err
	}
	if hflags&flagFixedNewstyle != 0 {
		info, err := clientGo(conn, name)
		var oe *OptionError
		if !errors.As(err, &oe) || oe.Reply != RepErrUnsup {
			return info, err
		}
		// An old server without NBD_OPT_GO: fall back.
	}
	return clientExportName(conn, name, cflags&clientFlagNoZeroes != 0)
}

func writeOption(conn net.Conn, opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	_, err := conn.Write(append(b, data...))
	return err
}

func clientGo(conn net.Conn, name string) (*exportInfo, error) {
	if err := writeOption(conn, OptGo, encodeInfoRequest(name, []uint16{InfoBlockSize})); err != nil {
		return nil, err
	}
	info := &exportInfo{name: name, minBlock: 1, prefBlock: preferredBlockSize, maxPayload: DefaultMaxPayload}
	haveExport := false
	for {
		var h [optReplyHeader]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return nil, fmt.Errorf("reading option reply: %w", err)
		}
		if m := binary.BigEndian.Uint64(h[0:8]); m != magicOptReply {
			return nil, fmt.Errorf("%w: bad option reply magic %#x", ErrProtocol, m)
		}
		opt := binary.BigEndian.Uint32(h[8:12])
		typ := binary.BigEndian.Uint32(h[12:16])
		n := binary.BigEndian.Uint32(h[16:20])
		if opt != OptGo {
			return nil, fmt.Errorf("%w: reply to option %d while waiting for NBD_OPT_GO", ErrProtocol, opt)
		}
		if n > maxOptionLen {
			return nil, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(conn, data); err != nil {
			return nil, fmt.Errorf("reading option reply: %w", err)
		}
		switch {
		case typ == RepAck:
			if !haveExport {
				return nil, fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return info, nil
		case typ == RepInfo:
			if len(data) < 2 {
				return nil, fmt.Errorf("%w: short NBD_REP_INFO", ErrProtocol)
			}
			switch t := binary.BigEndian.Uint16(data); {
			case t == InfoExport && len(data) == 12:
				info.size = binary.BigEndian.Uint64(data[2:10])
				info.flags = binary.BigEndian.Uint16(data[10:12])
				haveExport = true
			case t == InfoBlockSize && len(data) == 14:
				info.minBlock = binary.BigEndian.Uint32(data[2:6])
				info.prefBlock = binary.BigEndian.Uint32(data[6:10])
				info.maxPayload = binary.BigEndian.Uint32(data[10:14])
			case t == InfoExport || t == InfoBlockSize:
				return nil, fmt.Errorf("%w: NBD_REP_INFO type %d with %d bytes", ErrProtocol, t, len(data))
			}
			// Other information types are ignored, as proto.md requires.
		case typ&repErrBit != 0:
			return nil, &OptionError{Option: OptGo, Reply: typ, Message: string(data)}
		default:
			return nil, fmt.Errorf("%w: unexpected reply %s to NBD_OPT_GO", ErrProtocol, ReplyTypeName(typ))
		}
	}
}

func clientExportName(conn net.Conn, name string, noZeroes bool) (*exportInfo, error) {
	if err := writeOption(conn, OptExportName, []byte(name)); err != nil {
		return nil, err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(conn, b); err != nil {
		// The server closes the connection for an unknown export.
		return nil, fmt.Errorf("%w %q (server closed the connection after NBD_OPT_EXPORT_NAME): %v", ErrUnknownExport, name, err)
	}
	return &exportInfo{
		name:       name,
		size:       binary.BigEndian.Uint64(b[0:8]),
		flags:      binary.BigEndian.Uint16(b[8:10]),
		minBlock:   1,
		prefBlock:  preferredBlockSize,
		maxPayload: DefaultMaxPayload,
	}, nil
}

// Size is the export size the server announced.
func (c *Client) Size() int64 { return int64(c.info.size) }

// Flags are the transmission flags the server announced (FlagReadOnly, ...).
func (c *Client) Flags() uint16 { return c.info.flags }

// BlockSizes are the server's minimum and preferred block sizes and
// maximum payload (the defaults when it did not say).
func (c *Client) BlockSizes() (minimum, preferred, maxPayload uint32) {
	return c.info.minBlock, c.info.prefBlock, c.info.maxPayload
}

// chunk is the largest READ or WRITE sent in one request.
func (c *Client) chunk() int {
	m := c.info.maxPayload
	if m == 0 || m > DefaultMaxPayload {
		m = DefaultMaxPayload
	}
	return int(m &^ (c.info.minBlock - 1))
}

// ReadAt reads len(p) bytes at off, in requests of at most the server's
// maximum payload. Reading past the end returns io.EOF, as io.ReaderAt
// says.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	var eof error
	if size := c.Size(); off >= size {
		return 0, io.EOF
	} else if int64(len(p)) > size-off {
		p, eof = p[:size-off], io.EOF
	}
	n := 0
	for n < len(p) {
		k := min(len(p)-n, c.chunk())
		if err := c.do(CmdRead, 0, uint64(off)+uint64(n), uint32(k), p[n:n+k], nil); err != nil {
			return n, err
		}
		n += k
	}
	return n, eof
}

// WriteAt writes p at off, in requests of at most the server's maximum
// payload.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	return c.write(p, off, 0)
}

// WriteAtFUA writes p at off with NBD_CMD_FLAG_FUA: it returns once
// the data is durable.
func (c *Client) WriteAtFUA(p []byte, off int64) (int, error) {
	return c.write(p, off, CmdFlagFUA)
}

func (c *Client) write(p []byte, off int64, flags uint16) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	n := 0
	for n < len(p) {
		k := min(len(p)-n, c.chunk())
		if err := c.do(CmdWrite, flags, uint64(off)+uint64(n), uint32(k), nil, p[n:n+k]); err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// Flush asks the server to make every completed write durable.
func (c *Client) Flush() error {
	if c.info.flags&FlagSendFlush == 0 {
		return nil // the server has no volatile cache to flush
	}
	return c.do(CmdFlush, 0, 0, 0, nil, nil)
}

// maxEffectLength is the largest TRIM or WRITE_ZEROES length sent in one
// request: the 32-bit length field, kept block aligned.
func (c *Client) maxEffectLength() int64 {
	return int64(^uint32(0) &^ (max(c.info.minBlock, preferredBlockSize) - 1))
}

// Discard sends NBD_CMD_TRIM; it fails with ENOTSUP when the server did
// not advertise trim.
func (c *Client) Discard(off, length int64) error {
	if c.info.flags&FlagSendTrim == 0 {
		return fmt.Errorf("nbd: server does not support TRIM: %w", syscall.ENOTSUP)
	}
	return c.ranged(CmdTrim, 0, off, length)
}

// WriteZeroes sends NBD_CMD_WRITE_ZEROES (NO_HOLE unless mayUnmap), or
// writes zero buffers when the server does not support it.
func (c *Client) WriteZeroes(off, length int64, mayUnmap bool) error {
	if c.info.flags&FlagSendWriteZeroes == 0 {
		return writeZeroes(c, off, length)
	}
	var flags uint16
	if !mayUnmap {
		flags = CmdFlagNoHole
	}
	return c.ranged(CmdWriteZeroes, flags, off, length)
}

func (c *Client) ranged(cmd, flags uint16, off, length int64) error {
	if off < 0 || length < 0 {
		return syscall.EINVAL
	}
	for length > 0 {
		k := min(length, c.maxEffectLength())
		if err := c.do(cmd, flags, uint64(off), uint32(k), nil, nil); err != nil {
			return err
		}
		off += k
		length -= k
	}
	return nil
}

// do sends one request and waits for its reply. dst receives READ data;
// payload is WRITE data.
func (c *Client) do(cmd, flags uint16, off uint64, length uint32, dst, payload []byte) error {
	cl := c.calls.Get().(*call)
	cl.req = Request{Flags: flags, Type: cmd, Offset: off, Length: length}
	cl.data, cl.errno, cl.err = dst, 0, nil

	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		c.calls.Put(cl)
		return err
	}
	c.cookie++
	cl.req.Cookie = c.cookie
	c.pending[cl.req.Cookie] = cl
	c.mu.Unlock()

	c.wMu.Lock()
	cl.req.Encode(c.hdr[:])
	c.vw.add(c.hdr[:])
	c.vw.add(payload)
	err := c.vw.flush()
	c.wMu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("nbd: connection lost: %w", err))
	}

	<-cl.done
	err = cl.err
	if err == nil && cl.errno != 0 {
		err = &ReplyError{Command: cmd, Offset: off, Length: length, Errno: syscall.Errno(cl.errno)}
	}
	cl.data = nil
	c.calls.Put(cl)
	return err
}

// readReplies matches replies to pending calls until the connection ends.
func (c *Client) readReplies() {
	defer close(c.done)
	var h [SimpleReplySize]byte
	for {
		if _, err := io.ReadFull(c.conn, h[:]); err != nil {
			c.fail(fmt.Errorf("nbd: connection lost: %w", err))
			return
		}
		var rep SimpleReply
		if err := DecodeSimpleReply(h[:], &rep); err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		cl := c.pending[rep.Cookie]
		delete(c.pending, rep.Cookie)
		c.mu.Unlock()
		if cl == nil {
			c.fail(fmt.Errorf("%w: reply for unknown cookie %d", ErrProtocol, rep.Cookie))
			return
		}
		cl.errno = rep.Errno
		if cl.req.Type == CmdRead && rep.Errno == 0 {
			// The call is no longer pending, so fail cannot complete it
			// while its buffer is being filled: this goroutine does.
			if _, err := io.ReadFull(c.conn, cl.data); err != nil {
				err = fmt.Errorf("nbd: connection lost: %w", err)
				cl.err = err
				cl.done <- struct{}{}
				c.fail(err)
				return
			}
		}
		cl.done <- struct{}{}
	}
}

// fail makes the connection unusable: every pending and later call
// returns err.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	for k, cl := range c.pending {
		delete(c.pending, k)
		cl.err = c.err
		cl.done <- struct{}{}
	}
	c.mu.Unlock()
	c.conn.Close()
}

// Close sends NBD_CMD_DISC, waits briefly for the server to answer the
// calls still in flight and close its side, and closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	broken := c.err != nil
	if !broken {
		// Calls from now on fail; those in flight still get their replies.
		c.err = ErrClosed
	}
	c.mu.Unlock()
	if !broken {
		c.wMu.Lock()
		disc := Request{Type: CmdDisc}
		disc.Encode(c.hdr[:])
		_, err := c.conn.Write(c.hdr[:])
		c.wMu.Unlock()
		if err == nil {
			select {
			case <-c.done:
			case <-time.After(5 * time.Second):
			}
		}
	}
	c.fail(ErrClosed)
	<-c.done
	return nil
}
