// Package rbdstore keeps graph's layer images in a Ceph RBD pool through
// rbdio: Store implements graph.ImageStore (with StoreDescriber and
// StoreVersioner) on one pool or namespace.
//
// The contract, beyond graph.ImageStore's:
//
//   - rbdio's errors keep their cause and gain graph's kind
//     (ErrImageNotFound, ErrImageExists, ErrImageBusy), so callers use
//     errors.Is on either.
//   - CreateSnapshot and RemoveSnapshot are two librbd steps each
//     (create+protect, unprotect+remove); a retry after a crash between
//     them finishes the job (crash_test.go kills a process there).
//   - SetMetadata writes its keys in one write to the image's header,
//     without opening the image or taking its exclusive lock
//     (rbdio.Conn.SetMetadataDirect): the state record of every create
//     and remove costs two round trips instead of an open.
//   - OpenImage opens a layer for a device; an image whose exclusive
//     lock a dead process still holds is retried for a while, since the
//     dead client's watch takes about 30 s to expire.
//   - The store owns its cluster connection (New, Close) and renews it
//     after `ceph osd blocklist add` of its client (sessions.go): the
//     first metadata operation or layer that fails with ESHUTDOWN opens
//     one new connection for all; the failed metadata operation runs
//     once more there, every layer opened by OpenImage is reopened
//     there (its Reopener), and the old connection is closed once
//     nothing uses it.
//   - A Reopener (reopen.go) stands in front of every layer and of an
//     image opened by a command (OpenReopening, rbd: targets, with a
//     connection of its own). It takes the exclusive lock again only
//     through librbd's acquisition, which breaks the lock of our dead
//     instance (no watch) and refuses a live holder: the blocklist is
//     Ceph's fencing, so a layer another client took is fenced (its IO
//     fails at once, the log and StoreStatus name it) and retried with
//     backoff until that client lets go. Requests that failed on the
//     blocklisted handle are resubmitted on the new one within
//     Options.ReopenWait (flushes only without a writeback cache), so a
//     filesystem on the layer sees no error; the data path costs one
//     atomic load.
//   - Options owns the rbd.* connection keys (a graph.OptionSet) and the
//     lock retry policy; Connect and New build the store from them.
//
// The store's contract test (graphtest.StoreSuite) and the clone-chain
// benchmarks run against a real cluster (CEPH_CONF); make
// test-integration runs them.
package rbdstore
