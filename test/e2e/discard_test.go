//go:build vmtest

package e2e

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// rbdUsed is the image's used size as `rbd du` reports it.
func rbdUsed(t *testing.T, image string) int64 {
	t.Helper()
	out := testkit.Must(t, 2*time.Minute, "rbd", "du", "--format", "json", image)
	var du struct {
		Images []struct {
			Name     string `json:"name"`
			Snapshot string `json:"snapshot"`
			Used     int64  `json:"used_size"`
		} `json:"images"`
	}
	if err := json.Unmarshal([]byte(out), &du); err != nil {
		t.Fatalf("rbd du --format json: %v\n%s", err, out)
	}
	for _, im := range du.Images {
		if im.Snapshot == "" {
			return im.Used
		}
	}
	t.Fatalf("rbd du lists no head image:\n%s", out)
	return 0
}

// Deleting files on a `-o discard` mount sends TRIM through the device to
// librbd, and `rbd du` shrinks.
func TestDiscardFreesSpace(t *testing.T) {
	testkit.RequireTools(t, "mkfs.ext4", "dd")
	image := newImage(t, 256, "")
	dev := mapDevice(t, image)
	if got := sysBlock(t, dev, "queue/discard_max_bytes"); got == "" || got == "0" {
		t.Fatalf("%s does not accept discards (queue/discard_max_bytes=%q)", dev, got)
	}
	// nodiscard: mkfs would otherwise discard the whole device first.
	testkit.Must(t, 5*time.Minute, "mkfs.ext4", "-q", "-F", "-E", "nodiscard", dev)
	dir := mountDev(t, dev, "-o", "discard")
	testkit.Must(t, 5*time.Minute, "dd", "if=/dev/urandom", "of="+dir+"/big", "bs=1M", "count=96", "conv=fsync", "status=none")
	testkit.Must(t, time.Minute, "sync")
	full := rbdUsed(t, image)
	t.Logf("rbd du after writing 96 MiB: %d MiB used", full>>20)
	if full < 96<<20 {
		t.Fatalf("only %d bytes used after writing 96 MiB", full)
	}
	testkit.Must(t, time.Minute, "rm", dir+"/big")
	testkit.Must(t, time.Minute, "sync")
	var after int64
	testkit.Eventually(t, 2*time.Minute, "rbd du to shrink", func() bool {
		after = rbdUsed(t, image)
		return after <= full-64<<20
	})
	t.Logf("rbd du after deleting it: %d MiB used (was %d MiB)", after>>20, full>>20)
	testkit.Must(t, time.Minute, "umount", dir)
	unmap(t, dev)
}
