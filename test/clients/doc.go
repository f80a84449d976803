// Package clients tests `rbd-nbd-graph export` with real NBD clients:
// nbdinfo (libnbd) must list the export with the right flags, nbdcopy
// must round-trip random data byte for byte, qemu-img compare must agree
// with the source, and fio's nbd engine must pass --verify=crc32c.
//
// The tests build the binary (or use $RBD_NBD_GRAPH_BIN), start it on a
// unix socket per test, and stop it with SIGTERM, expecting exit status
// 0. A missing client tool skips a test, or fails it when
// RBD_NBD_GRAPH_REQUIRE=1 (as `make test` sets).
package clients
