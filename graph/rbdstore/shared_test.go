package rbdstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The RBD store keeps the rename contract publishing shared layers needs.
func TestRBDStoreRenames(t *testing.T) {
	conf := graphtest.RequireCeph(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var b [4]byte
	rand.Read(b[:])
	graphtest.RenameSuite(t, New(conn, Config{Pool: "rbd"}), "rename-"+hex.EncodeToString(b[:])+"-")
}
