package graphtest

import (
	"os"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// The require-or-skip policy is internal/testkit's; RequireLoop adds
// what the driver tests on FileStore and LoopAttacher need.

// RequireLoop needs root, loop devices and losetup, mkfs.ext4 and
// resize2fs: what the driver tests on FileStore and LoopAttacher use.
func RequireLoop(t testing.TB) {
	t.Helper()
	testkit.RequireRoot(t)
	_, err := os.Stat("/dev/loop-control")
	testkit.Require(t, err == nil, "needs loop devices (/dev/loop-control)")
	testkit.RequireTools(t, "losetup", "mkfs.ext4", "resize2fs")
}
