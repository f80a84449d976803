//go:build vmtest

package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// A read-only mapping: the kernel marks the device read-only, a direct
// write is refused at the block layer, and the filesystem on it mounts
// read-only and reads back.
func TestReadOnlyMapping(t *testing.T) {
	testkit.RequireTools(t, "mkfs.ext4", "blockdev", "dd")
	image := newImage(t, 128, "")
	dev := mapDevice(t, image)
	testkit.Must(t, 5*time.Minute, "mkfs.ext4", "-q", "-F", dev)
	dir := mountDev(t, dev)
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("written read-write\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.Must(t, time.Minute, "umount", dir)
	unmap(t, dev)

	dev = mapDevice(t, image, "--read-only")
	if got := sysBlock(t, dev, "ro"); got != "1" {
		t.Errorf("/sys/block/%s/ro = %q, want 1", filepath.Base(dev), got)
	}
	if got := strings.TrimSpace(testkit.Must(t, time.Minute, "blockdev", "--getro", dev)); got != "1" {
		t.Errorf("blockdev --getro = %q, want 1", got)
	}
	if e := findEntry(listJSON(t), dev); e == nil || !e.ReadOnly {
		t.Errorf("list does not show %s as read-only: %+v", dev, e)
	}
	out, err := testkit.Run(t, time.Minute, "dd", "if=/dev/zero", "of="+dev, "bs=4k", "count=1", "oflag=direct", "conv=notrunc")
	if err == nil {
		t.Fatalf("a direct write to the read-only device succeeded:\n%s", out)
	}
	if !strings.Contains(out, "Operation not permitted") && !strings.Contains(out, "Read-only file system") {
		t.Errorf("the write failed, but not as read-only (EPERM/EROFS):\n%s", out)
	}
	// (Guest kernel 6.1 still lets a read-only block device be opened
	// for writing; the write itself is what the block layer refuses.)

	dir = mountDev(t, dev, "-o", "ro")
	data, err := os.ReadFile(filepath.Join(dir, "hello"))
	if err != nil || string(data) != "written read-write\n" {
		t.Errorf("reading back from the read-only mount: %q, %v", data, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing on the read-only mount: %v, want EROFS", err)
	}
	testkit.Must(t, time.Minute, "umount", dir)
	unmap(t, dev)
}
