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
