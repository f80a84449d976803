package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

func testEnv() (*environment, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &environment{stdout: &out, stderr: &errb, log: slog.New(slog.NewTextHandler(io.Discard, nil))}, &out, &errb
}

// map's identifier is the one codec's (nbdattach, whose round-trip
// test covers the spellings); an empty target is a usage error.
func TestBackendID(t *testing.T) {
	id, err := backendID("rbd/img")
	if err != nil || id != "rbd-nbd-graph:rbd:rbd/img" {
		t.Errorf("backendID = %q, %v", id, err)
	}
	if _, err := backendID(""); !errors.Is(err, errUsage) {
		t.Errorf("empty target: %v, want a usage error", err)
	}
}

func TestMapFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"a", "b"},
		{"--connections", "0", "mem:1M"},
		{"--connections", "65", "mem:1M"},
		{"--io-timeout", "-1s", "mem:1M"},
		{"--device", "/dev/sda", "mem:1M"},
		{"--no-such-flag", "mem:1M"},
		{"--rbd-cache-policy", "fast", "rbd:rbd/x"},
		{"--rbd-submit", "fast", "rbd:rbd/x"},
	} {
		env, _, _ := testEnv()
		code := run(context.Background(), env, append([]string{"map"}, args...))
		if code != 2 {
			t.Errorf("map %v: exit %d, want 2 (usage)", args, code)
		}
	}
	env, _, errb := testEnv()
	if code := run(context.Background(), env, []string{"list", "--format", "xml"}); code != 2 || !strings.Contains(errb.String(), "plain or json") {
		t.Errorf("list --format xml: exit %d, %q", code, errb.String())
	}
}

// On a kernel without NBD (this machine), map fails cleanly in both modes
// with the kernel-support message, list is empty, unmap says there is no
// such device.
func TestKernelCommandsWithoutNBD(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Skip("this kernel has NBD; the VM suite covers the commands there")
	}
	if _, err := os.Stat("/lib/modules"); err == nil {
		t.Skip("this machine has kernel modules; the test is about kernels without NBD")
	}
	env, out, errb := testEnv()
	if code := run(context.Background(), env, []string{"map", "--foreground", "mem:1M"}); code != 1 {
		t.Errorf("map --foreground: exit %d, want 1", code)
	}
	if !strings.Contains(errb.String(), "no NBD support") || !strings.Contains(errb.String(), "Kernel support") {
		t.Errorf("map --foreground error %q lacks the kernel-support message", errb.String())
	}
	if out.Len() != 0 {
		t.Errorf("map printed %q on failure", out.String())
	}

	// Background mode: the child's failure comes back through the pipe.
	// It re-executes this test binary, which runs main only under
	// RBD_NBD_GRAPH_TEST_MAIN (see TestMain).
	env, out, errb = testEnv()
	os.Setenv("RBD_NBD_GRAPH_TEST_MAIN", "1")
	defer os.Unsetenv("RBD_NBD_GRAPH_TEST_MAIN")
	code := run(context.Background(), env, []string{"map", "--log-file", filepath.Join(t.TempDir(), "log"), "mem:1M"})
	if code != 1 || !strings.Contains(errb.String(), "no NBD support") {
		t.Errorf("background map: exit %d, stderr %q; want 1 and the kernel-support message", code, errb.String())
	}
	if out.Len() != 0 {
		t.Errorf("background map printed %q on failure", out.String())
	}

	env, out, _ = testEnv()
	if code := run(context.Background(), env, []string{"list", "--format", "json"}); code != 0 {
		t.Fatalf("list: exit %d", code)
	}
	var l []mapping
	if err := json.Unmarshal(out.Bytes(), &l); err != nil || len(l) != 0 {
		t.Errorf("list --format json = %q (%v), want []", out.String(), err)
	}
	env, _, errb = testEnv()
	if code := run(context.Background(), env, []string{"unmap", "/dev/nbd0"}); code != 1 || !strings.Contains(errb.String(), "no such nbd device") {
		t.Errorf("unmap: exit %d, %q", code, errb.String())
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 64 << 20: "64.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestMain lets a test run this binary as the command itself: map's
// background mode re-executes os.Executable(), which under go test is the
// test binary.
func TestMain(m *testing.M) {
	if os.Getenv("RBD_NBD_GRAPH_TEST_MAIN") == "1" {
		main()
	}
	testkit.Main(m)
}
