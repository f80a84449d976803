package bench

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize reads a byte count as fio does: a number with an optional
// binary suffix k, m, g, t, p (any case, optionally followed by "i", "b"
// or "ib": 4k = 4KiB = 4096). Plain numbers are bytes.
func ParseSize(s string) (int64, error) {
	in := s
	s = strings.TrimSpace(strings.ToLower(s))
	s = strings.TrimSuffix(s, "b")
	s = strings.TrimSuffix(s, "i")
	mult := int64(1)
	if n := len(s); n > 0 {
		if i := strings.IndexByte("kmgtp", s[n-1]); i >= 0 {
			mult = 1 << (10 * (i + 1))
			s = s[:n-1]
		}
	}
	if s == "" {
		return 0, fmt.Errorf("size %q: no number", in)
	}
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		if v < 0 || (v > 0 && mult > math.MaxInt64/v) {
			return 0, fmt.Errorf("size %q out of range", in)
		}
		return v * mult, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsNaN(f) || f*float64(mult) >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional k, m, g, t suffix (e.g. 4k, 1.5g)", in)
	}
	v := f * float64(mult)
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", in)
	}
	return int64(v), nil
}

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
