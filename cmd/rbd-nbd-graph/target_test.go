package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"4096": 4096, "1K": 1 << 10, "64k": 64 << 10, "512M": 512 << 20, "1G": 1 << 30,
		"1GiB": 1 << 30, "2gb": 2 << 30, "3T": 3 << 40, "1P": 1 << 50, "100B": 100, "0": 0,
	}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "1X", "-1", "1GG", "9000000P"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestOpenTarget(t *testing.T) {
	ctx := context.Background()
	b, closeFn, err := openTarget(ctx, "mem:1M", cephFlags{}, false)
	if err != nil || b.Size() != 1<<20 {
		t.Fatalf("mem:1M: %v", err)
	}
	closeFn()

	p := filepath.Join(t.TempDir(), "disk")
	os.WriteFile(p, make([]byte, 8192), 0o600)
	b, closeFn, err = openTarget(ctx, "file:"+p, cephFlags{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(*nbd.File); !ok || b.Size() != 8192 {
		t.Fatalf("file: got %T size %d", b, b.Size())
	}
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}

	// More than any 64-bit address space gives a process: an error that
	// says so, not a panic.
	if _, _, err := openTarget(ctx, "mem:1P", cephFlags{}, false); err == nil || !strings.Contains(err.Error(), "cannot map it") {
		t.Errorf("mem:1P: %v, want an error saying it cannot be mapped", err)
	}

	for _, spec := range []string{"mem:", "mem:0", "file:", "rbd:pool", "rbd:/img", "rbd:pool/img@", "pool", "./x", "/dev/sda", "what:ever"} {
		if _, _, err := openTarget(ctx, spec, cephFlags{}, false); !errors.Is(err, errUsage) {
			t.Errorf("openTarget(%q) = %v, want a usage error", spec, err)
		}
	}
}

func TestCheckListenAddr(t *testing.T) {
	for _, a := range []string{"127.0.0.1:10809", "[::1]:1", "localhost:0"} {
		if exp, err := checkListenAddr(a, true); err != nil || exp != "" {
			t.Errorf("checkListenAddr(%q) = %q, %v; want no exposure", a, exp, err)
		}
	}
	for _, a := range []string{"0.0.0.0:10809", ":10809", "[::]:1", "192.0.2.1:10809", "nohostport"} {
		if _, err := checkListenAddr(a, false); !errors.Is(err, errUsage) {
			t.Errorf("checkListenAddr(%q) = %v, want a usage error", a, err)
		}
	}
	for _, a := range []string{"0.0.0.0:10809", ":10809", "[::]:1", "192.0.2.1:10809"} {
		if exp, err := checkListenAddr(a, true); err != nil || exp == "" {
			t.Errorf("--allow-remote %q: %q, %v; want an exposure to warn of", a, exp, err)
		}
	}
}
