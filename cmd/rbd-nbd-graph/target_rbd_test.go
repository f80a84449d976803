package main

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestParseRBDTarget(t *testing.T) {
	for spec, want := range map[string]rbdTarget{
		"rbd/img":          {pool: "rbd", image: "img"},
		"rbd/img@s1":       {pool: "rbd", image: "img", snap: "s1"},
		"pool/ns/img":      {pool: "pool", namespace: "ns", image: "img"},
		"pool/ns/img@snap": {pool: "pool", namespace: "ns", image: "img", snap: "snap"},
	} {
		got, err := parseRBDTarget(spec)
		if err != nil || got != want {
			t.Errorf("parseRBDTarget(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, bad := range []string{"img", "rbd/", "/img", "rbd/img@", "a/b/c/d", "pool//img"} {
		if _, err := parseRBDTarget(bad); err == nil {
			t.Errorf("parseRBDTarget(%q) accepted", bad)
		}
	}
}

// A malformed spec is a usage error, found before any connection.
func TestOpenRBDTargetUsage(t *testing.T) {
	_, _, err := openRBDTarget(context.Background(), "a/b/c/d", cephFlags{}, false)
	if !errors.Is(err, errUsage) {
		t.Fatalf("err = %v, want errUsage", err)
	}
}

// --osd-timeout, --connect-timeout and --abort-on-full reach
// rbdio.Config; bad values are refused.
func TestOSDTimeoutFlag(t *testing.T) {
	var c cephFlags
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.register(fs)
	if got := c.config("rbd", "").OSDTimeout; got != 0 {
		t.Errorf("default OSD timeout %v, want 0 (wait)", got)
	}
	if err := fs.Parse([]string{"--osd-timeout", "45s"}); err != nil || c.config("rbd", "").OSDTimeout != 45*time.Second {
		t.Errorf("--osd-timeout 45s: %v, %v", err, c.osdTimeout)
	}
	if err := fs.Parse([]string{"--abort-on-full", "--connect-timeout", "5s"}); err != nil ||
		!c.config("rbd", "").AbortOnFull || c.config("rbd", "").ConnectTimeout != 5*time.Second {
		t.Errorf("--abort-on-full --connect-timeout 5s: %v, %+v", err, c.config("rbd", ""))
	}
	for _, bad := range []string{"-1s", "soon"} {
		if err := fs.Parse([]string{"--osd-timeout", bad}); err == nil {
			t.Errorf("--osd-timeout %s accepted", bad)
		}
	}
}
