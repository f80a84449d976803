//go:build vmtest

package e2e

import (
	"encoding/json"
	"os"
	"strconv"
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

// detach stops the server and keeps the device, as rbd-nbd's detach:
// the device stays connected with no server, list shows it with pid 0,
// and attach serves it again with the data written before. list
// --format json carries rbd-nbd's list-mapped fields.
func TestDetachAttach(t *testing.T) {
	testkit.RequireKernelNBD(t)
	needCeph(t)
	image := newImage(t, 64, "")
	pool, name, _ := strings.Cut(image, "/")
	dev := mapDevice(t, image)
	pid := servingPID(t, dev)

	var raw []map[string]any
	out := testkit.Must(t, time.Minute, testkit.Binary(t), "list", "--format", "json")
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("list --format json: %v\n%s", err, out)
	}
	var e map[string]any
	for _, r := range raw {
		if r["device"] == dev {
			e = r
		}
	}
	want := map[string]any{"id": float64(pid), "pool": pool, "namespace": "", "image": name, "snap": "",
		"device": dev, "cookie": "rbd-nbd-graph:rbd:" + image, "pid": float64(pid), "target": "rbd:" + image}
	for k, v := range want {
		if e == nil || e[k] != v {
			t.Errorf("list --format json: %s = %#v, want %#v (entry %v)", k, e[k], v, e)
		}
	}

	pattern := make([]byte, 4096)
	for i := range pattern {
		pattern[i] = byte(i * 7)
	}
	writeAt(t, dev, pattern)

	testkit.Must(t, 2*time.Minute, testkit.Binary(t), "detach", image)
	if processAlive(pid) {
		t.Errorf("the server %d is alive after detach", pid)
	}
	if !isConnected(t, dev) {
		t.Fatalf("%s is not connected after detach: detach must keep the device", dev)
	}
	if e := findEntry(listJSON(t), dev); e == nil || e.PID != 0 || !e.Connected {
		t.Errorf("list after detach: %+v; want %s connected with no server", e, dev)
	}
	if out, err := testkit.Run(t, time.Minute, testkit.Binary(t), "detach", dev); err == nil || !strings.Contains(out, "detached already") {
		t.Errorf("a second detach: err %v, output %q; want 'detached already'", err, out)
	}

	got := strings.TrimSpace(testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", image))
	if got != dev {
		t.Fatalf("attach printed %q, want %s", got, dev)
	}
	if b := readBack(t, dev, len(pattern)); string(b) != string(pattern) {
		t.Errorf("data written before detach did not survive detach and attach")
	}
	// sysfs's pid still names the thread that sent CONNECT (dead now):
	// list reads the server's own record.
	if e := findEntry(listJSON(t), dev); e == nil || e.PID == pid || !processAlive(e.PID) {
		t.Errorf("list after attach: %+v (server before detach %d); want a new live server", e, pid)
	}
}

func writeAt(t *testing.T, dev string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readBack(t *testing.T, dev string, n int) []byte {
	t.Helper()
	// Drop the page cache so the read goes to the new server.
	testkit.Run(t, time.Minute, "blockdev", "--flushbufs", dev) //nolint:errcheck
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// The largest request the kernel sends the device: map sets 1 MiB (the
// nbd driver starts every device at 128 KiB), so a 1 MiB direct read is
// one request, not eight; --max-sectors-kb sets another, which attach
// keeps.
func TestMapLargestRequest(t *testing.T) {
	testkit.RequireKernelNBD(t)
	needCeph(t)
	image := newImage(t, 64, "")
	dev := mapDevice(t, image)
	if got := sysBlock(t, dev, "queue/max_sectors_kb"); got != "1024" {
		t.Errorf("%s max_sectors_kb = %s, want 1024", dev, got)
	}
	testkit.Must(t, time.Minute, "dd", "if=/dev/urandom", "of="+dev, "bs=1M", "count=4", "oflag=direct")
	before := readIOs(t, dev)
	testkit.Must(t, time.Minute, "dd", "if="+dev, "of=/dev/null", "bs=1M", "count=4", "iflag=direct")
	if n := readIOs(t, dev) - before; n != 4 {
		t.Errorf("a 4 MiB direct read in 1 MiB reads took %d requests, want 4", n)
	}
	unmap(t, dev)

	dev = mapDevice(t, image, "--max-sectors-kb", "256")
	if got := sysBlock(t, dev, "queue/max_sectors_kb"); got != "256" {
		t.Errorf("--max-sectors-kb 256: %s max_sectors_kb = %s", dev, got)
	}
	testkit.Must(t, 2*time.Minute, testkit.Binary(t), "detach", image)
	testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", image)
	if got := sysBlock(t, dev, "queue/max_sectors_kb"); got != "256" {
		t.Errorf("after detach and attach: %s max_sectors_kb = %s, want 256 kept", dev, got)
	}
	unmap(t, dev)

	if out, err := testkit.Run(t, time.Minute, testkit.Binary(t), "map", "--max-sectors-kb", "2", image); err == nil || !strings.Contains(out, "largest request") {
		t.Errorf("--max-sectors-kb 2: err %v, output %q; want a range error", err, out)
	}
}

// readIOs is the device's count of completed reads (/sys/block/X/stat).
func readIOs(t *testing.T, dev string) int {
	t.Helper()
	f := strings.Fields(sysBlock(t, dev, "stat"))
	if len(f) == 0 {
		t.Fatalf("%s has no stat", dev)
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
