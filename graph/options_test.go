package graph_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

func TestParseOptions(t *testing.T) {
	o, err := graph.ParseOptions(graph.DefaultOptions(), []string{
		"rbd.pool=layers", "RBD.DataPool=ec", "rbd.client=client.docker", "rbd.configfile=/etc/ceph/x.conf",
		"rbd.keyring=/k", "rbd.imageprefix=h1-", "rbd.basesize=20G", "rbd.fs=xfs",
		"rbd.mkfsarg=-m crc=1", "rbd.mkfsarg=-i size=512", "rbd.mountopt=discard,noatime", "rbd.namespace=ns",
		"rbd.maxclonedepth=4", "rbd.flatten=create", "rbd.cachepolicy=writeback", "rbd.osdtimeout=45s", "rbd.connecttimeout=10s", "rbd.abortonfull=true",
		"nbd.connections=4", "nbd.queuedepth=64", "nbd.iotimeout=30", "nbd.deadconntimeout=5m",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := graph.Options{
		Pool: "layers", DataPool: "ec", Namespace: "ns", Client: "docker", ConfigFile: "/etc/ceph/x.conf", Keyring: "/k",
		CachePolicy: "writeback", OSDTimeout: 45 * time.Second, ConnectTimeout: 10 * time.Second, AbortOnFull: true,
		ImagePrefix: "h1-", BaseSize: 20 << 30, FS: "xfs",
		MkfsArgs: []string{"-m", "crc=1", "-i", "size=512"}, MountOptions: []string{"discard", "noatime"},
		MaxCloneDepth: 4, Flatten: graph.FlattenOnCreate,
		NBD: graph.NBDOptions{Connections: 4, QueueDepth: 64, IOTimeout: 30 * time.Second, DeadConnTimeout: 5 * time.Minute},
	}
	if !equalOptions(o, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", o, want)
	}
	// The base is not changed by parsing.
	if d := graph.DefaultOptions(); d.Pool != "rbd" || d.MkfsArgs != nil || d.CachePolicy != "none" {
		t.Fatalf("defaults changed: %+v", d)
	}
}

func equalOptions(a, b graph.Options) bool {
	return reflect.DeepEqual(a, b)
}

func TestParseOptionsRefusesBadInput(t *testing.T) {
	for _, tc := range []struct{ opt, mention string }{
		{"rbd.nosuch=1", "unknown option"},
		{"dm.basesize=10G", "known options"},
		{"rbd.pool", "key=value"},
		{"rbd.pool=", "rbd.pool is empty"},
		{"rbd.fs=btrfs", "ext4 or xfs"},
		{"rbd.basesize=lots", "rbd.basesize"},
		{"rbd.basesize=1M", "below the minimum"},
		{"rbd.maxclonedepth=0", "from 1"},
		{"rbd.flatten=never", "background or create"},
		{"nbd.connections=x", "integer"},
		{"nbd.iotimeout=-1s", "negative"},
		{"rbd.osdtimeout=-5s", "negative"},
		{"rbd.abortonfull=maybe", "true or false"},
		{"rbd.imageprefix=a/b", "character"},
		{"rbd.cachepolicy=off", "none, writethrough, writeback or writearound"},
	} {
		_, err := graph.ParseOptions(graph.DefaultOptions(), []string{tc.opt})
		if !errors.Is(err, graph.ErrInvalidOption) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%q: %v; want ErrInvalidOption mentioning %q", tc.opt, err, tc.mention)
		}
	}
	// xfs needs a bigger base than ext4.
	if _, err := graph.ParseOptions(graph.DefaultOptions(), []string{"rbd.fs=xfs", "rbd.basesize=100M"}); !errors.Is(err, graph.ErrInvalidOption) {
		t.Errorf("xfs with a 100M base: %v", err)
	}
}

func TestParseStorageOpts(t *testing.T) {
	co, err := graph.ParseStorageOpts(map[string]string{"size": "20G"})
	if err != nil || co.Size != 20<<30 {
		t.Fatalf("size=20G: %+v, %v", co, err)
	}
	for _, bad := range []map[string]string{{"size": "big"}, {"size": "0"}, {"dm.thinpooldev": "x"}} {
		if _, err := graph.ParseStorageOpts(bad); !errors.Is(err, graph.ErrInvalidOption) {
			t.Errorf("%v: %v", bad, err)
		}
	}
}

func TestDefaultPrefix(t *testing.T) {
	a := graph.DefaultPrefix("0123456789abcdef", "/var/lib/docker/rbd-nbd")
	if len(a) != len("docker-")+12+1 || !strings.HasPrefix(a, "docker-") || !strings.HasSuffix(a, "-") {
		t.Fatalf("prefix %q", a)
	}
	if graph.DefaultPrefix("0123456789abcdef", "/var/lib/docker/rbd-nbd/") != a {
		t.Fatal("the prefix depends on how the home is spelled")
	}
	for _, other := range []string{
		graph.DefaultPrefix("0123456789abcdee", "/var/lib/docker/rbd-nbd"),
		graph.DefaultPrefix("0123456789abcdef", "/var/lib/docker/100000.100000/rbd-nbd"),
	} {
		if other == a {
			t.Fatalf("two drivers share the prefix %q", a)
		}
	}
}
