//go:build vmtest

package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

type listEntry struct {
	Device    string `json:"device"`
	Index     int    `json:"index"`
	Target    string `json:"target"`
	PID       int    `json:"pid"`
	Size      int64  `json:"size"`
	ReadOnly  bool   `json:"read_only"`
	Connected bool   `json:"connected"`
}

func listJSON(t *testing.T) []listEntry {
	t.Helper()
	out := testkit.Must(t, time.Minute, testkit.Binary(t), "list", "--format", "json")
	var l []listEntry
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("list --format json is not JSON: %v\n%s", err, out)
	}
	return l
}

func findEntry(l []listEntry, dev string) *listEntry {
	for i := range l {
		if l[i].Device == dev {
			return &l[i]
		}
	}
	return nil
}

// unloadNBD removes the nbd module when it is loaded and unused, so the
// test can show that map loads it.
func unloadNBD(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		return
	}
	out, err := testkit.Run(t, time.Minute, "modprobe", "-r", "nbd")
	if err != nil {
		t.Fatalf("the nbd module is loaded and cannot be unloaded (a device still in use?): %v\n%s", err, out)
	}
}

// The whole CLI cycle on an RBD image, starting from a kernel with no nbd
// module: map (bare POOL/IMAGE) loads the module, attaches over netlink,
// prints the device; list shows it in both formats; unmap frees the
// device and the background server exits; a second map (rbd: form) is
// unmapped by its TARGET.
func TestMapListUnmap(t *testing.T) {
	testkit.RequireKernelNBD(t)
	needCeph(t)
	t.Logf("nbd module loaded when the suite started: %v", nbdLoadedAtStart)
	unloadNBD(t)
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Fatal("nbd is still loaded")
	}
	image := newImage(t, 64, "")

	dev := mapDevice(t, image)
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		t.Fatalf("map succeeded but the nbd module is not loaded: %v", err)
	}
	if got := deviceBytes(t, dev); got != 64<<20 {
		t.Errorf("%s has %d bytes, want %d", dev, got, 64<<20)
	}
	pid := servingPID(t, dev)
	if pid == os.Getpid() || !processAlive(pid) {
		t.Fatalf("serving pid %d: want a live background process", pid)
	}
	if got := sysBlock(t, dev, "backend"); got != "rbd-nbd-graph:rbd:"+image {
		t.Errorf("backend identifier %q", got)
	}

	plain := testkit.Must(t, time.Minute, testkit.Binary(t), "list")
	t.Logf("list:\n%s", plain)
	if !strings.Contains(plain, dev) || !strings.Contains(plain, "rbd:"+image) || !strings.Contains(plain, "64.0 MiB") {
		t.Errorf("plain list lacks the device, its target or its size:\n%s", plain)
	}
	e := findEntry(listJSON(t), dev)
	if e == nil {
		t.Fatalf("list --format json does not show %s", dev)
	}
	if e.Target != "rbd:"+image || e.PID != pid || e.Size != 64<<20 || e.ReadOnly || !e.Connected {
		t.Errorf("json entry %+v: want target rbd:%s, pid %d, 64 MiB, rw, connected", *e, image, pid)
	}

	unmap(t, dev)
	if isConnected(t, dev) {
		t.Errorf("%s still connected after unmap", dev)
	}
	if processAlive(pid) {
		t.Errorf("the serving process %d is still alive after unmap", pid)
	}
	if e := findEntry(listJSON(t), dev); e != nil {
		t.Errorf("list still shows %s after unmap: %+v", dev, *e)
	}
	if got := sysBlock(t, dev, "size"); got != "0" {
		t.Errorf("%s size %s after unmap, want 0", dev, got)
	}

	// Second round: rbd: spelling, unmapped by TARGET (bare spelling).
	dev2 := mapDevice(t, "rbd:"+image)
	pid2 := servingPID(t, dev2)
	unmap(t, image)
	if isConnected(t, dev2) || processAlive(pid2) {
		t.Errorf("unmap by target left %s connected=%v, server alive=%v", dev2, isConnected(t, dev2), processAlive(pid2))
	}
}

// Bad input: a missing image fails map with a clear error and leaves no
// device behind; unmapping a device that is not mapped fails.
func TestMapErrors(t *testing.T) {
	testkit.RequireKernelNBD(t)
	needCeph(t)
	before := len(listJSON(t))
	out, err := testkit.Run(t, 2*time.Minute, testkit.Binary(t), "map", "rbd/no-such-image-e2e")
	if err == nil {
		t.Fatalf("map of a missing image succeeded:\n%s", out)
	}
	if !strings.Contains(out, "no-such-image-e2e") {
		t.Errorf("the error does not name the image:\n%s", out)
	}
	if after := len(listJSON(t)); after != before {
		t.Errorf("%d mapped devices after the failed map, %d before", after, before)
	}
	out, err = testkit.Run(t, time.Minute, testkit.Binary(t), "unmap", "/dev/nbd63")
	if err == nil {
		t.Errorf("unmap of an unmapped device succeeded:\n%s", out)
	}
	out, err = testkit.Run(t, time.Minute, testkit.Binary(t), "map", "--connections", "0", "mem:64M")
	if err == nil || !strings.Contains(out, "connections") {
		t.Errorf("map --connections 0: err %v, output %q; want a usage error naming the flag", err, out)
	}
}
