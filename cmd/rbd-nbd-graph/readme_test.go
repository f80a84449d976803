package main

import (
	"context"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/rbdstore"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// readmeOption is one row of README.md's driver options table.
type readmeOption struct {
	key, def, meaning string
}

// readmeOptions reads the rows of README.md's table whose first cell is
// an rbd.* or nbd.* key.
func readmeOptions(t *testing.T) []readmeOption {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `((?:rbd|nbd)\\.[a-z]+)` \\|([^|]*)\\|(.*)\\|$")
	var rows []readmeOption
	for _, line := range strings.Split(string(b), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			rows = append(rows, readmeOption{m[1], strings.TrimSpace(m[2]), m[3]})
		}
	}
	return rows
}

var backticked = regexp.MustCompile("`([^`]*)`")

// driverOptions are the option sets of serve's driver: the layers',
// the RBD store's and the NBD attacher's, at their defaults.
type driverOptions struct {
	layer  graph.Options
	store  rbdstore.Options
	attach nbdattach.Options
}

func defaultDriverOptions() *driverOptions {
	return &driverOptions{graph.DefaultOptions(), rbdstore.DefaultOptions(), nbdattach.DefaultOptions()}
}

func (d *driverOptions) sets() []graph.OptionSet {
	return []graph.OptionSet{&d.layer, &d.store, &d.attach}
}

// effective resolves the zero values other packages give a meaning to,
// so that the table's defaults compare with what actually happens.
func (d driverOptions) effective() driverOptions {
	if d.attach.Connections == 0 {
		d.attach.Connections = 1 // nbd.AttachOptions: 0 or less means one
	}
	if d.attach.QueueDepth == 0 {
		d.attach.QueueDepth = nbd.DefaultQueueDepth
	}
	if d.attach.MaxSectorsKB == 0 {
		d.attach.MaxSectorsKB = nbd.DefaultMaxSectorsKB
	}
	if d.store.ConnectTimeout == 0 {
		d.store.ConnectTimeout = rbdio.DefaultConnectTimeout
	}
	return d
}

// TestREADMEOptionsTable keeps README's options table true: the same keys
// as the code, and each default, set explicitly, changes nothing.
func TestREADMEOptionsTable(t *testing.T) {
	rows := readmeOptions(t)
	var keys []string
	for _, r := range rows {
		keys = append(keys, r.key)
	}
	slices.Sort(keys)
	if want := graph.OptionKeys(defaultDriverOptions().sets()...); !slices.Equal(keys, want) {
		t.Errorf("README options table has keys\n%q\nthe code has\n%q", keys, want)
	}
	defaults := defaultDriverOptions().effective()
	for _, r := range rows {
		if r.key == "rbd.imageprefix" {
			continue // a digest of the host and home: see TestDefaultPrefix in graph
		}
		// The default is the first backticked word of its cell; a cell
		// without one ("from ceph.conf") stands for the empty value.
		val := ""
		if m := backticked.FindStringSubmatch(r.def); m != nil {
			val = m[1]
		}
		o := defaultDriverOptions()
		if err := graph.ParseOptionSets([]string{r.key + "=" + val}, o.sets()...); err != nil {
			t.Errorf("README default of %s (%q): %v", r.key, val, err)
			continue
		}
		if got := o.effective(); !reflect.DeepEqual(got, defaults) {
			t.Errorf("README says %s defaults to %q, but setting it changes the options:\n%+v\nfrom the defaults\n%+v", r.key, val, got, defaults)
		}
	}
}

// TestREADMECachePolicy: the table's rbd.cachepolicy row and serve's
// help name every policy the code takes, and the same default.
func TestREADMECachePolicy(t *testing.T) {
	policies := []string{string(rbdio.CacheNone), string(rbdio.CacheWritethrough), string(rbdio.CacheWriteback), string(rbdio.CacheWritearound)}
	for _, p := range policies {
		if _, err := rbdio.ParseCachePolicy(p); err != nil {
			t.Fatalf("rbdio does not take its own policy %q: %v", p, err)
		}
	}
	if def := string(rbdstore.DefaultOptions().CachePolicy); def != policies[0] {
		t.Fatalf("the default cache policy is %q, not %q", def, policies[0])
	}
	var row *readmeOption
	for _, r := range readmeOptions(t) {
		if r.key == "rbd.cachepolicy" {
			row = &r
		}
	}
	if row == nil {
		t.Fatal("README options table has no rbd.cachepolicy row")
	}
	if row.def != "`"+policies[0]+"`" {
		t.Errorf("README: rbd.cachepolicy defaults to %s, the code to %q", row.def, policies[0])
	}
	var named []string
	for _, m := range backticked.FindAllStringSubmatch(row.meaning, -1) {
		named = append(named, m[1])
	}
	for _, p := range policies {
		if !slices.Contains(named, p) {
			t.Errorf("README's rbd.cachepolicy row does not name %q (it names %q)", p, named)
		}
	}

	env, _, errb := testEnv()
	if code := run(context.Background(), env, []string{"serve", "-h"}); code != 0 {
		t.Fatalf("serve -h: exit %d: %s", code, errb)
	}
	help := errb.String()
	for _, k := range graph.OptionKeys(defaultDriverOptions().sets()...) {
		if !strings.Contains(help, k) {
			t.Errorf("serve -h does not list option %s", k)
		}
	}
	i := strings.Index(help, "-rbd-cache-policy")
	if i < 0 {
		t.Fatalf("serve -h has no -rbd-cache-policy flag:\n%s", help)
	}
	flagHelp, _, _ := strings.Cut(help[i:], "\n  -")
	if !strings.Contains(flagHelp, policies[0]+" (default)") {
		t.Errorf("serve -h: -rbd-cache-policy does not say %q is the default: %q", policies[0], flagHelp)
	}
	for _, p := range policies {
		if !strings.Contains(flagHelp, p) {
			t.Errorf("serve -h: -rbd-cache-policy does not name %q: %q", p, flagHelp)
		}
	}
}
