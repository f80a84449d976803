//go:build vmtest

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nbdLoadedAtStart records whether the nbd module was loaded before any
// test ran (the guest boots without it; cli_test.go checks map loads it).
var nbdLoadedAtStart bool

func TestMain(m *testing.M) {
	_, err := os.Stat("/sys/module/nbd")
	nbdLoadedAtStart = err == nil
	os.Exit(m.Run())
}

// required reports whether missing prerequisites must fail the test
// instead of skipping it (make vmtest sets RBD_NBD_GRAPH_REQUIRE=1).
func required() bool { return os.Getenv("RBD_NBD_GRAPH_REQUIRE") == "1" }

// need skips (or, under RBD_NBD_GRAPH_REQUIRE=1, fails) when ok is false.
func need(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if required() {
		t.Fatalf("missing prerequisite (RBD_NBD_GRAPH_REQUIRE=1): %s", msg)
	}
	t.Skipf("skipped: %s (set RBD_NBD_GRAPH_REQUIRE=1 to fail instead)", msg)
}

func needRoot(t *testing.T) {
	t.Helper()
	need(t, os.Geteuid() == 0, "needs root (run it in the VM: make vmtest)")
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		_, err := exec.LookPath(tool)
		need(t, err == nil, "needs %s in PATH (make deps)", tool)
	}
}

// needKernelNBD: the nbd module must be loadable here (the VM's kernel).
func needKernelNBD(t *testing.T) {
	t.Helper()
	needRoot(t)
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	_, err := os.Stat("/sys/module/nbd")
	if err == nil {
		return
	}
	_, err = os.Stat(filepath.Join("/lib/modules", strings.TrimSpace(string(rel)), "modules.dep"))
	need(t, err == nil, "needs a kernel with the nbd module (run it in the VM: make vmtest)")
}

// needCeph: a running test cluster named by CEPH_CONF.
func needCeph(t *testing.T) {
	t.Helper()
	needTools(t, "rbd", "ceph")
	need(t, os.Getenv("CEPH_CONF") != "", "needs CEPH_CONF naming a running cluster (test/ceph/cluster start DIR)")
}

// bin is the rbd-nbd-graph binary under test.
func bin(t *testing.T) string {
	t.Helper()
	p := os.Getenv("RBD_NBD_GRAPH_BIN")
	if p == "" {
		p = "../../bin/rbd-nbd-graph"
	}
	abs, err := filepath.Abs(p)
	if err == nil {
		_, err = os.Stat(abs)
	}
	need(t, err == nil, "needs the rbd-nbd-graph binary (make build, or RBD_NBD_GRAPH_BIN): %v", err)
	return abs
}

// run runs a command with a timeout and returns its combined output.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("$ %s %s  (%.1fs)", name, strings.Join(args, " "), time.Since(start).Seconds())
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, timeout)
	}
	return out.String(), err
}

// must runs a command that has to succeed.
func must(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := run(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// uniqueName is a fresh image name for one test.
func uniqueName(t *testing.T) string {
	var b [3]byte
	rand.Read(b[:])
	n := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(n) > 40 {
		n = n[:40]
	}
	return "e2e-" + n + "-" + hex.EncodeToString(b[:])
}

// newImage creates an RBD image in pool rbd and removes it at the end
// (after the test's mappings are gone: cleanups run last-in first-out).
// features "" means the cluster's defaults.
func newImage(t *testing.T, sizeMiB int, features string) string {
	t.Helper()
	needCeph(t)
	spec := "rbd/" + uniqueName(t)
	args := []string{"create", "--size", fmt.Sprintf("%dM", sizeMiB)}
	if features != "" {
		args = append(args, "--image-feature", features)
	}
	must(t, time.Minute, "rbd", append(args, spec)...)
	t.Cleanup(func() {
		if out, err := run(t, 2*time.Minute, "rbd", "rm", "--no-progress", spec); err != nil {
			t.Errorf("removing %s: %v\n%s", spec, err, out)
		}
	})
	return spec
}

// mapDevice runs `rbd-nbd-graph map [flags] TARGET` and returns the device
// it printed. Cleanup unmaps it if the test has not.
func mapDevice(t *testing.T, target string, flags ...string) string {
	t.Helper()
	needKernelNBD(t)
	args := append([]string{"map"}, flags...)
	args = append(args, target)
	out := must(t, 3*time.Minute, bin(t), args...)
	dev := strings.TrimSpace(out)
	if _, err := deviceIndex(dev); err != nil {
		t.Fatalf("map printed %q, want a device path", out)
	}
	t.Cleanup(func() {
		if !isConnected(t, dev) {
			return
		}
		if out, err := run(t, 2*time.Minute, bin(t), "unmap", "--force", dev); err != nil {
			t.Errorf("cleanup: unmap %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}

func unmap(t *testing.T, devOrTarget string) {
	t.Helper()
	must(t, 2*time.Minute, bin(t), "unmap", devOrTarget)
}

func deviceIndex(dev string) (int, error) {
	n, ok := strings.CutPrefix(dev, "/dev/nbd")
	if !ok {
		return -1, errors.New("not /dev/nbdN")
	}
	return strconv.Atoi(n)
}

// sysBlock reads /sys/block/nbdN/NAME ("" if absent).
func sysBlock(t *testing.T, dev, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// isConnected: the kernel has a configuration for dev (sysfs pid exists).
func isConnected(t *testing.T, dev string) bool {
	t.Helper()
	return sysBlock(t, dev, "pid") != ""
}

// servingPID is the process that connected dev. The kernel records the
// thread that sent CONNECT; /proc/TID/status names its process.
func servingPID(t *testing.T, dev string) int {
	t.Helper()
	tid, err := strconv.Atoi(sysBlock(t, dev, "pid"))
	if err != nil {
		t.Fatalf("%s has no serving pid in sysfs: %v", dev, err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		t.Fatalf("thread %d that connected %s: %v", tid, dev, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			if pid, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no Tgid in /proc/%d/status", tid)
	return 0
}

func deviceBytes(t *testing.T, dev string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(sysBlock(t, dev, "size"), 10, 64)
	if err != nil {
		t.Fatalf("size of %s: %v", dev, err)
	}
	return n * 512
}

// processAlive: pid exists and is not a zombie (in the guest, orphaned
// servers are reparented to a PID 1 that may not reap them at once).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// eventually polls cond every 50ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mountDir mounts dev on a fresh folder (outside /tmp: the guest's /tmp
// is a small tmpfs) and unmounts it at cleanup if still mounted.
func mountDev(t *testing.T, dev string, opts ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp(workDir(t), "mnt-")
	if err != nil {
		t.Fatal(err)
	}
	args := append(opts, dev, dir)
	must(t, 2*time.Minute, "mount", args...)
	t.Cleanup(func() {
		if mounted(dir) {
			run(t, time.Minute, "umount", dir)
		}
	})
	return dir
}

func mounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mounts")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}

// workDir is a scratch folder for one test on a disk-backed path.
func workDir(t *testing.T) string {
	t.Helper()
	base := os.Getenv("E2E_WORKDIR")
	if base == "" {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func errorsIsErrno(err error, errno error) bool { return errors.Is(err, errno) }
