package main

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/rbdstore"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/metrics"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// README's "Metrics" table names every family of the registry, and
// nothing else.
func TestREADMEMetricsTable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `(rbd_nbd_graph_[a-z_]+)` \\|")
	var documented []string
	for _, line := range strings.Split(string(b), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			documented = append(documented, m[1])
		}
	}
	// Give every family a series, so that Gather lists it.
	reg := metrics.New()
	d := reg.Device("x")
	d.SetPath("/dev/nbd0")
	d.RequestStarted(0)
	d.RequestDone(0, 1, 5, time.Millisecond)
	d.ConnectionReplaced()
	reg.Layers().LayerOp("create", time.Millisecond, nil)
	reg.Cluster(metrics.ConnLayers).BlocklistRecovered()
	mfs, err := reg.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var registered []string
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "rbd_nbd_graph_") {
			registered = append(registered, mf.GetName())
		}
	}
	slices.Sort(documented)
	slices.Sort(registered)
	if !slices.Equal(documented, registered) {
		t.Errorf("README's metrics table lists\n  %v\nthe registry has\n  %v", documented, registered)
	}
}

// --metrics-listen is refused before anything is opened when it is not
// loopback, in every subcommand that takes it.
func TestMetricsListenRefusesRemote(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--socket", "/nonexistent/x.sock", "--metrics-listen", "0.0.0.0:9137"},
		{"snapshotter", "--socket", "/nonexistent/x.sock", "--metrics-listen", "0.0.0.0:9137"},
		{"map", "--foreground", "--metrics-listen", "0.0.0.0:9137", "mem:1M"},
		{"export", "--socket", "/nonexistent/x.sock", "--metrics-listen", "0.0.0.0:9137", "mem:1M"},
	} {
		env, _, stderr := testEnv()
		code := run(t.Context(), env, args)
		if code != 2 || !strings.Contains(stderr.String(), "--metrics-listen") || !strings.Contains(stderr.String(), "not loopback") {
			t.Errorf("%v: exit %d, want 2 and the refusal; output:\n%s", args, code, stderr.String())
		}
	}
}

// serve with --metrics-listen answers scrapes from its start, before
// dockerd's Init: the layer and cluster families are there (no cluster
// yet: both connections, the layers' and the deletions', at 0) beside
// Go's, and the endpoint closes with serve.
func TestServeMetricsEndpoint(t *testing.T) {
	dir := t.TempDir()
	msock := filepath.Join(dir, "m.sock")
	env, _, _ := testEnv()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runServe(ctx, env, []string{"--socket", filepath.Join(dir, "p.sock"), "--state", filepath.Join(dir, "state.json"),
			"--metrics-listen", "unix:" + msock})
	}()
	var m map[string]float64
	testkit.Eventually(t, 10*time.Second, "a scrape of serve's endpoint", func() bool {
		var err error
		m, err = metrics.Scrape(ctx, "unix:"+msock)
		return err == nil
	})
	for s, want := range map[string]float64{
		"rbd_nbd_graph_layer_flattens_pending":                                                 0,
		metrics.Series("rbd_nbd_graph_cluster_connected", "connection", metrics.ConnLayers):    0,
		metrics.Series("rbd_nbd_graph_cluster_connected", "connection", metrics.ConnDeletions): 0,
	} {
		if got, ok := m[s]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", s, got, ok, want)
		}
	}
	if m["go_goroutines"] == 0 {
		t.Error("no go_goroutines: Go's collector is not registered")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	if _, err := os.Stat(msock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("metrics socket left behind after serve stopped: %v", err)
	}
}

// observedStore is a layer store whose cluster connection the test
// drives: Observe hands it the observer rbdstore.Store would keep.
type observedStore struct {
	graph.ImageStore
	obs rbdstore.ClusterObserver
}

func (s *observedStore) Observe(o rbdstore.ClusterObserver) { s.obs = o; o.SetConnected(true) }

type noAttacher struct{ graph.Attacher }

// serve and snapshotter delete removed layers on a cluster connection of
// their own: its blocklisting (and a renewal that never succeeds, which
// leaves removed layers in the pool) shows as that connection, not
// hidden behind the layer store's, and the layer store's series does
// not move with it. A backend that deletes through its store's
// connection shows that connection under both names.
func TestMetricsFollowTheDeletionsConnection(t *testing.T) {
	reg := metrics.New()
	srv := httptest.NewServer(reg.Handler())
	defer srv.Close()
	scrape := func() map[string]float64 {
		t.Helper()
		m, err := metrics.Scrape(t.Context(), strings.TrimPrefix(srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	connected := func(conn string) string {
		return metrics.Series("rbd_nbd_graph_cluster_connected", "connection", conn)
	}
	recoveries := func(conn string) string {
		return metrics.Series("rbd_nbd_graph_cluster_blocklist_recoveries_total", "connection", conn)
	}
	expect := func(when string, want map[string]float64) {
		t.Helper()
		m := scrape()
		for s, w := range want {
			if got, ok := m[s]; !ok || got != w {
				t.Errorf("%s: %s = %v (present %v), want %v", when, s, got, ok, w)
			}
		}
	}
	L, D := metrics.ConnLayers, metrics.ConnDeletions

	declareLayerConnections(reg)
	expect("before the backend opens", map[string]float64{connected(L): 0, connected(D): 0})

	store, dels := &observedStore{}, &observedStore{}
	closed := false
	b := observeBackend(reg, dockerplugin.Backend{Store: store, Deletions: dels, Attacher: noAttacher{},
		Close: func() error { closed = true; return nil }})
	if store.obs == nil || dels.obs == nil {
		t.Fatalf("observers set: store %v, deletions %v; want both", store.obs != nil, dels.obs != nil)
	}
	expect("open", map[string]float64{connected(L): 1, connected(D): 1})

	dels.obs.SetConnected(false) // blocklisted, being renewed
	expect("deletions blocklisted", map[string]float64{connected(L): 1, connected(D): 0})
	dels.obs.SetConnected(true)
	dels.obs.BlocklistRecovered()
	expect("deletions renewed", map[string]float64{connected(L): 1, connected(D): 1, recoveries(L): 0, recoveries(D): 1})

	store.obs.SetConnected(false)
	expect("layer store blocklisted", map[string]float64{connected(L): 0, connected(D): 1})
	store.obs.SetConnected(true)

	if err := b.Close(); err != nil || !closed {
		t.Fatalf("Close: %v (backend's Close called: %v)", err, closed)
	}
	expect("closed", map[string]float64{connected(L): 0, connected(D): 0})

	one := &observedStore{}
	observeBackend(reg, dockerplugin.Backend{Store: one, Attacher: noAttacher{}})
	expect("one connection", map[string]float64{connected(L): 1, connected(D): 1})
	one.obs.SetConnected(false)
	expect("its connection blocklisted", map[string]float64{connected(L): 0, connected(D): 0})
}

// The store serve and snapshotter open is one observeBackend follows.
var _ clusterObservable = (*rbdstore.Store)(nil)
