package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// TransmissionOptions configure the IO loop of one connection. The zero
// value is a sane default.
type TransmissionOptions struct {
	// ReadOnly refuses WRITE, TRIM and WRITE_ZEROES with EPERM and
	// advertises NBD_FLAG_READ_ONLY.
	ReadOnly bool
	// QueueDepth is the most requests served at once on the connection;
	// further requests wait in the socket. 0 means DefaultQueueDepth.
	QueueDepth int
	// Logger receives connection-level events (protocol violations,
	// write failures). nil means slog.Default().
	Logger *slog.Logger
	// BlockSize is the minimum block size: offsets and lengths of READ,
	// WRITE, TRIM, WRITE_ZEROES and CACHE must be multiples of it or get
	// EINVAL. A power of two up to 64 KiB; 0 means 1 (no constraint).
	// The handshake advertises it in NBD_INFO_BLOCK_SIZE.
	BlockSize uint32
	// MaxPayload is the largest READ or WRITE length accepted; longer
	// ones get EINVAL (a WRITE's payload is read and dropped so the stream
	// stays in sync). 0 means DefaultMaxPayload (32 MiB).
	MaxPayload uint32
	// MaxInFlightBytes bounds the payload memory held by requests in
	// flight; a request that would exceed it waits for others to finish
	// (one request is always admitted). 0 means DefaultMaxInFlightBytes.
	MaxInFlightBytes int64
	// RequestTimeout, when positive, answers a request the backend has
	// not finished in this time with EIO; the connection goes on, and
	// the backend's late result is dropped when it comes. The slot (and
	// its buffer, which the backend may still use) is held until then.
	RequestTimeout time.Duration
	// ReadDone, when set, is called once, on the reading goroutine, as
	// soon as the loop stops reading: disc tells whether the client sent
	// NBD_CMD_DISC. It runs before the requests still in flight are
	// waited for, so the kernel path can replace a connection the
	// kernel gave up on without waiting for a slow backend.
	ReadDone func(disc bool)
	// Observer, when set, is told of every request started and answered
	// (for metrics); nil costs nothing.
	Observer Observer

	// budget, set by Server, is shared by every connection it serves.
	budget *byteBudget
	// structured and baseAllocation, set by Server from the handshake:
	// the client negotiated structured replies (READs are then answered
	// with chunks) and the base:allocation meta context (BLOCK_STATUS is
	// served).
	structured     bool
	baseAllocation bool
}

// Defaults of TransmissionOptions.
const (
	// DefaultQueueDepth: enough to keep a network backend busy; the
	// kernel's NBD driver issues up to 128 per connection.
	DefaultQueueDepth       = 64
	DefaultMaxInFlightBytes = 64 << 20
	readBufferSize          = 128 << 10
	// maxDeferredReplies bounds the replies an inline session holds back
	// while it serves the rest of what one read brought in. Holding all
	// of them makes the client wait for the whole batch and then refill
	// its queue while the server sits idle: the two take turns instead
	// of overlapping. fio's nbd engine, 4k qd16 on mem:512M, 2 CPUs
	// (IOPS, two runs each): randwrite 150k unbounded, 224k at 2, 231k
	// at 4, 218k at 8; randread 300k unbounded, 229k at 1, 314k at 4,
	// 330k at 8.
	maxDeferredReplies = 4
	// drainTimeout bounds how long replies may wait for a client that
	// stopped reading once the context is cancelled.
	drainTimeout = 30 * time.Second
	// replyHeadroom is the room in front of a request's payload for its
	// reply header: a simple reply (16 bytes) or a structured READ chunk
	// (20-byte header and 8-byte offset), so either goes out with its
	// data as one iovec. 32 keeps the payload 16-byte aligned.
	replyHeadroom = 32
	// maxStatusExtents bounds the allocated extents one BLOCK_STATUS
	// asks the backend for, and so the reply (two descriptors per
	// extent at most, and a trailing hole); the client asks again from
	// where the reply ends.
	maxStatusExtents   = 512
	blockStatusPayload = 4 + 8*(2*maxStatusExtents+1)
)

