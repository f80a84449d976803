//go:build vmtest

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// Why this project exists: an image with a feature the kernel's RBD
// client refuses (journaling, 0x40). krbd (`rbd device map`) fails; the
// same image maps through rbd-nbd-graph, passes fio verify, formats and
// mounts. Both outcomes are logged side by side.
func TestJournalingImageKrbdVersusOurs(t *testing.T) {
	testkit.RequireTools(t, "fio", "mkfs.ext4", "dmesg")
	image := newImage(t, 128, "layering,exclusive-lock,journaling")
	info := testkit.Must(t, time.Minute, "rbd", "info", image)
	if !strings.Contains(info, "journaling") {
		t.Fatalf("the image lacks the journaling feature:\n%s", info)
	}

	// krbd. noudev: the guest runs no udevd, and rbd would wait for it.
	krbdOut, krbdErr := testkit.Run(t, 3*time.Minute, "rbd", "device", "map", "-o", "noudev", image)
	dmesg, _ := testkit.Run(t, time.Minute, "dmesg")
	if krbdErr == nil {
		dev := strings.TrimSpace(krbdOut)
		testkit.Run(t, time.Minute, "rbd", "device", "unmap", "-o", "noudev", dev)
		t.Fatalf("krbd mapped the journaling image as %s; this kernel was expected to refuse it", dev)
	}
	if !strings.Contains(dmesg, "unsupported features: 0x40") {
		t.Errorf("krbd failed, but the kernel log does not say why (want \"unsupported features: 0x40\"):\n%s\n%s",
			krbdOut, lastLines(dmesg, 10))
	}
	krbdResult := "refused: " + firstLine(krbdOut) + " / kernel: " + grepLine(dmesg, "unsupported features")

	// Ours.
	dev := mapDevice(t, image)
	fioVerify(t, dev, "32M")
	testkit.Must(t, 5*time.Minute, "mkfs.ext4", "-q", "-F", dev)
	dir := mountDev(t, dev)
	if err := os.WriteFile(filepath.Join(dir, "proof"), []byte("journaled image via NBD\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.Must(t, time.Minute, "umount", dir)
	unmap(t, dev)
	oursResult := fmt.Sprintf("mapped as %s; fio verify passed; ext4 formatted, mounted, written", dev)

	t.Logf("journaling image %s, side by side:\n| path | outcome |\n| --- | --- |\n| krbd (rbd device map) | %s |\n| rbd-nbd-graph map | %s |",
		image, krbdResult, oursResult)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func grepLine(s, sub string) string {
	lines := strings.Split(s, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], sub) {
			return strings.TrimSpace(lines[i])
		}
	}
	return "(no kernel message)"
}
