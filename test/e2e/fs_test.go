//go:build vmtest

package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// writeTree writes a tree of random files (nested folders, sizes from 0
// to 3 MiB, about 12 MiB in all) and returns path -> sha256.
func writeTree(t *testing.T, root string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	sizes := []int{0, 1, 511, 4096, 4097, 65536, 100000, 1 << 20, 3 << 20}
	n := 0
	for d := 0; d < 4; d++ {
		dir := filepath.Join(root, fmt.Sprintf("d%d", d), fmt.Sprintf("sub%d", d*7))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, size := range sizes {
			data := make([]byte, size)
			rand.Read(data)
			rel, _ := filepath.Rel(root, filepath.Join(dir, fmt.Sprintf("f%03d", n)))
			if err := os.WriteFile(filepath.Join(root, rel), data, 0o644); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			sums[rel] = hex.EncodeToString(sum[:])
			n++
		}
	}
	return sums
}

// checkTree verifies root holds exactly the files of sums, byte for byte.
func checkTree(t *testing.T, root string, sums map[string]string) {
	t.Helper()
	seen := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "lost+found" || filepath.Dir(rel) == "lost+found" {
			return nil
		}
		want, ok := sums[rel]
		if !ok {
			t.Errorf("unexpected file %s", rel)
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("%s: content differs after remount (%d bytes)", rel, len(data))
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(sums) {
		t.Errorf("found %d of %d files", seen, len(sums))
	}
}

// mkfs, mount, write a tree, sync, unmount, unmap; map again, mount, and
// every byte is back. ext4 and xfs.
func TestFilesystemRoundTrip(t *testing.T) {
	for _, c := range []struct {
		fs   string
		mkfs []string
	}{
		{"ext4", []string{"mkfs.ext4", "-q", "-F"}},
		{"xfs", []string{"mkfs.xfs", "-q", "-f"}},
	} {
		t.Run(c.fs, func(t *testing.T) {
			testkit.RequireTools(t, c.mkfs[0])
			image := newImage(t, 320, "") // mkfs.xfs wants at least 300 MiB
			dev := mapDevice(t, image)
			testkit.Must(t, 5*time.Minute, c.mkfs[0], append(c.mkfs[1:], dev)...)
			dir := mountDev(t, dev)
			sums := writeTree(t, dir)
			testkit.Must(t, 2*time.Minute, "sync")
			testkit.Must(t, 2*time.Minute, "umount", dir)
			unmap(t, dev)

			dev = mapDevice(t, image)
			dir = mountDev(t, dev, "-o", "ro")
			checkTree(t, dir, sums)
			testkit.Must(t, 2*time.Minute, "umount", dir)
			unmap(t, dev)
		})
	}
}