func (o TransmissionOptions) withDefaults() (TransmissionOptions, error) {
	if o.QueueDepth <= 0 {
		o.QueueDepth = DefaultQueueDepth
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.BlockSize == 0 {
		o.BlockSize = 1
	}
	if o.BlockSize&(o.BlockSize-1) != 0 || o.BlockSize > 64<<10 {
		return o, fmt.Errorf("nbd: block size %d is not a power of two up to 65536", o.BlockSize)
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.MaxPayload < o.BlockSize {
		return o, fmt.Errorf("nbd: max payload %d is smaller than the block size %d", o.MaxPayload, o.BlockSize)
	}
	if o.MaxInFlightBytes <= 0 {
		o.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	return o, nil
}

// ServerFlags returns the transmission flags (NBD_FLAG_*) a server
// advertises for b under opts: flush and FUA always, trim when b is a
// Discarder, write-zeroes (with NO_HOLE) always since the loop can write
// zero buffers itself, both only when writable; multiConn sets
// NBD_FLAG_CAN_MULTI_CONN, which is right only when every connection
// serves the same Backend value, so a flush on one covers writes made on
// the others.
func ServerFlags(b Backend, opts TransmissionOptions, multiConn bool) uint64 {
	f := FlagHasFlags | FlagSendFlush | FlagSendFUA
	if opts.ReadOnly {
		f |= FlagReadOnly
	} else {
		if _, ok := b.(Discarder); ok {
			f |= FlagSendTrim
		}
		f |= FlagSendWriteZeroes
	}
	if multiConn {
		f |= FlagCanMultiConn
	}
	return uint64(f)
}

// ServeTransmission serves the transmission phase (no handshake) on an
// established connection, as the kernel needs after a netlink CONNECT.
// It returns after NBD_CMD_DISC, EOF or ctx cancellation, with every
// request in flight served and replied, and closes conn.
//
// It returns nil after DISC or a clean EOF, ctx.Err() after cancellation,
// an error wrapping ErrProtocol when the client breaks the protocol (bad
// magic, truncated request), and the socket error otherwise.
//
// Requests are read by the calling goroutine and served either on it (a
// NonBlocking backend) or concurrently by up to opts.QueueDepth worker
// goroutines, answered out of order; each reply (header and data) goes
// out whole in one vectored write, several replies per write under load. Invalid requests (out of range,
// misaligned, unknown command or flag, oversized) get an error reply and
// the connection goes on.
func ServeTransmission(ctx context.Context, conn net.Conn, b Backend, opts TransmissionOptions) error {
	opts, err := opts.withDefaults()
	if err != nil {
		conn.Close()
		return err
	}
	s := newSession(conn, b, opts)
	s.ctx = ctx
	// Cancellation interrupts the blocking read; the loop then drains.
	// A client that stopped reading replies gets drainTimeout to take
	// them before the writes fail, so the drain cannot hang on it.
	stop := context.AfterFunc(ctx, func() {
		conn.SetReadDeadline(time.Unix(1, 0))
		conn.SetWriteDeadline(time.Now().Add(drainTimeout))
	})
	var stopTimer func()
	if opts.RequestTimeout > 0 {
		stopTimer = s.startRequestTimer()
	}
	err = s.readLoop()
	stop()
	if opts.ReadDone != nil {
		opts.ReadDone(s.disc)
	}
	s.flushDeferred()
	s.drain()
	if stopTimer != nil {
		stopTimer()
	}
	if werr := s.writeErr(); werr != nil && (err == nil || errors.Is(err, os.ErrDeadlineExceeded)) {
		// The reader was stopped because a reply could not be written.
		err = werr
	} else if ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = ctx.Err()
	}
	conn.Close()
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("nbd: connection closed", "reason", err)
	}
	return err
}

// request is one slot of the connection's queue: a request in flight
// with its reply buffer. buf holds the reply header in its first
// replyHeadroom bytes (right-aligned: it starts at head) and the payload
// (read data, write data as received, block descriptors) after it.
type request struct {
	hdr   Request
	errno uint32
	buf   []byte
	bufp  *[]byte // buf's pool handle when it came from payloadBuffers
	head  int     // where the reply starts in buf
	send  int     // where the reply ends in buf
	dlen  int     // payload bytes of a BLOCK_STATUS reply
	bytes int64   // payload bytes counted against MaxInFlightBytes
	tag   uint64  // index in session.slots: the AsyncBackend tag
	// fua is the stage of an asynchronous FUA write: writing, then
	// flushing (fuaNone for everything else).
	fua uint8
	// With TransmissionOptions.RequestTimeout: state (reqIdle,
	// reqRunning, reqTimedOut) decides whether the backend's result or
	// the timer answers, and started is when the backend got r.
	state   atomic.Uint32
	started atomic.Int64 // UnixNano
	// orphan marks a reply that owns no slot: the timer's error reply
	// for a request whose slot the backend still holds.
	orphan bool
	// begun is when the request was read (monotonic), for Observer.
	begun time.Duration
}

const (
	reqIdle = iota
	reqRunning
	reqTimedOut
)

const (
	fuaNone = iota
	fuaWriting
	fuaFlushing
)

type session struct {
	ctx  context.Context
	conn net.Conn
	b    Backend
	// disc: the loop ended on NBD_CMD_DISC (set by the reader).
	disc  bool
	trim  Discarder
	zw    ZeroWriter
	fua   FUAWriter
	async AsyncBackend
	ext   Extenter
	obs   Observer
	opts  TransmissionOptions
	log   *slog.Logger
	align uint64 // BlockSize-1

	// Read side, owned by the reading goroutine.
	rd         *socketReader
	rbuf       []byte
	rpos, rend int
	workers    int
	// inline serves requests on the reading goroutine instead of
	// handing them to workers, and defers their replies until the reader
	// is about to wait for input (deferred counts them), so one writev
	// answers everything one read brought in.
	inline   bool
	deferred int

	// Request slots: all of them (indexed by tag), free ones, and
	// payload bytes of those in use.
	slots    []*request
	slotMu   sync.Mutex
	slotFree sync.Cond // signalled when a slot or bytes come back
	free     []*request
	out      int
	outBytes int64
	work     chan *request
	idle     atomic.Int32 // workers not reserved by a dispatched request
	workerWG sync.WaitGroup

	// Write side: replies are queued and written by whichever goroutine
	// finds the writer free (flat combining), so under load one writev
	// carries several replies and no goroutine is dedicated to writing.
	wMu     sync.Mutex
	queue   []*request
	writing bool
	batch   []*request // owned by the current writer
	vw      *vectorWriter
	werr    atomic.Pointer[error]
}

func newSession(conn net.Conn, b Backend, opts TransmissionOptions) *session {
	s := &session{
		conn:  conn,
		b:     b,
		opts:  opts,
		log:   opts.Logger,
		align: uint64(opts.BlockSize) - 1,
		rd:    newSocketReader(conn),
		rbuf:  make([]byte, readBufferSize),
		free:  make([]*request, opts.QueueDepth),
		work:  make(chan *request, opts.QueueDepth),
		queue: make([]*request, 0, opts.QueueDepth),
		batch: make([]*request, 0, opts.QueueDepth),
		vw:    newVectorWriter(conn),
	}
	if nb, ok := b.(NonBlocking); ok {
		s.inline = nb.NonBlocking()
	}
	s.trim, _ = b.(Discarder)
	s.zw, _ = b.(ZeroWriter)
	s.fua, _ = b.(FUAWriter)
	s.async, _ = b.(AsyncBackend)
	s.ext, _ = b.(Extenter)
	s.obs = opts.Observer
	s.slotFree.L = &s.slotMu
	s.slots = make([]*request, opts.QueueDepth)
	for i := range s.free {
		s.slots[i] = &request{tag: uint64(i)}
		s.free[i] = s.slots[i]
	}
	return s
}

// readLoop reads and dispatches requests until DISC (nil), EOF at a
// request boundary (nil), or an error.
func (s *session) readLoop() error {
	for {
		if err := s.fill(RequestSize); err != nil {
			if err == io.EOF {
				return nil
			}
			if err == io.ErrUnexpectedEOF {
				return fmt.Errorf("%w: connection closed inside a request header", ErrProtocol)
			}
			return err
		}
		var h Request
		if err := DecodeRequest(s.rbuf[s.rpos:s.rend], &h); err != nil {
			return err
		}
		s.rpos += RequestSize
		if h.Type == CmdDisc {
			s.disc = true
			return nil
		}
		var begun time.Duration
		if s.obs != nil {
			begun = monotonic()
			s.obs.RequestStarted(h.Type)
		}
		errno := s.check(&h)
		var payload, replyData uint32
		if h.Type == CmdWrite {
			payload = h.Length
		}
		if errno == 0 {
			switch h.Type {
			case CmdRead:
				replyData = h.Length
			case CmdBlockStatus:
				replyData = blockStatusPayload
			case CmdWrite:
				if s.inline && int(payload) <= len(s.rbuf) {
					// Served now, straight from the read buffer: no
					// copy into a slot (WriteAt must not retain p).
					// A payload that is not all in yet is awaited
					// there too: the read that brings its rest brings
					// the requests behind it, where reading the rest
					// into a slot would take a read of its own.
					if err := s.fill(int(payload)); err != nil {
						return payloadError(err, payload)
					}
					r := s.acquire(0)
					r.hdr, r.begun = h, begun
					s.serve(r, s.rbuf[s.rpos:s.rpos+int(payload)])
					s.rpos += int(payload)
					s.finishInline(r)
					continue
				}
				replyData = h.Length // received into the slot buffer
			}
		}
		r := s.acquire(int(replyData))
		r.hdr, r.errno, r.begun = h, errno, begun
		if payload > 0 {
			var err error
			if errno == 0 {
				err = s.readFull(r.buf[replyHeadroom : replyHeadroom+int(payload)])
			} else {
				err = s.skip(int64(payload))
			}
			if err != nil {
				s.release(r)
				return payloadError(err, payload)
			}
		}
		if errno != 0 {
			s.finish(r, true)
			continue
		}
		if s.inline {
			s.serve(r, r.buf[replyHeadroom:])
			s.finishInline(r)
			continue
		}
		s.running(r)
		if s.async != nil && s.start(r) {
			continue
		}
		s.dispatch(r)
	}
}

// payloadError is the error that ends the loop when reading the n-byte
// payload of a WRITE failed: a protocol violation if the stream ended.
func payloadError(err error, n uint32) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: connection closed inside the %d-byte payload of a WRITE", ErrProtocol, n)
	}
	return err
}

