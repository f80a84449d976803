// Package rbdio is rbd-nbd-graph's RBD layer: a connection to a Ceph
// cluster, the image life cycle the graph driver needs, and the block
// backend package nbd serves. It is the only package that uses cgo
// (go-ceph v0.34.0 built with -tags pacific, plus a small shim of its
// own over librbd's asynchronous API).
//
// # Pieces
//
//   - conn.go: Config (ceph.conf, keyring, client id, cluster name, pool,
//     RADOS namespace, connect timeout) and Connect, which returns a Conn
//     with the pool open. Connection failures are told apart: no monitor
//     answering (ErrUnreachable), cephx refusing the key (ErrPermission),
//     a missing conf, keyring, pool or namespace (ErrNotFound).
//   - create.go, snapshot.go, clone.go, resize.go, remove.go, list.go,
//     metadata.go: the life cycle on Conn, through go-ceph: create
//     (size, features, object size, data pool), snapshots (create,
//     protect, unprotect, remove, list), clone, flatten, children,
//     parent, resize, remove (refused while clones or snapshots exist or
//     another client has the image open), list, stat, image metadata.
//     admin.go opens a short-lived go-ceph handle for each call.
//     flatten.go and flatten_shim.c call librbd directly, so a cancelled
//     context stops a flatten part way (rbd_flatten_with_progress).
//   - image.go, aio.go, aio_shim.c, watch.go: Image, the open image for
//     IO. It implements nbd.Backend, nbd.AsyncBackend, nbd.Discarder,
//     nbd.ZeroWriter and nbd.Resizer. A read-write open takes the
//     exclusive lock for good (like rbd-nbd --exclusive) so a second
//     writer is refused with ErrLocked instead of silently taking the
//     image over; a watch on the header (rbd_update_watch) keeps Size
//     current and feeds SizeChanges when any client resizes the image.
//   - errors.go: every failure is an *Error naming the operation, the
//     object (pool/image@snap), the librbd or librados function and its
//     errno, and the fix. It matches a kind (ErrNotFound, ErrExists,
//     ErrHasChildren, ErrHasSnapshots, ErrProtected, ErrNotProtected,
//     ErrLocked, ErrBusy, ErrReadOnly, ErrPermission, ErrUnreachable,
//     ErrInvalid, ErrClosed) with errors.Is and unwraps to a
//     syscall.Errno. On the data path the errno is folded into those an
//     NBD client can act on (EIO, ENOSPC, EROFS, EINVAL; ESHUTDOWN once
//     closed), so nbd.Errno picks the reply.
//
// Every wrapper names the C function it uses in its doc comment and in
// its errors.
//
// # The data path (measured)
//
// go-ceph has no binding for librbd's asynchronous calls, so aio.go and
// aio_shim.c have their own. Per open image:
//
//   - a submission queue in C memory and a C thread ("rbdio-submit")
//     that empties it into rbd_aio_read/write/flush/discard/
//     write_zeroes. Go puts a request in with a few stores and, only when
//     the thread sleeps, one raw write(2) to its eventfd. Connect sets
//     rbd_non_blocking_aio=false, so the thread runs librbd's dispatch
//     itself rather than handing each request on to librados'
//     io_context threads;
//   - a completion ring in C memory that librbd's completion callbacks
//     fill (under a mutex among themselves) and one goroutine empties
//     without a lock and without cgo, sleeping on a non-blocking eventfd
//     through the netpoller when it is empty (the callback writes the
//     eventfd only when the goroutine said it sleeps). It wakes a
//     synchronous caller (ReadAt, WriteAt, Flush, Discard, WriteZeroes)
//     or reports to an asynchronous one (StartReadAt, StartWriteAt,
//     StartFlush: nbd.AsyncBackend, which nbd's IO loop uses from the
//     connection's reading goroutine) and ends each batch with one
//     FlushCompletions per connection, which writes that batch's replies
//     with one writev.
//
// So the data path makes no cgo call and no regular syscall from Go.
// That is the point: any cgo call or syscall made after all of the Go
// scheduler's Ps went idle wakes the runtime's sysmon thread, which then
// polls every 20 us for a while, and an IO loop goes idle between
// batches all the time. Context switches are what costs here (over 40 %
// of the export's CPU samples are in finish_task_switch on this VM);
// the Go code itself is under 5 %. Requests and their rendezvous are
// recycled (no allocation per request); buffers are pinned
// (runtime.Pinner) while librbd holds them.
//
// Method: test/ceph/cluster (memstore, one OSD), a 512 MiB image written
// in full, fio 4 KiB random IO at queue depth 16 over a fixed number of
// IOs, the variants alternated within one run and repeated, medians; CPU
// per IO from /proc of the export, the OSD and fio (getrusage), context
// switches per IO from /proc/PID/task/*/status. CPU per IO is the
// figure to read: on the 2-core build machine, shared with other
// builds' qemu VMs (load 4-9), IOPS move by 30 % between runs while
// CPU per IO moves less, and the box is CPU-bound (fio, the export and
// the OSD share the 2 cores), so IOPS follow total CPU per IO.
// "raw" is fio's rbd engine with the same librbd settings (below).
// Five rounds of 40000 IOs, load 7.4-8.2 (export us/IO, context
// switches/IO in the export, IOPS; total = fio + export + OSD us/IO):
//
//	                  randread                     randwrite
//	            us  cs    IOPS   total      us  cs    IOPS   total
//	raw fio     24.5 -   18744    68.2      39.8 -   11820   115.0
//	before      41.8 4.5 12051   111.8      51.2 4.3  9358   131.2
//	async+cb    43.8 5.3 12296   108.2      50.5 4.6  9631   140.8
//	this        36.5 3.1 14981    96.2      46.8 3.8  9715   131.5
//
// "before" is the previous model: one worker goroutine per request,
// blocked on a channel that a cgo callback from librbd's thread
// signalled. "async+cb" starts requests from the reading goroutine
// (nbd.AsyncBackend) but still submits by cgo call (rbd_non_blocking_aio
// on) and takes completions from a mutex-protected C queue by cgo call.
// "this" is the design above. The fio nbd client costs another 9-10 us
// per IO that fio's rbd engine does not, and the OSD spends more per IO
// at lower IOPS (52 against 44 us for reads): at the CPU-bound limit an
// export as cheap as fio's rbd engine itself (24.5 us, librbd included)
// would still stand at about 68/(10+24.5+44) = 0.87 for reads.
//
// What was measured and not kept (same method, alternated pairs):
//   - keeping sysmon asleep is worth it: with GODEBUG=schedtrace set to
//     hours (sysmon then never sleeps deeply, so nothing wakes it) the
//     async+cb build fell from 36.0 to 22.5 us per read and 44.0 to 30.5
//     per write; on this design the setting makes no difference;
//   - submitting by cgo call from the reading goroutine instead of the
//     submitter thread: 44.3 against 32.7 us per read, 50.3 against 42.3
//     per write, fewer IOPS; with sysmon kept awake too (GODEBUG=
//     schedtrace set to weeks, 3 alternated rounds of 60000 reads) it
//     only draws level: 19.3-20.2k IOPS and 38-39 us per read, against
//     19.2-19.9k and 40-42 for this design, 20.0-21.0k and 38-42 for
//     this design with the same setting;
//   - rbd_non_blocking_aio left on: 3.8 against 2.9 switches per read,
//     5.9 against 3.1 per write;
//   - GOMAXPROCS=1: no difference beyond the noise;
//   - SCHED_BATCH for the whole export (chrt -b): half the context
//     switches and 15-20 % less CPU per IO, but 13 % fewer read IOPS
//     (woken threads wait out other tasks' time slices), and a daemon
//     serving the kernel's block IO should not queue behind batch work;
//   - librados_thread_count=1 (one io_context thread instead of two:
//     completions come in batches, 2.5 against 3.8 switches per read):
//     it deadlocks librbd, whose snapshot unprotect makes synchronous
//     librados calls from an io_context callback (TestCloneLifecycle
//     hung), and a lock owner executes such operations for other
//     clients, so it is not safe even on a connection used only for IO;
//   - rbd_disable_zero_copy_writes=false (librbd sends from our pinned
//     buffer instead of a copy, and holds each completion back until it
//     drops its last reference to that buffer): 4 KiB randwrite through
//     export, three alternated rounds of 60000 IOs, the copy (kept)
//     against zero copy: 10.4k against 10.0k IOPS, 50 against 53 us of
//     export CPU and 2.8 against 3.5 context switches per write; the copy
//     of 4 KiB costs less than the extra hand-off. Large writes are the
//     other way round: in the TCG guest (bench-vm's harness, 3 rounds,
//     one boot), 1 MiB sequential writes at queue depth 4 went from
//     30.7 to 32.0 IOPS (rbd-nbd, which hands librbd bufferlists and
//     never copies, 30.2), and 4 KiB randwrite at depth 32 stayed level
//     (536 against 546). Choosing per request would need librbd's C++
//     API (a bufferlist with our own deleter) on the handle go-ceph
//     opened through the C API, and librbd offers no way from one to
//     the other; a second handle would fight the first for the
//     exclusive lock;
//   - writing the NBD reply from the completion callback in C, sparing
//     the completion goroutine's wake-up (about one context switch per
//     batch of 2-3 completions): it would put NBD's reply stream and a
//     lock shared with Go inside librbd's threads; not attempted;
//   - the submitter thread spinning on its queue before it sleeps (5 or
//     20 us, pause between looks), two alternated rounds of 60000 reads:
//     context switches per read stayed at 2.2-2.5 (requests come in
//     batches further apart than that), and the spin cost CPU: 40-41
//     and 45 us per read against 37-44, 18.5-20.5k IOPS against
//     18.8-20.4k;
//   - submitting from librbd's completion callbacks (the thread that is
//     awake anyway drains the queue, the submitter woken only when
//     nothing is in flight): not built, because a request would then
//     wait for some unrelated request to finish before it is even sent,
//     which at queue depth 2 serialises IO behind the slowest request;
//   - pinning the export to one CPU (taskset): 21.4k against 18.8k
//     reads, since a wake-up on the same CPU is cheap and one across
//     CPUs costs an IPI in this VM; but fio's rbd engine gains more from
//     the same pinning (28.9-29.5k against 22.2-23.7k), so it says how
//     much hand-offs cost here, not that the export should pin itself;
//   - holding replies back until 2, 4 or 8 completions are ready (or
//     nothing is left in flight), so the client wakes less: 20.5-22.7k
//     against 22.0-22.7k reads, no gain beyond the noise, and one slow
//     request would delay replies that are ready.
//
// bench/scripts/rbd.sh measures the ratio the issue sets (>= 0.85 of
// fio's rbd engine) end to end. With librbd's write-back cache on all
// three sides (before the durable default), on the loaded build machine,
// two runs of seven rounds (load 3.7 rising to 8.5): randread 0.70 and
// 0.73, randwrite 0.89 and 0.92; on a quieter one 0.86 and 1.22. With the
// cache off on all three (the default now; five rounds, load 4-5):
// randread 0.83 (20.9k against 25.3k IOPS), randwrite 0.80 (9.6k against
// 12.0k); qemu-nbd 0.15 and 0.79. Below the bar here, for the CPU reasons
// above: the fio nbd client's own cost per IO is in every export's
// figure and not in the ceiling's.
//
// # librbd settings
//
// Connect sets three options. rbd_non_blocking_aio=false is the threading
// above. rbd_cache (Config.CachePolicy) decides when a write is
// acknowledged, and the default is no cache: once the OSDs have it.
// librbd's own default (writearound, rbd_cache_writethrough_until_flush)
// acknowledges from the cache after the client's first flush, as a disk
// with a volatile write cache does, and NBD carries flushes; but a disk's
// cache dies with the disk, while ours dies with a process the kernel
// outlives. When the server is killed and a new one reattaches the live
// device (the kernel requeues what was in flight), or the driver restarts
// under mounted layers, the filesystem sees no crash and would read back
// blocks older than writes it was told were done. A SIGKILL in the middle
// of `fio --verify` showed exactly that with the cache on
// (test/e2e/reattach_test.go now passes with plain writes). Of the
// durable choices, rbd_cache=false beats rbd_cache_policy=writethrough,
// whose object cacher costs CPU on every read: fio's rbd engine, 4k qd16
// on the test cluster, randread 23.4k against 15.2k IOPS (21 against 39
// us of CPU per read), randwrite 7.8k against 6.3k. Writeback and
// writearound stay available for hosts that never restart the server
// under mounted devices (with rbd_cache_writethrough_until_flush off so
// the first request already gets the policy): writearound doubles 4 KiB
// write IOPS (15.4k in the same run). A comparison is honest only with
// the same setting on both sides: bench/scripts/rbd.sh gives fio's rbd
// engine and qemu-nbd (whose --cache mode sets rbd_cache) rbdio's
// settings for the policy it is given (--cache-policy, default none), and
// bench-vm gives rbd-nbd the same cache as ours (BENCH_CACHE_POLICY).
// rbd_non_blocking_aio=false does not change fio's rbd engine measurably
// (six alternated rounds: 17.4k against 17.7k read IOPS, 12.6k against
// 12.7k write).
package rbdio
