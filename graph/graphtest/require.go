package graphtest

import (
	"os"
	"os/exec"
	"testing"
)

// RequireEnv is the environment variable that turns skips into failures
// (the Makefile sets it), so CI cannot pass by skipping.
const RequireEnv = "RBD_NBD_GRAPH_REQUIRE"

// Require skips the test with why when ok is false, or fails it when
// RBD_NBD_GRAPH_REQUIRE=1.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s (and %s=1 forbids skipping)", why, RequireEnv)
	}
	t.Skip(why)
}

// RequireRoot needs uid 0 (mount, loop devices).
func RequireRoot(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "needs root (mount(2) and loop devices)")
}

// RequireTools needs the named programs on PATH.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		_, err := exec.LookPath(tool)
		Require(t, err == nil, "needs "+tool+" on PATH")
	}
}

// RequireLoop needs root, loop devices and losetup, mkfs.ext4 and
// resize2fs: what the driver tests on FileStore and LoopAttacher use.
func RequireLoop(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	_, err := os.Stat("/dev/loop-control")
	Require(t, err == nil, "needs loop devices (/dev/loop-control)")
	RequireTools(t, "losetup", "mkfs.ext4", "resize2fs")
}

// NoCephEnv marks a run without a cluster on purpose (make test-unit):
// tests that need Ceph skip there even under RBD_NBD_GRAPH_REQUIRE=1,
// because make test-integration runs the same packages against a cluster
// it starts, where a missing CEPH_CONF fails.
const NoCephEnv = "RBD_NBD_GRAPH_NO_CEPH"

// RequireCeph returns the ceph.conf of a running cluster from CEPH_CONF.
func RequireCeph(t testing.TB) string {
	t.Helper()
	conf := os.Getenv("CEPH_CONF")
	if conf == "" && os.Getenv(NoCephEnv) == "1" {
		t.Skip("needs a Ceph cluster: make test-integration runs this test against one")
	}
	Require(t, conf != "", "needs CEPH_CONF naming a running cluster (test/ceph/cluster start DIR)")
	return conf
}
