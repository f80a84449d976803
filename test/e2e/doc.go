// Package e2e holds the end-to-end tests of the kernel path: a real
// kernel (Debian's, in the qemu guest that test/vm/run boots), a real Ceph
// cluster (test/ceph/cluster, started by test/vm/e2e.sh) and the real
// rbd-nbd-graph binary, driven the way a user would drive it.
//
// The tests carry the build tag vmtest: `make vmtest` compiles them on the
// host (go test -c -tags 'pacific vmtest') and runs the binary as root in
// the guest; `make vmtest RUN=TestName` runs one. Run by hand elsewhere
// they skip what they lack (root, the nbd module, CEPH_CONF, a tool)
// unless RBD_NBD_GRAPH_REQUIRE=1, which `make vmtest` sets, turns every
// such skip into a failure (internal/testkit's policy).
//
// Environment: RBD_NBD_GRAPH_BIN (the binary under test; without it the
// kit builds one), CEPH_CONF (the test cluster).
//
// Files: helpers_test.go (images, mappings, mounts; requirements and
// commands are internal/testkit's);
// one file per behaviour of the kernel path (lib_test.go: the Go API's attach and
// detach, leaks; cli_test.go: module loading, map/list/unmap; fs_test.go,
// fio_test.go, discard_test.go, resize_test.go, reattach_test.go,
// readonly_test.go, journaling_test.go). docker_*_test.go files belong to
// the graph driver. Faults (restarts, slow clusters): restart_test.go
// (plugin SIGTERM/SIGKILL under a container, map's SIGTERM handover),
// slowcluster_test.go (OSDs paused under writers, io-timeout),
// reattach_safety_test.go (attach refusals, PR_SET_IO_FLUSHER), with
// faults_helpers_test.go (kernel log marker, OSD pause, O_DIRECT
// writers); soak_test.go is `make soak` only (E2E_SOAK_DURATION).
package e2e
