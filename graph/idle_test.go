package graph_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// Tests of rbd.unmountdelay: the last Put leaves the layer mounted, idle,
// for a while (graph.Driver.keepIdle).

func withUnmountDelay(d time.Duration) func(*graph.Config) {
	return func(c *graph.Config) { c.Options.UnmountDelay = d }
}

// A Get soon after the last Put takes the idle mount: no second attach
// or mount.
func TestIdleLayerIsTakenAgain(t *testing.T) {
	e := newEnv(t, withUnmountDelay(time.Hour))
	e.create("l", "")
	dir := e.get("l")
	dev := e.metadata("l")["Device"]
	e.put("l")
	if !isMounted(t, filepath.Dir(dir)) || e.metadata("l")["Device"] != dev {
		t.Fatalf("after the last Put: mounted %v, device %q; want it kept mounted on %s",
			isMounted(t, filepath.Dir(dir)), e.metadata("l")["Device"], dev)
	}
	mounts := e.fs.mounts.Load()
	if got := e.get("l"); got != dir {
		t.Fatalf("Get of the idle layer: %s, want %s", got, dir)
	}
	if n := e.fs.mounts.Load(); n != mounts {
		t.Fatalf("Get of the idle layer mounted again (%d mounts, want %d)", n, mounts)
	}
	e.put("l")
}

// The idle mount goes when the delay has passed, with its device and
// image.
func TestIdleLayerIsUnmountedAfterTheDelay(t *testing.T) {
	e := newEnv(t, withUnmountDelay(200*time.Millisecond))
	e.create("l", "")
	mp := filepath.Dir(e.get("l"))
	dev := e.metadata("l")["Device"]
	e.put("l")
	testkit.Eventually(t, 10*time.Second, "the idle layer to be unmounted and detached (delay 200ms)", func() bool {
		return !isMounted(t, mp) && e.metadata("l")["Device"] == "" && e.att.Attached()[dev] == (graph.ImageRef{})
	})
	if e.store.InUse(graph.ImageRef{Image: "t-layer-l"}) != 0 {
		t.Fatal("image still open")
	}
}

// Once Put returns, what the layer's user wrote is on the device, as an
// unmount would leave it, though the filesystem stays mounted: a copy of
// the image taken then (what a crash of the host would leave) holds it.
func TestIdleLayerIsDurableAtPut(t *testing.T) {
	e := newEnv(t, withUnmountDelay(time.Hour))
	e.create("l", "")
	dir := e.get("l")
	want := "written just before the Put"
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
	e.put("l")
	if got := readFromCopy(t, e.store.DataPath(graph.ImageRef{Image: "t-layer-l"}), "rootfs/f"); got != want {
		t.Fatalf("a copy of the image taken after Put reads %q, want %q", got, want)
	}
}

// When it cannot sync, Put unmounts at once instead of keeping the layer.
func TestPutUnmountsWhenItCannotSync(t *testing.T) {
	e := newEnv(t, withUnmountDelay(time.Hour))
	e.create("l", "")
	mp := filepath.Dir(e.get("l"))
	e.fs.failSync.Store(true)
	e.put("l")
	if isMounted(t, mp) || e.metadata("l")["Device"] != "" {
		t.Fatal("Put kept a layer it could not sync")
	}
}

// A layer getting its first child is unmounted rather than frozen for
// its snapshot: a process that died meanwhile would leave it frozen.
func TestIdleLayerGoesBeforeItsSnapshot(t *testing.T) {
	e := newEnv(t, withUnmountDelay(time.Hour))
	e.create("p", "")
	e.write("p", "f", "parent")
	mp := filepath.Join(e.cfg.Home, "mnt", "p")
	if !isMounted(t, mp) {
		t.Fatalf("%s not mounted after the Put: the test's premise fails", mp)
	}
	e.create("child", "p")
	if isMounted(t, mp) {
		t.Fatal("the parent's idle mount is still there after its snapshot")
	}
	if got := e.read("child", "f"); got != "parent" {
		t.Fatalf("child reads %q", got)
	}
	if e.get("p"); e.metadata("p")["ReadOnly"] != "true" {
		t.Fatal("the parent is mounted read-write after its snapshot")
	}
	e.put("p")
}

