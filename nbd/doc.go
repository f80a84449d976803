// Package nbd speaks the Network Block Device protocol, both to userspace
// clients over a socket (the fixed-newstyle handshake, then transmission)
// and to the Linux kernel (generic netlink family "nbd": CONNECT,
// DISCONNECT, RECONFIGURE, STATUS, with the transmission phase over a
// socketpair per connection).
//
// The pieces, from the wire inwards:
//
//   - proto.go, codec.go: the protocol's constants and the
//     allocation-free encoding of transmission requests and simple
//     replies (Request, SimpleReply). Errors from a peer that breaks the
//     protocol wrap ErrProtocol.
//   - handshake.go, server.go: Server accepts connections on any
//     net.Listener, runs the fixed-newstyle option haggling for each
//     (NBD_OPT_GO, INFO, EXPORT_NAME, LIST, ABORT, STARTTLS,
//     STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT for
//     base:allocation; NBD_INFO_EXPORT and BLOCK_SIZE; NBD_REP_ERR_UNSUP
//     for everything else) and then hands
//     the connection to ServeTransmission. It closes clients past
//     ServerOptions.MaxConnections, backs off on EMFILE/ENFILE instead of
//     stopping, and shares one budget of payload bytes in flight
//     (ServerOptions.MaxInFlightBytes, budget.go) among its connections.
//   - transmission.go: ServeTransmission, the IO loop of one connection,
//     used by Server and, without a handshake, by the kernel path. The
//     calling goroutine reads requests through a 128 KiB buffer and
//     validates them (bad requests get an error reply; a bad magic or a
//     truncated message ends the connection). Each request takes a slot,
//     at most TransmissionOptions.QueueDepth of them and MaxInFlightBytes
//     of payload at a time, whose buffer holds the reply header followed
//     by the data, so a reply is one contiguous iovec. How a request is
//     served depends on the backend:
//     a NonBlocking backend (memory, a file on tmpfs) is served on the
//     reading goroutine itself, and the replies to everything one socket
//     read brought in go out in one writev just before the next read,
//     like a single-threaded event loop (measured with fio: about a third
//     of the CPU per request of handing each to a worker), and a WRITE
//     whose payload is already buffered is written from the read buffer
//     without a copy; an AsyncBackend (rbdio's librbd image) gets its
//     READs, WRITEs and FLUSHes started on the reading goroutine and
//     reports each outcome through Completer, from its own completion
//     goroutine, which then writes the replies of the whole batch of
//     completions with one writev (see "Asynchronous backends" below);
//     any other backend (a file on disk, a remote Client), and TRIM and
//     WRITE_ZEROES on an AsyncBackend, are served by a pool of worker
//     goroutines, so slow requests overlap. A finished request
//     queues its reply; whichever goroutine finds the writer idle writes
//     every queued reply with one writev (writev.go) and keeps going
//     until the queue is empty, so replies are batched under load and
//     never interleaved. A reply is queued only when its data is complete.
//   - blockstatus.go: structured replies, once negotiated: a READ is
//     answered with one OFFSET_DATA chunk whose header sits in the
//     slot's headroom (still one iovec), READ and BLOCK_STATUS failures
//     with an ERROR chunk, every other command with a simple reply.
//     NBD_CMD_BLOCK_STATUS (base:allocation) asks the backend's
//     Extenter for allocated extents (at most 512 per reply) and
//     reports the gaps as HOLE|ZERO; without an Extenter all is data.
//   - bufpool.go: size-class pools for payload buffers larger than what
//     a slot keeps, so the steady state allocates nothing.
//   - sockread.go, writev.go: the loop's socket IO. Both make the read(2)
//     and writev(2) raw system calls inside syscall.RawConn callbacks:
//     the netpoller still does the waiting (deadlines included), but the
//     goroutine never enters the scheduler's syscall state, whose first
//     entry after the process went idle wakes the runtime's sysmon
//     thread (see "Asynchronous backends").
//   - errno.go: Errno maps backend errors (syscall.Errno anywhere in the
//     chain) to the protocol's error values; ReplyError is the client's
//     view of an error reply.
//   - client.go: Client, the handshake's client side and a pipelined,
//     concurrency-safe transmission client. It satisfies Backend.
//   - backend.go: the Backend interface every store implements, and its
//     optional abilities (Discarder, ZeroWriter, FUAWriter, NonBlocking,
//     AsyncBackend, Resizer, Extenter).
//   - memory.go, file.go: the sparse in-memory backend (one anonymous
//     mapping advised for huge pages: fio's nbd engine, 4k randwrite
//     qd16 on mem:512M, 2 CPUs, server CPU per IO 3.9 us with 64 KiB
//     chunks on the Go heap, 3.6 us mapped; IOPS 247k -> 262k) and the
//     file or block-device backend (pread/pwrite, pwritev2 RWF_DSYNC for
//     FUA, fallocate for trim and zeroes). Their Extents: Memory keeps a
//     bit per 4 KiB page written (not mincore, which counts pages that
//     were only read), File asks lseek SEEK_DATA/SEEK_HOLE.
//   - netlink.go, kmod.go: the kernel's "nbd" generic netlink family
//     (CONNECT, DISCONNECT, RECONFIGURE, STATUS: message encoding and
//     decoding over vishvananda/netlink's nl package) and loading the nbd
//     module with pmorjan/kmod when the family is missing; a kernel with
//     no NBD at all gives an error wrapping ErrNoKernelSupport.
//   - device.go, device_status.go: the kernel device API. Attach makes a
//     socketpair per connection, serves our ends with ServeTransmission,
//     hands the kernel the other ends in CONNECT and returns a Device
//     (/dev/nbdN) that lives until Detach, the caller's context ends, the
//     kernel disconnects it, or Release hands it over (the device stays
//     configured and the kernel holds its IO for the next server);
//     Reattach gives a live device whose server died or handed it over
//     new sockets through RECONFIGURE, keeping its block size and mode; a
//     connection the kernel drops (its request timer during a slow
//     backend) is replaced at once the same way; IOTimeout answers late
//     requests with EIO and keeps the device; a Resizer backend's size
//     changes become RECONFIGURE with the new size. What the kernel does
//     at each step is recorded in docs/2026-12-04-kernel-nbd-faults.md. List, Status,
//     FindByBackend, Disconnect and WaitFree look at and release devices
//     served by other processes.
//
// Semantics the loop guarantees: FLUSH calls Backend.Flush (or
// AsyncBackend.StartFlush), which covers every write completed (hence
// every write replied) before it; FUA on a write, trim or write-zeroes
// flushes before the reply (an asynchronous FUA write starts its flush
// when the write completes); DISC, EOF and
// context cancellation stop reading and return only after every request
// in flight is served and replied.
//
// # Asynchronous backends
//
// A backend that can start IO without blocking (AsyncBackend: rbdio's
// librbd image) gets each READ, WRITE and FLUSH started from the reading
// goroutine; a FUA write is a write whose completion starts a flush. The
// backend reports every outcome through the session's Completer from
// its own completion goroutine (rbdio's reads a ring that librbd's
// threads fill) and ends each run of completions with FlushCompletions,
// where the session writes all the replies the run completed with one
// writev, or leaves them to a writer already at work. That goroutine is
// shared by every connection of the backend, so it never waits on a
// socket: what a full socket does not take at once is finished by a
// goroutine of that connection, and a client that stops reading delays
// only itself. Compared with a
// worker goroutine parked per request, measured end to end with fio's
// nbd engine against `rbd-nbd-graph export rbd:` (4k, queue depth 16,
// five alternated rounds on the loaded 2-core build machine; rbdio's
// doc.go has the method and the whole table), the export's CPU per
// request fell from 41.8 to 36.5 us for reads and from 51.2 to 46.8 us
// for writes, and its context switches per request from 4.5 to 3.1 and
// 4.3 to 3.8. Most of that came from keeping sysmon asleep (raw socket
// calls here, no cgo call on rbdio's data path): starting requests
// asynchronously while still making regular syscalls and cgo calls
// gained nothing (43.8 and 50.5 us).
//
// This package has no cgo so its tests run anywhere.
package nbd
