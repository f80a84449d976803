package nbd

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseDevicePath is the index of /dev/nbdN (or nbdN): DevicePath's
// inverse.
func ParseDevicePath(dev string) (int, error) {
	name := strings.TrimPrefix(dev, "/dev/")
	n, ok := strings.CutPrefix(name, "nbd")
	if !ok {
		return -1, fmt.Errorf("%q is not an NBD device (want /dev/nbdN)", dev)
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 {
		return -1, fmt.Errorf("%q is not an NBD device (want /dev/nbdN)", dev)
	}
	return i, nil
}
