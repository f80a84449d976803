package graphtest

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

var _ graph.UsageReporter = (*FileStore)(nil)

// DiskUsage is the allocated size of the image's sparse file, as `rbd
// du` reports the allocated extents of an RBD image.
func (s *FileStore) DiskUsage(ctx context.Context, image string) (int64, error) {
	s.mu.Lock()
	_, err := s.image(image)
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(s.DataPath(graph.ImageRef{Image: image}))
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("filestore: %s: no block count", image)
	}
	return st.Blocks * 512, nil
}