// check validates a request against the export; it returns the errno
// of the error reply, or 0.
func (s *session) check(h *Request) uint32 {
	var allowed uint16
	switch h.Type {
	case CmdRead, CmdFlush, CmdCache:
		allowed = CmdFlagFUA
	case CmdWrite:
		allowed = CmdFlagFUA
		if s.opts.ReadOnly {
			return EPERM
		}
	case CmdTrim:
		allowed = CmdFlagFUA
		if s.opts.ReadOnly {
			return EPERM
		}
		if s.trim == nil {
			return EINVAL // NBD_FLAG_SEND_TRIM was not advertised
		}
	case CmdWriteZeroes:
		allowed = CmdFlagFUA | CmdFlagNoHole
		if s.opts.ReadOnly {
			return EPERM
		}
	case CmdBlockStatus:
		allowed = CmdFlagReqOne
		if !s.opts.baseAllocation || h.Length == 0 {
			return EINVAL // no meta context was negotiated
		}
	default:
		return EINVAL
	}
	if h.Flags&^allowed != 0 {
		return EINVAL
	}
	if h.Type == CmdFlush {
		return 0 // offset and length are reserved
	}
	if (h.Type == CmdRead || h.Type == CmdWrite) && h.Length > s.opts.MaxPayload {
		return EINVAL
	}
	if (h.Offset|uint64(h.Length))&s.align != 0 {
		return EINVAL
	}
	size := uint64(max(s.b.Size(), 0))
	if h.Offset > size || uint64(h.Length) > size-h.Offset {
		if h.Type == CmdWrite || h.Type == CmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	}
	return 0
}

