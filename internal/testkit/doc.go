// Package testkit is what the project's tests share, so that every
// package skips, fails, builds and waits the same way. Every helper takes
// testing.TB, so tests and benchmarks use the same ones.
//
//   - The require-or-skip policy: Require, RequireRoot, RequireTools,
//     Tool, RequireKernelNBD and CephConf skip a test that lacks a
//     prerequisite, or fail it when RBD_NBD_GRAPH_REQUIRE=1 (the
//     Makefile's test targets set it, so CI cannot pass by skipping).
//     Under RBD_NBD_GRAPH_NO_CEPH=1 (make test-unit) a test that needs a
//     cluster skips even then: make test-integration runs it against one.
//   - The binary under test: Binary returns RBD_NBD_GRAPH_BIN, or builds
//     cmd/rbd-nbd-graph once per test process; a package that calls it
//     runs its tests through Main, which removes the build afterwards.
//   - Commands and waiting: Run and Must run a command with a deadline
//     and log it; Eventually polls a condition with a deadline.
//   - Test data: UniqueName for cluster-wide names, RandomBytes and
//     RandomFile for seeded content (a failure repeats).
//
// It imports nothing of the project, so packages without cgo (graph,
// nbd) can use it.
package testkit
