// Package nbd speaks the Network Block Device protocol, both to userspace
// clients over a socket (the fixed-newstyle handshake, then transmission)
// and to the Linux kernel (generic netlink family "nbd": CONNECT,
// DISCONNECT, RECONFIGURE, STATUS, with the transmission phase over a
// socketpair per connection). It has no cgo, so its tests run anywhere.
//
// The pieces, from the wire inwards:
//
//   - proto.go, codec.go: constants and the allocation-free encoding of
//     requests and replies. A peer breaking the protocol: ErrProtocol.
//   - handshake.go, server.go: Server runs the option haggling (GO, INFO,
//     EXPORT_NAME, LIST, ABORT, STARTTLS, STRUCTURED_REPLY and the
//     base:allocation meta context; ERR_UNSUP otherwise) and hands each
//     connection to ServeTransmission. It closes clients past
//     MaxConnections, backs off on EMFILE/ENFILE, and shares one budget
//     of payload bytes in flight among its connections (budget.go).
//   - transmission.go: ServeTransmission, the IO loop of one connection,
//     for Server and the kernel path. The calling goroutine reads and
//     validates requests (a bad one gets an error reply and the stream
//     stays in sync; a bad magic or a cut message ends it). Each request
//     takes a slot (QueueDepth, MaxInFlightBytes) whose buffer holds the
//     reply header and the data, one iovec. NonBlocking backends are
//     served on the reading goroutine; an AsyncBackend gets READ, WRITE
//     and FLUSH started there and completes them through Completer on
//     its own goroutine; everything else goes to worker goroutines.
//     Replies are queued only when complete and written by whichever
//     goroutine finds the writer idle, several per writev, never
//     interleaved. The completion goroutine, shared by every connection
//     of a backend, never waits on a socket: a client that stops reading
//     delays only itself. RequestTimeout answers a request the backend
//     sits on with EIO and drops its late result.
//   - blockstatus.go: structured replies and NBD_CMD_BLOCK_STATUS from
//     the backend's Extenter (gaps are HOLE|ZERO; without one, all data).
//   - bufpool.go, sockread.go, writev.go: pooled payload buffers, and
//     raw read(2)/writev(2) inside RawConn callbacks, so the goroutine
//     never enters the syscall state (which wakes the runtime's sysmon).
//   - observer.go: Observer, told of every request started and answered
//     (TransmissionOptions.Observer, AttachOptions.Observer) and of
//     connections replaced (ConnectionObserver), so metrics live outside
//     this package; nil costs nothing, and it is called without
//     allocating or locking in the loop.
//   - errno.go: Errno, the one mapping of backend errors (a
//     syscall.Errno anywhere in the chain) to the protocol's values.
//   - client.go: Client, a pipelined client that is itself a Backend.
//   - backend.go, memory.go, file.go: Backend and its optional abilities
//     (Discarder, ZeroWriter, FUAWriter, NonBlocking, AsyncBackend,
//     Resizer, Extenter); the sparse memory backend (one mapping advised
//     for huge pages, a bit per 4 KiB page written) and the file or
//     block-device backend (SEEK_DATA/SEEK_HOLE for extents).
//   - netlink.go, kmod.go: the kernel's netlink family, and loading the
//     module (no NBD in the kernel: ErrNoKernelSupport).
//   - device.go, device_status.go: Attach serves a backend as /dev/nbdN
//     until Detach, the context's end, the kernel's DISCONNECT, or
//     Release, which hands the device over: it stays configured and the
//     kernel holds its IO for DeadConnTimeout until Reattach (here or in
//     another process) gives it new sockets through RECONFIGURE, keeping
//     its block size, mode and largest request (Attach sets that to
//     MaxSectorsKB, 1 MiB by default: the kernel's is 128 KiB). A connection the kernel drops (its request
//     timer during a slow backend) is replaced the same way at once.
//     Past their deadline, Release and Detach report ErrInFlight and the
//     backend must not be closed. List, Status, FindByBackend, Disconnect
//     and WaitFree see and release devices other processes serve.
//
// Semantics the loop guarantees: FLUSH covers every write completed
// (hence replied) before it; FUA on a write, trim or write-zeroes
// flushes before the reply; DISC, EOF and cancellation stop reading and
// return only after every request in flight is answered.
//
// What the kernel does at each step of a slow, restarted or dead server:
// docs/2026-12-04-kernel-nbd-faults.md. The loop's measurements:
// docs/2026-12-04-nbd-io-loop.md.
package nbd
