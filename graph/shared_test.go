package graph_test

import (
	"path/filepath"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
)

// FileStore keeps the rename contract the RBD store keeps on a cluster
// (graph/rbdstore), so tests of shared layers on it mean something.
func TestFileStoreRenames(t *testing.T) {
	store, err := graphtest.OpenFileStore(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	graphtest.RenameSuite(t, store, "t-")
}
