package bench

import (
	"fmt"
	"strings"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/sizes"
)

// ParseSize reads a byte count in the project's one size grammar
// (package sizes: 4k = 4KiB = 4096, 1.5g, powers of 1024).
func ParseSize(s string) (int64, error) { return sizes.Parse(s) }

// ParseList splits a comma-separated list ("1,2,4") and parses each item.
func ParseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		v, err := parse(item)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list %q", s)
	}
	return out, nil
}