// fill makes sure n bytes are buffered at rbuf[rpos:], reading more as
// needed. It returns io.EOF if the stream ended with nothing buffered,
// io.ErrUnexpectedEOF if it ended in the middle.
func (s *session) fill(n int) error {
	if s.rend-s.rpos >= n {
		return nil
	}
	if s.rpos > 0 {
		s.rend = copy(s.rbuf, s.rbuf[s.rpos:s.rend])
		s.rpos = 0
	}
	for s.rend < n {
		s.flushDeferred()
		k, err := s.rd.Read(s.rbuf[s.rend:])
		s.rend += k
		if err != nil {
			if s.rend >= n {
				return nil
			}
			if err == io.EOF && s.rend > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// readFull fills p from the buffer first, then straight from the
// connection, so large payloads are not copied twice.
func (s *session) readFull(p []byte) error {
	k := copy(p, s.rbuf[s.rpos:s.rend])
	s.rpos += k
	if k == len(p) {
		return nil
	}
	s.flushDeferred()
	_, err := io.ReadFull(s.rd, p[k:])
	return err
}

// skip drops n payload bytes of a refused WRITE.
func (s *session) skip(n int64) error {
	for n > 0 {
		if s.rpos == s.rend {
			s.flushDeferred()
			s.rpos, s.rend = 0, 0
			k, err := s.rd.Read(s.rbuf)
			s.rend = k
			if err != nil && k == 0 {
				if err == io.EOF {
					return io.ErrUnexpectedEOF
				}
				return err
			}
		}
		k := min(n, int64(s.rend-s.rpos))
		s.rpos += int(k)
		n -= k
	}
	return nil
}

// acquire takes a free slot with room for n payload bytes, waiting while
// QueueDepth requests or MaxInFlightBytes are in flight, and then for
// the server's budget of bytes across connections.
func (s *session) acquire(n int) *request {
	s.slotMu.Lock()
	for len(s.free) == 0 || (s.outBytes > 0 && s.outBytes+int64(n) > s.opts.MaxInFlightBytes) {
		if s.deferred > 0 {
			// The slots may be held by our own deferred replies.
			s.slotMu.Unlock()
			s.flushDeferred()
			s.slotMu.Lock()
			continue
		}
		s.slotFree.Wait()
	}
	r := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	s.out++
	floor := s.outBytes == 0 && n <= slotKeepPayload
	s.outBytes += int64(n)
	s.slotMu.Unlock()
	r.bytes = int64(n)
	if b := s.opts.budget; b != nil && n > 0 && !b.tryTake(int64(n), floor) {
		// Our own deferred replies may hold part of the budget.
		s.flushDeferred()
		b.take(int64(n), floor)
	}
	if cap(r.buf) < replyHeadroom+n {
		if r.bufp != nil {
			payloadBuffers.put(r.bufp)
		}
		r.bufp = payloadBuffers.get(n)
		r.buf = *r.bufp
	}
	r.buf = r.buf[:replyHeadroom+n]
	return r
}

// release returns a slot once its reply is written (or dropped).
func (s *session) release(r *request) {
	if cap(r.buf) > replyHeadroom+slotKeepPayload {
		payloadBuffers.put(r.bufp)
		r.buf, r.bufp = nil, nil
	}
	if b := s.opts.budget; b != nil && r.bytes > 0 {
		b.give(r.bytes)
	}
	s.slotMu.Lock()
	s.free = append(s.free, r)
	s.out--
	s.outBytes -= r.bytes
	s.slotMu.Unlock()
	s.slotFree.Signal()
}

// dispatch hands r to a worker, starting one when none is idle. Workers
// are started lazily up to QueueDepth and live as long as the session.
func (s *session) dispatch(r *request) {
	if s.idle.Add(-1) < 0 && s.workers < s.opts.QueueDepth {
		s.workers++
		s.idle.Add(1)
		s.workerWG.Add(1)
		go s.worker()
	}
	s.work <- r
}

func (s *session) worker() {
	defer s.workerWG.Done()
	for r := range s.work {
		s.serve(r, r.buf[replyHeadroom:])
		if s.answered(r) {
			s.finish(r, false)
		}
		s.idle.Add(1)
	}
}

// start hands r to the AsyncBackend, if it takes r's command: READ,
// WRITE (FUA as a write and then a flush, unless a FUAWriter does both)
// and FLUSH. The reply is queued by Complete.
func (s *session) start(r *request) bool {
	h := &r.hdr
	switch h.Type {
	case CmdRead:
		s.async.StartReadAt(r.buf[replyHeadroom:], int64(h.Offset), s, r.tag)
	case CmdWrite:
		fua := h.Flags&CmdFlagFUA != 0
		if fua && s.fua != nil {
			return false
		}
		r.fua = fuaNone
		if fua {
			r.fua = fuaWriting
		}
		s.async.StartWriteAt(r.buf[replyHeadroom:], int64(h.Offset), s, r.tag)
	case CmdFlush:
		s.async.StartFlush(s, r.tag)
	default:
		return false
	}
	return true
}

// Complete implements Completer for the requests start hands to the
// AsyncBackend: it records the outcome and queues the reply, which
// FlushCompletions (or any writer active meanwhile) writes.
func (s *session) Complete(tag uint64, n int, err error) {
	r := s.slots[tag]
	h := &r.hdr
	switch h.Type {
	case CmdRead:
		if n == int(h.Length) {
			err = nil // io.ReaderAt may report EOF with a full read at the end
		} else if err == nil {
			err = io.ErrUnexpectedEOF
		}
	case CmdWrite:
		if r.fua == fuaFlushing {
			break // the flush after a FUA write: err is the outcome
		}
		if err == nil && n != int(h.Length) {
			err = io.ErrShortWrite
		}
		if err == nil && r.fua == fuaWriting {
			r.fua = fuaFlushing
			s.async.StartFlush(s, tag)
			return
		}
	}
	if !s.answered(r) {
		return // the timer replied; the slot is free again
	}
	r.errno = Errno(err)
	if err != nil {
		s.log.Debug("nbd: request failed", "cmd", CommandName(h.Type), "offset", h.Offset, "length", h.Length, "err", err)
	}
	s.encodeReply(r)
	s.wMu.Lock()
	s.queue = append(s.queue, r)
	s.wMu.Unlock()
}

// FlushCompletions implements Completer: it writes the replies queued
// by a run of Complete calls, unless another goroutine is writing (that
// one takes them along). It never waits for the socket: it is called on
// the backend's completion goroutine, which every connection of the
// backend shares, so a client that stops reading would stall them all.
// What the socket does not take at once is left to a goroutine of this
// connection (finishWriting).
func (s *session) FlushCompletions() {
	s.wMu.Lock()
	if s.writing || len(s.queue) == 0 {
		s.wMu.Unlock()
		return
	}
	s.writing = true
	for len(s.queue) > 0 {
		s.queue, s.batch = s.batch[:0], s.queue
		s.wMu.Unlock()
		if !s.tryWriteBatch() {
			go s.finishWriting()
			return
		}
		s.wMu.Lock()
	}
	s.writing = false
	s.wMu.Unlock()
}

// tryWriteBatch writes s.batch without waiting for the socket. It
// returns true when the batch is done with (its slots released), false
// when part of it is still to write.
func (s *session) tryWriteBatch() bool {
	if s.werr.Load() == nil {
		for _, r := range s.batch {
			s.vw.add(r.buf[r.head:r.send])
		}
		done, err := s.vw.tryFlush()
		if !done {
			return false
		}
		if err != nil {
			s.writeFailed(err)
		}
	}
	s.releaseBatch()
	return true
}

// finishWriting writes the rest of the batch tryWriteBatch began,
// waiting for the socket as long as needed (or until a write deadline),
// and then stays the writer while replies are queued.
func (s *session) finishWriting() {
	if err := s.vw.flush(); err != nil {
		s.writeFailed(err)
	}
	s.releaseBatch()
	s.wMu.Lock()
	s.writeQueue()
}

// serve runs r against the backend and records the outcome in r. data
// is where a READ's data goes, or a WRITE's payload.
func (s *session) serve(r *request, data []byte) {
	h := &r.hdr
	off := int64(h.Offset)
	var err error
	fuaDone := false // the write itself was durable
	switch h.Type {
	case CmdRead:
		var n int
		n, err = s.b.ReadAt(data, off)
		if n == len(data) {
			err = nil // io.ReaderAt may report EOF with a full read at the end
		} else if err == nil {
			err = io.ErrUnexpectedEOF
		}
	case CmdWrite:
		var n int
		if h.Flags&CmdFlagFUA != 0 && s.fua != nil {
			n, err = s.fua.WriteAtFUA(data, off)
			fuaDone = true
		} else {
			n, err = s.b.WriteAt(data, off)
		}
		if err == nil && n != len(data) {
			err = io.ErrShortWrite
		}
	case CmdFlush:
		err = s.b.Flush()
	case CmdTrim:
		err = s.trim.Discard(off, int64(h.Length))
	case CmdWriteZeroes:
		if s.zw != nil {
			err = s.zw.WriteZeroes(off, int64(h.Length), h.Flags&CmdFlagNoHole == 0)
		} else {
			err = writeZeroes(s.b, off, int64(h.Length))
		}
	case CmdCache:
		// A hint with no required effect.
	case CmdBlockStatus:
		err = s.blockStatus(r, data)
	}
	if err == nil && !fuaDone && h.Flags&CmdFlagFUA != 0 && h.Type != CmdRead && h.Type != CmdFlush && h.Type != CmdCache {
		err = s.b.Flush()
	}
	r.errno = Errno(err)
	if err != nil {
		s.log.Debug("nbd: request failed", "cmd", CommandName(h.Type), "offset", h.Offset, "length", h.Length, "err", err)
	}
}

// finish builds r's reply and queues it. The goroutine that finds the
// writer idle becomes the writer and writes every queued reply until the
// queue is empty, several per writev when replies pile up meanwhile.
// The reader passes deferred: it leaves the writing to flushDeferred,
// called before it next waits for input.
func (s *session) finish(r *request, deferred bool) {
	s.encodeReply(r)
	s.wMu.Lock()
	s.queue = append(s.queue, r)
	if deferred {
		s.deferred++
	}
	if s.writing || deferred {
		s.wMu.Unlock()
		return
	}
	s.writeQueue()
}

// finishInline queues the reply of a request served on the reading
// goroutine and writes the replies deferred so far once there are
// maxDeferredReplies of them.
func (s *session) finishInline(r *request) {
	s.finish(r, true)
	if s.deferred >= maxDeferredReplies {
		s.flushDeferred()
	}
}

// encodeReply puts r's reply header in front of its data.
// Every reply passes here exactly once, so the Observer hears of it here.
func (s *session) encodeReply(r *request) {
	if s.obs != nil {
		s.obs.RequestDone(r.hdr.Type, r.hdr.Length, r.errno, monotonic()-r.begun)
	}
	if s.opts.structured && (r.hdr.Type == CmdRead || r.hdr.Type == CmdBlockStatus) {
		s.encodeChunk(r)
		return
	}
	r.head = replyHeadroom - SimpleReplySize
	reply := SimpleReply{Errno: r.errno, Cookie: r.hdr.Cookie}
	reply.Encode(r.buf[r.head:replyHeadroom])
	r.send = replyHeadroom
	if r.errno == 0 && r.hdr.Type == CmdRead {
		r.send += int(r.hdr.Length)
	}
}

// flushDeferred writes the replies the reader deferred (and any others
// queued), unless another goroutine is writing: that one will.
func (s *session) flushDeferred() {
	if s.deferred == 0 {
		return
	}
	s.deferred = 0
	s.wMu.Lock()
	if s.writing {
		s.wMu.Unlock()
		return
	}
	s.writeQueue()
}

// writeQueue writes queued replies until the queue is empty. It is
// called with wMu held and returns with it released.
func (s *session) writeQueue() {
	s.writing = true
	for len(s.queue) > 0 {
		s.queue, s.batch = s.batch[:0], s.queue
		s.wMu.Unlock()
		s.writeBatch()
		s.wMu.Lock()
	}
	s.writing = false
	s.wMu.Unlock()
}

// writeBatch writes the replies in s.batch and releases their slots.
func (s *session) writeBatch() {
	if s.werr.Load() == nil {
		for _, r := range s.batch {
			s.vw.add(r.buf[r.head:r.send])
		}
		if err := s.vw.flush(); err != nil {
			s.writeFailed(err)
		}
	}
	s.releaseBatch()
}

// releaseBatch releases the slots of the replies in s.batch.
func (s *session) releaseBatch() {
	for i, r := range s.batch {
		s.batch[i] = nil
		if !r.orphan {
			s.release(r)
		}
	}
	s.batch = s.batch[:0]
}

// writeFailed records the first reply write error and stops the reader:
// the stream is broken, and the loop drains. It is a function of its own
// so the error's heap escape stays off the writer's hot path.
//
//go:noinline
func (s *session) writeFailed(err error) {
	err = fmt.Errorf("nbd: write reply: %w", err)
	if s.werr.CompareAndSwap(nil, &err) {
		s.conn.SetReadDeadline(time.Unix(1, 0))
	}
}

func (s *session) writeErr() error {
	if p := s.werr.Load(); p != nil {
		return *p
	}
	return nil
}

// drain waits for every request in flight to be replied, then stops
// the workers.
func (s *session) drain() {
	s.slotMu.Lock()
	for s.out > 0 {
		s.slotFree.Wait()
	}
	s.slotMu.Unlock()
	close(s.work)
	s.workerWG.Wait()
}

// running marks r as handed to the backend, for the request timer.
func (s *session) running(r *request) {
	if s.opts.RequestTimeout > 0 {
		r.started.Store(time.Now().UnixNano())
		r.state.Store(reqRunning)
	}
}

// answered reports whether the backend's outcome for r is to be
// replied; false when the timer already answered r, in which case r's
// slot is released here, the backend being done with its buffer.
func (s *session) answered(r *request) bool {
	if s.opts.RequestTimeout <= 0 || r.state.CompareAndSwap(reqRunning, reqIdle) {
		return true
	}
	r.state.Store(reqIdle)
	s.release(r)
	return false
}

// startRequestTimer answers requests older than RequestTimeout with EIO
// until the returned function is called.
func (s *session) startRequestTimer() (stop func()) {
	timeout := s.opts.RequestTimeout
	tick := max(timeout/4, 10*time.Millisecond)
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				for _, r := range s.slots {
					st := r.started.Load()
					age := now.Sub(time.Unix(0, st))
					if r.state.Load() != reqRunning || age < timeout || !r.state.CompareAndSwap(reqRunning, reqTimedOut) {
						continue
					}
					// The slot may have been recycled between the loads
					// and the swap: then this is a fresh request, which
					// gets its state back unless its result came
					// meanwhile (and was dropped): that one is answered.
					if r.started.Load() != st && r.state.CompareAndSwap(reqTimedOut, reqRunning) {
						continue
					}
					s.timeOut(r, age)
				}
			}
		}
	}()
	return func() { close(done); <-exited }
}

// timeOut sends EIO for r, whose backend call is still running; r's slot
// stays taken until the backend returns (answered releases it).
func (s *session) timeOut(r *request, age time.Duration) {
	h := r.hdr
	s.log.Warn("nbd: request timed out; answering EIO", "cmd", CommandName(h.Type), "offset", h.Offset,
		"length", h.Length, "age", age.Round(time.Millisecond), "timeout", s.opts.RequestTimeout)
	reply := &request{hdr: h, errno: EIO, buf: make([]byte, replyHeadroom), orphan: true, begun: r.begun}
	s.encodeReply(reply)
	s.wMu.Lock()
	s.queue = append(s.queue, reply)
	if s.writing {
		s.wMu.Unlock()
		return
	}
	s.writeQueue()
}
