package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

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
	reg.Cluster().BlocklistRecovered()
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
// yet: connected 0) beside Go's, and the endpoint closes with serve.
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
		"rbd_nbd_graph_layer_flattens_pending": 0,
		"rbd_nbd_graph_cluster_connected":      0,
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
