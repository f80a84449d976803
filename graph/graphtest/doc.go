// Package graphtest has what tests of the graph driver share: FileStore
// (an ImageStore on sparse files) and LoopAttacher (loop devices over
// its files) so the driver runs against the real kernel, mkfs and mount
// on a host without Ceph or NBD; StoreSuite, the contract every
// ImageStore must keep (run against FileStore here and against the RBD
// store on a real cluster in graph/rbdstore); and Require, which skips a test
// missing a tool or root unless RBD_NBD_GRAPH_REQUIRE=1 makes it fail.
package graphtest
