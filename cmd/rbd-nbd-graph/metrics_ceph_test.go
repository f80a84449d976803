package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/metrics"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// The cluster blocklists the deletions' client (`ceph osd blocklist add`
// of its address): the deletion after it runs on a new connection, and
// the metrics show that recovery on the deletions' connection, not on
// the layer store's, which keeps serving.
func TestMetricsDeletionsConnectionBlocklisted(t *testing.T) {
	conf := testkit.CephConf(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := defaultBackendOptions()
	o.store.ConfigFile = conf
	store, dels, err := openStores(ctx, o, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	reg := metrics.New()
	b := observeBackend(reg, dockerplugin.Backend{Store: store, Deletions: dels, Attacher: noAttacher{},
		Close: func() error { return errors.Join(store.Close(), dels.Close()) }})
	t.Cleanup(func() { b.Close() })
	srv := httptest.NewServer(reg.Handler())
	defer srv.Close()

	// An image held open through the deletions' connection, so that
	// `rbd status` names that client's address.
	img := testkit.UniqueName(t, "mdels")
	if err := dels.CreateImage(ctx, img, 8<<20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if c, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf}); err == nil {
			c.RemoveImage(ctx, img, rbdio.RemoveOptions{})
			c.Close()
		}
	})
	_, closeImg, err := dels.OpenImage(ctx, graph.ImageRef{Image: img}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeImg() })
	testkit.BlocklistWatcher(t, "rbd/"+img)

	// A deletion, as the reaper makes them, after the blocklisting.
	gone := img + "-gone"
	if err := store.CreateImage(ctx, gone, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := dels.RemoveImage(ctx, gone); err != nil {
		t.Fatalf("RemoveImage through the blocklisted deletions' connection: %v", err)
	}
	if _, err := store.StatImage(ctx, img); err != nil {
		t.Errorf("the layer store, after the deletions' client was blocklisted: %v", err)
	}

	scraped, err := metrics.Scrape(ctx, strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, conn string
		want       float64
	}{
		{"rbd_nbd_graph_cluster_blocklist_recoveries_total", metrics.ConnDeletions, 1},
		{"rbd_nbd_graph_cluster_blocklist_recoveries_total", metrics.ConnLayers, 0},
		{"rbd_nbd_graph_cluster_connected", metrics.ConnDeletions, 1},
		{"rbd_nbd_graph_cluster_connected", metrics.ConnLayers, 1},
	} {
		s := metrics.Series(c.name, "connection", c.conn)
		if got, ok := scraped[s]; !ok || got != c.want {
			t.Errorf("%s = %v (present %v), want %v", s, got, ok, c.want)
		}
	}
}
