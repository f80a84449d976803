package main

import (
	"context"
	"errors"
	"testing"
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
