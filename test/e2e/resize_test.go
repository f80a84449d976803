//go:build vmtest

package e2e

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// Growing the RBD image while it is mapped grows the device (the serving
// process sees the new size and sends RECONFIGURE), and resize2fs grows
// the mounted filesystem into it.
func TestResizeGrowsDevice(t *testing.T) {
	testkit.RequireTools(t, "mkfs.ext4", "resize2fs")
	image := newImage(t, 128, "")
	dev := mapDevice(t, image)
	testkit.Must(t, 5*time.Minute, "mkfs.ext4", "-q", "-F", dev)
	dir := mountDev(t, dev)
	before := fsBytes(t, dir)

	testkit.Must(t, 2*time.Minute, "rbd", "resize", "--no-progress", "--size", "384M", image)
	testkit.Eventually(t, 2*time.Minute, dev+" to grow to 384 MiB", func() bool { return deviceBytes(t, dev) == 384<<20 })
	testkit.Must(t, 5*time.Minute, "resize2fs", dev)
	after := fsBytes(t, dir)
	t.Logf("filesystem size %d MiB -> %d MiB", before>>20, after>>20)
	if after < 300<<20 || after <= before {
		t.Errorf("filesystem did not grow into the device: %d -> %d bytes", before, after)
	}
	testkit.Must(t, time.Minute, "umount", dir)
	unmap(t, dev)
}

func fsBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}
