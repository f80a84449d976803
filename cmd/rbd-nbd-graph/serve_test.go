package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/rbdstore"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

func TestReadOptionFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "opts")
	os.WriteFile(p, []byte("# layers\nrbd.pool=layers\n\n  rbd.fs=xfs  \nrbd.basesize=1G\n"), 0o600)
	got, err := readOptionFile(p)
	if err != nil || strings.Join(got, " ") != "rbd.pool=layers rbd.fs=xfs rbd.basesize=1G" {
		t.Fatalf("readOptionFile: %q, %v", got, err)
	}
	os.WriteFile(p, []byte("rbd.pool layers\n"), 0o600)
	if _, err := readOptionFile(p); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("a line without '=': %v", err)
	}
}

func TestServeRefusesBadOptions(t *testing.T) {
	env := &environment{stdout: io.Discard, stderr: io.Discard, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	dir := t.TempDir()
	for _, args := range [][]string{
		{"-o", "rbd.bogus=1"},
		{"-o", "rbd.fs=zfs"},
		{"--config", filepath.Join(dir, "missing")},
		{"--name", "../x"},
		{"--rbd-cache-policy", "off"},
		{"extra"},
	} {
		args = append(args, "--socket", filepath.Join(dir, "s.sock"), "--state", filepath.Join(dir, "state.json"))
		if err := runServe(context.Background(), env, args); err == nil {
			t.Errorf("serve %v: no error", args)
		}
	}
}

// On a host without NBD the plugin serves, and dockerd's Init gets the
// kernel-support error (not a hang, not a half-made base image).
func TestServeWithoutKernelNBD(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Skip("this kernel has NBD: the VM tests cover the full path")
	}
	testkit.RequireRoot(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "p.sock")
	env := &environment{stdout: io.Discard, stderr: io.Discard, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runServe(ctx, env, []string{"--socket", sock, "--state", filepath.Join(dir, "state.json"),
			"-o", "rbd.configfile=" + filepath.Join(dir, "no-ceph.conf")})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	var resp *http.Response
	var err error
	for i := 0; i < 100; i++ {
		body, _ := json.Marshal(map[string]any{"Home": filepath.Join(dir, "home")})
		resp, err = c.Post("http://p/GraphDriver.Init", "application/json", bytes.NewReader(body))
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Err string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.Err, "no NBD support") || !strings.Contains(out.Err, "Kernel support") {
		t.Fatalf("Init on a host without NBD: %q", out.Err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed Init was recorded for resuming: %v", err)
	}
}

// The Ceph flags' cache policy defaults to none, as the driver option
// rbd.cachepolicy does (one parser, rbdio's, reads both).
func TestCachePolicyFlag(t *testing.T) {
	var c cephFlags
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.register(fs)
	if c.config("rbd", "").CachePolicy != rbdio.CacheNone || defaultBackendOptions().store.CachePolicy != rbdio.CacheNone {
		t.Errorf("default policy %q (flag), %q (driver option); want none", c.cachePolicy, defaultBackendOptions().store.CachePolicy)
	}
	if err := fs.Parse([]string{"--rbd-cache-policy", "writeback"}); err != nil || c.config("rbd", "").CachePolicy != rbdio.CacheWriteback {
		t.Errorf("--rbd-cache-policy writeback: %v, %q", err, c.cachePolicy)
	}
	if err := fs.Parse([]string{"--rbd-cache-policy", "off"}); err == nil {
		t.Error("--rbd-cache-policy off accepted")
	}
}

// serve's Ceph flags reach the driver as the rbd.* options they stand
// for (the fault options were registered on serve without reaching it).
func TestServeCephFlagsBecomeDriverOptions(t *testing.T) {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	var c cephFlags
	c.register(fs)
	if err := fs.Parse([]string{"--osd-timeout", "7s", "--connect-timeout", "3s", "--abort-on-full", "--id", "driver",
		"--rbd-cache-policy", "writethrough", "--ceph-conf", "/etc/ceph/x.conf", "--keyring", "/k"}); err != nil {
		t.Fatal(err)
	}
	o, err := parseBackendOptions(c.driverOptions(fs))
	if err != nil {
		t.Fatal(err)
	}
	want := rbdstore.DefaultOptions()
	want.OSDTimeout, want.ConnectTimeout, want.AbortOnFull, want.Client = 7*time.Second, 3*time.Second, true, "driver"
	want.CachePolicy, want.ConfigFile, want.Keyring = rbdio.CacheWritethrough, "/etc/ceph/x.conf", "/k"
	if o.store != want {
		t.Fatalf("store options from the flags: %+v, want %+v", o.store, want)
	}
}
