// Package rbdexport tests `rbd-nbd-graph export rbd:POOL/IMAGE` end to end
// against the test Ceph cluster (CEPH_CONF, started by `make test` with
// test/ceph/cluster) with real NBD clients: nbdcopy round trips checked
// against what librbd reads back, fio's nbd engine with crc32c
// verification, nbdsh for single requests (write zeroes, trim, a write
// to a read-only snapshot export), and the failure messages for a
// missing image, a wrong key and an image another export holds.
//
// The tests skip without CEPH_CONF or a client tool, and fail instead
// under RBD_NBD_GRAPH_REQUIRE=1. RBD_NBD_GRAPH_BIN names the binary;
// without it the tests build one.
package rbdexport