// Remove of an idle layer unmounts it and deletes it.
func TestRemoveOfAnIdleLayer(t *testing.T) {
	e := newEnv(t, withUnmountDelay(time.Hour))
	e.create("l", "")
	mp := filepath.Dir(e.get("l"))
	e.put("l")
	e.remove("l")
	if isMounted(t, mp) {
		t.Fatal("a removed idle layer is still mounted")
	}
	if names := e.images("t-layer-l"); len(names) != 0 {
		t.Fatalf("images left: %v", names)
	}
}

// Release (a restart) hands every mount over, the idle ones too (their
// unmount writes to the cluster, which may be what hangs); the next
// process adopts those without a reference and unmounts them after its
// delay, and the layers in use with one.
func TestReleaseHandsIdleLayersOverIdle(t *testing.T) {
	e := newEnv(t, withUnmountDelay(time.Hour))
	e.create("used", "")
	e.create("idle", "")
	used := filepath.Dir(e.get("used"))
	idle := filepath.Dir(e.get("idle"))
	e.put("idle")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.d.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if !isMounted(t, used) || !isMounted(t, idle) {
		t.Fatalf("after Release: used mounted %v, idle mounted %v; want both handed over", isMounted(t, used), isMounted(t, idle))
	}
	e.cfg.Options.UnmountDelay = 200 * time.Millisecond
	e.d = e.open()
	testkit.Eventually(t, 10*time.Second, "the idle layer handed over to be unmounted after the next start (delay 200ms)", func() bool {
		return !isMounted(t, idle) && e.metadata("idle")["Device"] == ""
	})
	if !isMounted(t, used) || e.metadata("used")["Device"] == "" {
		t.Fatal("the next process did not keep the layer in use")
	}
	e.put("used")
}

// After a crash nothing says which mounts were idle: every mount found
// counts as in use, and stays until its Put.
func TestCrashAdoptsIdleLayersAsInUse(t *testing.T) {
	e := newEnvCrash(t, withUnmountDelay(time.Hour), true)
	e.create("l", "")
	mp := filepath.Dir(e.get("l"))
	e.put("l")
	e.cfg.Options.UnmountDelay = 10 * time.Millisecond
	e.d = e.open()
	time.Sleep(300 * time.Millisecond)
	if !isMounted(t, mp) {
		t.Fatal("a mount found after a crash was unmounted without a Put")
	}
	e.put("l")
}

// AttachDevice of a layer idle after a Get unmounts it first.
func TestAttachDeviceTakesAnIdleLayer(t *testing.T) {
	e := newEnv(t, withUnmountDelay(time.Hour))
	e.create("l", "")
	mp := filepath.Dir(e.get("l"))
	e.put("l")
	ctx := context.Background()
	dev, err := e.d.AttachDevice(ctx, "l", true)
	if err != nil {
		t.Fatalf("AttachDevice of an idle layer: %v", err)
	}
	if isMounted(t, mp) {
		t.Fatal("the idle mount is still there")
	}
	if err := e.d.DetachDevice(ctx, "l"); err != nil {
		t.Fatalf("DetachDevice %s: %v", dev, err)
	}
}

// readFromCopy copies an ext4 image file, mounts the copy (replaying its
// journal) and reads name from it.
func readFromCopy(t *testing.T, image, name string) string {
	t.Helper()
	tmp := t.TempDir()
	cp := filepath.Join(tmp, "copy.img")
	if out, err := exec.Command("cp", "--sparse=always", image, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", cp, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount the copy: %v: %s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", "-d", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount the copy: %v: %s", err, out)
		}
	}()
	b, err := os.ReadFile(filepath.Join(mnt, name))
	if errors.Is(err, os.ErrNotExist) {
		return "<missing>"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
