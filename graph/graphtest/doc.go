// Package graphtest has what tests of the graph driver share: FileStore
// (an ImageStore on sparse files) and LoopAttacher (loop devices over
// its files) so the driver runs against the real kernel, mkfs and mount
// on a host without Ceph or NBD; StoreSuite, the contract every
// ImageStore must keep (run against FileStore here and against the RBD
// store on a real cluster in graph/rbdstore); and RequireLoop, what the
// driver tests on them need, under internal/testkit's require-or-skip policy.
package graphtest
