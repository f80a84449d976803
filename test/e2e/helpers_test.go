//go:build vmtest

package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// nbdLoadedAtStart records whether the nbd module was loaded before any
// test ran (the guest boots without it; cli_test.go checks map loads it).
var nbdLoadedAtStart bool

func TestMain(m *testing.M) {
	_, err := os.Stat("/sys/module/nbd")
	nbdLoadedAtStart = err == nil
	testkit.Main(m)
}

// needCeph: a running test cluster named by CEPH_CONF, and its CLI.
func needCeph(t testing.TB) {
	t.Helper()
	testkit.RequireTools(t, "rbd", "ceph")
	testkit.CephConf(t)
}

// newImage creates an RBD image in pool rbd and removes it at the end
// (after the test's mappings are gone: cleanups run last-in first-out).
// features "" means the cluster's defaults.
func newImage(t *testing.T, sizeMiB int, features string) string {
	t.Helper()
	needCeph(t)
	spec := "rbd/" + testkit.UniqueName(t, "e2e-")
	args := []string{"create", "--size", fmt.Sprintf("%dM", sizeMiB)}
	if features != "" {
		args = append(args, "--image-feature", features)
	}
	testkit.Must(t, time.Minute, "rbd", append(args, spec)...)
	t.Cleanup(func() {
		if out, err := testkit.Run(t, 2*time.Minute, "rbd", "rm", "--no-progress", spec); err != nil {
			t.Errorf("removing %s: %v\n%s", spec, err, out)
		}
	})
	return spec
}

// mapDevice runs `rbd-nbd-graph map [flags] TARGET` and returns the device
// it printed. Cleanup unmaps it if the test has not.
func mapDevice(t *testing.T, target string, flags ...string) string {
	t.Helper()
	testkit.RequireKernelNBD(t)
	args := append([]string{"map"}, flags...)
	args = append(args, target)
	out := testkit.Must(t, 3*time.Minute, testkit.Binary(t), args...)
	dev := strings.TrimSpace(out)
	if _, err := deviceIndex(dev); err != nil {
		t.Fatalf("map printed %q, want a device path", out)
	}
	t.Cleanup(func() {
		if !isConnected(t, dev) {
			return
		}
		if out, err := testkit.Run(t, 2*time.Minute, testkit.Binary(t), "unmap", "--force", dev); err != nil {
			t.Errorf("cleanup: unmap %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}

func unmap(t *testing.T, devOrTarget string) {
	t.Helper()
	testkit.Must(t, 2*time.Minute, testkit.Binary(t), "unmap", devOrTarget)
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

// mountDir mounts dev on a fresh folder (outside /tmp: the guest's /tmp
// is a small tmpfs) and unmounts it at cleanup if still mounted.
func mountDev(t *testing.T, dev string, opts ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp(workDir(t), "mnt-")
	if err != nil {
		t.Fatal(err)
	}
	args := append(opts, dev, dir)
	testkit.Must(t, 2*time.Minute, "mount", args...)
	t.Cleanup(func() {
		if mounted(dir) {
			testkit.Run(t, time.Minute, "umount", dir)
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

// workDir is a scratch folder for one test, removed at the end, on a
// disk-backed path (E2E_WORKDIR: outside the guest's small /tmp).
func workDir(t testing.TB) string {
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
