package nbdattach

import (
	"context"
	"fmt"
	"strings"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// FindMapped returns the index of the one connected device mapped to id.
func FindMapped(ctx context.Context, id string) (int, error) {
	devs, err := nbd.FindByBackend(ctx, id)
	if err != nil {
		return -1, err
	}
	switch len(devs) {
	case 0:
		return -1, fmt.Errorf("no connected NBD device is mapped to %s: nothing to reattach (map it instead)", targetOf(id))
	case 1:
		return devs[0].Index, nil
	}
	var paths []string
	for _, d := range devs {
		paths = append(paths, d.Path)
	}
	return -1, fmt.Errorf("%s is mapped on several devices (%s): name one with --device", targetOf(id), strings.Join(paths, ", "))
}

// RefuseDoubleMap stops a second read-write mapping of the same target,
// which would let two page caches write one image.
func RefuseDoubleMap(ctx context.Context, id string) error {
	devs, err := nbd.FindByBackend(ctx, id)
	if err != nil || len(devs) == 0 {
		return nil // no module loaded yet, or no such device: fine
	}
	return fmt.Errorf("%s is already mapped on %s (use that device, 'map --reattach' if its server died, or unmap it first)",
		targetOf(id), devs[0].Path)
}

// targetOf is what an identifier of ours names, for messages.
func targetOf(id string) string {
	b, _ := ParseBackendID(id)
	return b.Target
}
