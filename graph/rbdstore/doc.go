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
//   - OpenImage opens a layer for a device; an image whose exclusive
//     lock a dead process still holds is retried for a while, since the
//     dead client's watch takes about 30 s to expire.
//   - OpenReopening serves an image opened by a command (rbd: targets)
//     through a Reopener: once the cluster blocklists this client it
//     opens a new connection and the image again, and never breaks a
//     live holder's lock.
//   - Options owns the rbd.* connection keys (a graph.OptionSet) and the
//     lock retry policy; Connect and New build the store from them.
//
// The store's contract test (graphtest.StoreSuite) and the clone-chain
// benchmarks run against a real cluster (CEPH_CONF); make
// test-integration runs them.
package rbdstore
