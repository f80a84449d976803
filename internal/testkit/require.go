package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireEnv is the environment variable that turns skips into failures.
const RequireEnv = "RBD_NBD_GRAPH_REQUIRE"

// NoCephEnv marks a run without a cluster on purpose (make test-unit):
// tests that need Ceph skip there even under RequireEnv, because make
// test-integration runs the same packages against a cluster it starts,
// where a missing CEPH_CONF fails.
const NoCephEnv = "RBD_NBD_GRAPH_NO_CEPH"

// Required reports whether a missing prerequisite fails the test
// (RBD_NBD_GRAPH_REQUIRE=1) instead of skipping it.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Missing skips the test for the reason given, or fails it under
// RBD_NBD_GRAPH_REQUIRE=1.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	why := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("missing prerequisite: %s (%s=1 forbids skipping)", why, RequireEnv)
	}
	t.Skipf("skipped: %s (%s=1 fails instead)", why, RequireEnv)
}

// Require is Missing unless ok.
func Require(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		Missing(t, format, args...)
	}
}

// RequireRoot needs uid 0 (mount, loop and NBD devices).
func RequireRoot(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "needs root (the VM suite runs as root: make vmtest)")
}

// Tool returns the path of a program on PATH.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, err == nil, "needs %s on PATH (make deps installs it)", name)
	return p
}

// RequireTools needs the named programs on PATH.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		Tool(t, name)
	}
}

// RequireKernelNBD needs root and a kernel whose nbd module is loaded or
// loadable (the VM's Debian kernel; the host's may have none).
func RequireKernelNBD(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return
	}
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	_, err := os.Stat(filepath.Join("/lib/modules", strings.TrimSpace(string(rel)), "modules.dep"))
	Require(t, err == nil, "needs a kernel with the nbd module (run it in the VM: make vmtest)")
}

// CephConf returns the ceph.conf of the running test cluster that
// CEPH_CONF names.
func CephConf(t testing.TB) string {
	t.Helper()
	conf := os.Getenv("CEPH_CONF")
	if conf == "" && os.Getenv(NoCephEnv) == "1" {
		t.Skip("needs a Ceph cluster: make test-integration runs this test against one")
	}
	Require(t, conf != "", `needs CEPH_CONF naming a running cluster (test/ceph/cluster start DIR; eval "$(test/ceph/cluster env DIR)")`)
	if _, err := os.Stat(conf); err != nil {
		t.Fatalf("CEPH_CONF=%s: %v", conf, err)
	}
	return conf
}
