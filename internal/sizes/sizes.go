// Package sizes is the one grammar for byte counts on the command line,
// in driver options and in targets: docker/go-units' RAMInBytes (powers
// of 1024, any case, an optional i and b: 4096, 4k, 4KiB, 1.5G, 1.5g,
// "1 GiB"). Every size the project reads goes through Parse, so
// `mem:1.5G`, `bench --size 1.5g` and `rbd.basesize=1.5G` agree.
package sizes

import (
	"fmt"
	"math"
	"strings"

	units "github.com/docker/go-units"
)

// Parse reads a byte count. A fraction of a byte is dropped (1.5k is
// 1536; 0.1k is 102), as dockerd does for --storage-opt size=.
func Parse(s string) (int64, error) {
	n, err := units.RAMInBytes(strings.TrimSpace(s))
	// A number too large for int64 converts to MinInt64 (amd64) or
	// MaxInt64 (arm64): refuse both.
	if err != nil || n < 0 || n == math.MaxInt64 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional k, m, g, t or p suffix (powers of 1024; e.g. 4k, 512M, 1.5G)", s)
	}
	return n, nil
}
