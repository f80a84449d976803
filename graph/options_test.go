package graph_test

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

func TestParseOptions(t *testing.T) {
	o, err := graph.ParseOptions(graph.DefaultOptions(), []string{
		"rbd.imageprefix=h1-", "RBD.BaseSize=20G", "rbd.fs=xfs",
		"rbd.mkfsarg=-m crc=1", "rbd.mkfsarg=-i size=512", "rbd.mountopt=discard,noatime",
		"rbd.maxclonedepth=4", "rbd.flatten=create", "rbd.unmountdelay=3",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := graph.Options{
		ImagePrefix: "h1-", BaseSize: 20 << 30, FS: "xfs",
		MkfsArgs: []string{"-m", "crc=1", "-i", "size=512"}, MountOptions: []string{"discard", "noatime"},
		MaxCloneDepth: 4, Flatten: graph.FlattenOnCreate, UnmountDelay: 3 * time.Second,
	}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", o, want)
	}
	// The base is not changed by parsing.
	base := graph.DefaultOptions()
	base.MkfsArgs = []string{"-q"}
	if _, err := graph.ParseOptions(base, []string{"rbd.mkfsarg=-F"}); err != nil || len(base.MkfsArgs) != 1 {
		t.Fatalf("base changed: %+v, %v", base, err)
	}
}

func TestParseOptionsRefusesBadInput(t *testing.T) {
	for _, tc := range []struct{ opt, mention string }{
		{"rbd.nosuch=1", "unknown option"},
		{"dm.basesize=10G", "known options"},
		{"rbd.fs", "key=value"},
		{"rbd.fs=btrfs", "ext4 or xfs"},
		{"rbd.basesize=lots", "rbd.basesize"},
		{"rbd.basesize=1M", "below the minimum"},
		{"rbd.maxclonedepth=0", "from 1"},
		{"rbd.flatten=never", "background or create"},
		{"rbd.imageprefix=a/b", "character"},
		// The store's and the attacher's keys are theirs, not the core's.
		{"rbd.pool=layers", "unknown option"},
		{"nbd.connections=2", "unknown option"},
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

// fakeSet owns the keys fake.*; its Validate fails when bad is set.
type fakeSet struct {
	got []string
	bad bool
}

func (f *fakeSet) SetOption(key, value string) (bool, error) {
	if !strings.HasPrefix(key, "fake.") {
		return false, nil
	}
	if value == "wrong" {
		return true, errors.New("not that")
	}
	f.got = append(f.got, key+"="+value)
	return true, nil
}
func (f *fakeSet) OptionKeys() []string { return []string{"fake.a", "fake.b"} }
func (f *fakeSet) Validate() error {
	if f.bad {
		return fmt.Errorf("%w: fake is bad", graph.ErrInvalidOption)
	}
	return nil
}

// ParseOptionSets hands each key to the set that owns it, in order,
// lists every set's keys for an unknown one, and validates every set.
func TestParseOptionSets(t *testing.T) {
	o, f := graph.DefaultOptions(), &fakeSet{}
	if err := graph.ParseOptionSets([]string{"fake.a=1", "rbd.fs=xfs", " FAKE.b = 2 ", "rbd.basesize=1G"}, &o, f); err != nil {
		t.Fatal(err)
	}
	if o.FS != "xfs" || o.BaseSize != 1<<30 || strings.Join(f.got, " ") != "fake.a=1 fake.b=2" {
		t.Fatalf("layer options %+v, fake got %q", o, f.got)
	}
	err := graph.ParseOptionSets([]string{"other.x=1"}, &o, f)
	if !errors.Is(err, graph.ErrInvalidOption) || !strings.Contains(err.Error(), "fake.b") || !strings.Contains(err.Error(), "rbd.flatten") {
		t.Errorf("unknown key: %v; want every set's keys listed", err)
	}
	if err := graph.ParseOptionSets([]string{"fake.a=wrong"}, &o, f); !errors.Is(err, graph.ErrInvalidOption) || !strings.Contains(err.Error(), `fake.a="wrong": not that`) {
		t.Errorf("bad value: %v", err)
	}
	if err := graph.ParseOptionSets(nil, &o, &fakeSet{bad: true}); !errors.Is(err, graph.ErrInvalidOption) {
		t.Errorf("a set that does not validate: %v", err)
	}
	keys := graph.OptionKeys(&o, f)
	if !sort.StringsAreSorted(keys) || len(keys) != 10 {
		t.Errorf("keys %q", keys)
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
