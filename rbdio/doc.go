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
//     context stops a flatten part way (rbd_flatten_with_progress), and
//     a flatten runs through the image's open handle when there is one
//     on the connection: an open for writing takes a running flatten
//     over instead of waiting for librbd to release the lock at its end.
//   - image.go, aio.go, aio_shim.c, submit.go, watch.go: Image, the
//     open image for IO. It implements nbd.Backend, nbd.AsyncBackend, nbd.Discarder,
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
//     syscall.Errno, the one Ceph returned (ESHUTDOWN once closed):
//     what an NBD client is told is nbd.Errno's choice alone.
//
// Every wrapper names the C function it uses in its doc comment and in
// its errors.
//
// # The data path
//
// go-ceph has no binding for librbd's asynchronous calls, so aio.go and
// aio_shim.c have their own. Per open image: a submission queue in C
// memory emptied by a C thread ("rbdio-submit") into rbd_aio_*, woken by
// one raw write(2) to its eventfd only when it sleeps; and a completion
// ring that librbd's callbacks fill and one goroutine empties without
// cgo, sleeping on an eventfd through the netpoller. It wakes a
// synchronous caller or reports to an asynchronous one
// (nbd.AsyncBackend) and ends each batch with FlushCompletions. Go
// makes no regular syscall on the data path, and no cgo call except
// where Config.Submit says so: with SubmitInline (SubmitAuto's choice
// when the runtime's sysmon is kept from deep sleep, as the commands
// that serve IO arrange) a request that finds the submitter thread asleep
// with nothing queued is submitted by its caller instead of waking the
// thread. Requests are recycled and buffers pinned while librbd holds
// them. Close refuses new requests and waits
// for those in flight through a counter, never a lock a completion
// could wait on (a FUA write starts its flush from the completion
// goroutine).
//
// Connect sets rbd_non_blocking_aio=false (the submitter thread runs
// librbd's dispatch) and rbd_cache from Config.CachePolicy: by default
// no cache, so a write is acknowledged once the OSDs have it and a
// restarted or killed server loses nothing the kernel was told is done.
//
// Why these choices, the measurements behind them and what was tried
// and not kept: docs/2026-12-04-rbdio-data-path.md, and for inline
// submission docs/2026-12-07-inline-submission.md.
package rbdio
