package rbdstore

import (
	"context"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The RBD store keeps the rename contract publishing shared layers needs.
func TestRBDStoreRenames(t *testing.T) {
	conf := testkit.CephConf(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	graphtest.RenameSuite(t, New(ctx, conn, DefaultOptions(), nil), testkit.UniqueName(t, "rename")+"-")
}
