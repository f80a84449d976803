package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/sizes"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// targetForms is the list of accepted TARGET forms, for error messages.
const targetForms = "mem:SIZE (e.g. mem:1G), file:PATH, rbd:POOL/IMAGE[@SNAP] or POOL/IMAGE[@SNAP]"

// openTarget opens the backend a TARGET argument names:
//
//	mem:SIZE                 a sparse in-memory disk (SIZE like 512M, 1G, 4096)
//	file:PATH                an existing regular file or block device
//	rbd:POOL/IMAGE[@SNAP]    an RBD image (openRBDTarget, target_rbd.go)
//	POOL/IMAGE[@SNAP]        the same as rbd:
//
// The close function releases the backend; call it once serving ended.
func openTarget(ctx context.Context, spec string, c cephFlags, readOnly bool) (nbd.Backend, func() error, error) {
	kind, rest, found := strings.Cut(spec, ":")
	if !found {
		kind, rest = "", spec
	}
	switch kind {
	case "mem":
		size, err := parseSize(rest)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: target %q: %v", errUsage, spec, err)
		}
		if size <= 0 {
			return nil, nil, fmt.Errorf("%w: target %q: the size must be positive", errUsage, spec)
		}
		m, err := nbd.MapMemory(size)
		if err != nil {
			return nil, nil, fmt.Errorf("target %q: %w (use a smaller size: the whole size is mapped up front)", spec, err)
		}
		return m, func() error { return nil }, nil
	case "file":
		if rest == "" {
			return nil, nil, fmt.Errorf("%w: target %q names no file: use file:PATH", errUsage, spec)
		}
		f, err := nbd.OpenFile(rest, readOnly)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, nil, fmt.Errorf("%w (create it first, e.g. truncate -s 1G %s)", err, rest)
			}
			return nil, nil, err
		}
		return f, f.Close, nil
	case "rbd":
		if err := checkRBDSpec(rest); err != nil {
			return nil, nil, fmt.Errorf("%w: target %q: %v", errUsage, spec, err)
		}
		return openRBDTarget(ctx, rest, c, readOnly)
	case "":
		if strings.HasPrefix(spec, "/") || strings.HasPrefix(spec, ".") {
			return nil, nil, fmt.Errorf("%w: target %q looks like a path: write file:%s for a file, or POOL/IMAGE for an RBD image", errUsage, spec, spec)
		}
		if err := checkRBDSpec(spec); err != nil {
			return nil, nil, fmt.Errorf("%w: target %q: %v; accepted: %s", errUsage, spec, err, targetForms)
		}
		return openRBDTarget(ctx, spec, c, readOnly)
	}
	return nil, nil, fmt.Errorf("%w: target %q: unknown kind %q; accepted: %s", errUsage, spec, kind, targetForms)
}

// checkRBDSpec checks the shape POOL/IMAGE[@SNAP] so a typo gets a
// usage error before any cluster connection is tried.
func checkRBDSpec(s string) error {
	image, snap, hasSnap := strings.Cut(s, "@")
	pool, name, ok := strings.Cut(image, "/")
	if !ok || pool == "" || name == "" {
		return fmt.Errorf("want POOL/IMAGE[@SNAP]")
	}
	if hasSnap && snap == "" {
		return fmt.Errorf("empty snapshot name after '@'")
	}
	return nil
}

// parseSize is the project's one size grammar (package sizes).
func parseSize(s string) (int64, error) { return sizes.Parse(s) }
