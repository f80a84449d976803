//go:build vmtest

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// TestBenchContainerdPull is the snapshotter's benchmark, not a test of
// make test (it skips unless E2E_CONTAINERD_BENCH=1;
// bench/scripts/containerd-vm.sh runs it): in one VM boot, the time to
// pull an image of three layers of 24 MiB each on top of busybox (about
// 75 MiB) from a registry on loopback and start a container of it, on
//
//	host A     our snapshotter, cold (fetch, unpack onto NBD, publish)
//	host B     our snapshotter, a second host: the layers A published
//	           are found in the cluster, nothing fetched nor unpacked
//	overlayfs  containerd's overlayfs snapshotter on local disk (a tmpfs:
//	           the guest's root is an overlay; the cluster is in RAM too),
//	           cold, on B's containerd after B dropped the image
//
// Each figure is one pull+start (and, within it, the pull alone); the
// ratios are what to compare (TCG).
// The figures go to $VM_OUT/containerd-bench.txt.
func TestBenchContainerdPull(t *testing.T) {
	if os.Getenv("E2E_CONTAINERD_BENCH") != "1" {
		t.Skip("the containerd pull benchmark runs with E2E_CONTAINERD_BENCH=1 (bench/scripts/containerd-vm.sh)")
	}
	a, b, _, reg := twoHosts(t)

	const layerMiB = 24
	archive := filepath.Join(a.dir, "bench-oci.tar")
	layer := func(n uint64) ociLayer {
		return ociLayer{fmt.Sprintf("data/l%d", n): testkit.RandomBytes(layerMiB<<20, 100+n), fmt.Sprintf("etc/l%d", n): []byte(fmt.Sprintf("layer %d\n", n))}
	}
	writeOCIArchive(t, archive, "docker.io/library/busybox:bench", layer(1), layer(2), layer(3))
	st, err := os.Stat(archive)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.addr + "/e2e/busybox:bench"
	for _, e := range []*ctrEnv{a, b} {
		e.startSnapshotter()
		e.startContainerd()
	}
	reg.push(a, archive, "docker.io/library/busybox:bench", ref)

	const want = "layer 1\nlayer 2\nlayer 3\n"
	// pullStart returns the pull's time and the pull+start's.
	pullStart := func(e *ctrEnv, snapshotter, name string) (time.Duration, time.Duration) {
		t.Helper()
		start := time.Now()
		pull := e.pull(ref, snapshotter)
		out := e.mustCtr("run", "--rm", "--snapshotter", snapshotter, ref, name, "cat", "/etc/l1", "/etc/l2", "/etc/l3")
		d := time.Since(start)
		if out != want {
			t.Fatalf("%s's container on %s reads %q, want %q", e.label, snapshotter, out, want)
		}
		return pull, d
	}

	pullA, coldA := pullStart(a, a.name, "a-bench")
	mark := reg.size()
	pullB, sharedB := pullStart(b, b.name, "b-bench")
	fetched := 0
	for _, got := range reg.blobGets(mark) {
		if isLayer(t, archive, got) {
			fetched++
		}
	}
	if fetched != 0 {
		t.Errorf("host B fetched %d layer blobs: not the shared case", fetched)
	}

	// overlayfs, cold: B drops the image (and its content), then its
	// containerd restarts with the overlayfs root on a tmpfs.
	b.mustCtr("images", "rm", "--sync", ref)
	ovl := filepath.Join(b.dir, "containerd-root", "io.containerd.snapshotter.v1.overlayfs")
	b.stopContainerd()
	os.MkdirAll(ovl, 0o700)
	testkit.Must(t, time.Minute, "mount", "-t", "tmpfs", "tmpfs", ovl)
	t.Cleanup(func() { testkit.Run(t, time.Minute, "umount", "-l", ovl) })
	b.startContainerd()
	mark = reg.size()
	pullO, overlay := pullStart(b, "overlayfs", "o-bench")
	if n := len(reg.blobGets(mark)); n < 4 {
		t.Errorf("the overlayfs pull fetched %d blobs, want the 4 layers at least: not cold", n)
	}
	b.mustCtr("images", "rm", "--sync", ref)

	line := fmt.Sprintf("image_mib=%.1f a_cold_s=%.2f b_shared_s=%.2f overlayfs_cold_s=%.2f b_over_a=%.2f b_over_overlayfs=%.2f overlayfs_over_a=%.2f a_pull_s=%.2f b_pull_s=%.2f overlayfs_pull_s=%.2f\n",
		float64(st.Size())/(1<<20), coldA.Seconds(), sharedB.Seconds(), overlay.Seconds(),
		sharedB.Seconds()/coldA.Seconds(), sharedB.Seconds()/overlay.Seconds(), overlay.Seconds()/coldA.Seconds(),
		pullA.Seconds(), pullB.Seconds(), pullO.Seconds())
	t.Logf("pull+start: %s", line)
	if vm := os.Getenv("VM_OUT"); vm != "" {
		if err := os.WriteFile(filepath.Join(vm, "containerd-bench.txt"), []byte(line), 0o644); err != nil {
			t.Error(err)
		}
	}
}
