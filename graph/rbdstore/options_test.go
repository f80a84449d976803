package rbdstore

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

func TestParseOptions(t *testing.T) {
	o := DefaultOptions()
	err := graph.ParseOptionSets([]string{
		"rbd.pool=layers", "RBD.DataPool=ec", "rbd.client=client.docker", "rbd.configfile=/etc/ceph/x.conf",
		"rbd.keyring=/k", "rbd.namespace=ns", "rbd.cachepolicy=writeback", "rbd.osdtimeout=45s",
		"rbd.connecttimeout=10", "rbd.abortonfull=true", "rbd.reopenwait=5s", "rbd.submit=thread",
	}, &o)
	if err != nil {
		t.Fatal(err)
	}
	want := Options{
		Pool: "layers", DataPool: "ec", Namespace: "ns", Client: "docker", ConfigFile: "/etc/ceph/x.conf", Keyring: "/k",
		CachePolicy: rbdio.CacheWriteback, OSDTimeout: 45 * time.Second, ConnectTimeout: 10 * time.Second, AbortOnFull: true,
		ReopenWait: 5 * time.Second, Submit: rbdio.SubmitThread, LockWait: 90 * time.Second, LockRetry: 2 * time.Second,
	}
	if o != want {
		t.Fatalf("parsed\n%+v\nwant\n%+v", o, want)
	}
	c := o.Config()
	if c.Pool != "layers" || c.Namespace != "ns" || c.ID != "docker" || c.ConfFile != "/etc/ceph/x.conf" || c.Keyring != "/k" ||
		c.CachePolicy != rbdio.CacheWriteback || c.OSDTimeout != 45*time.Second || c.ConnectTimeout != 10*time.Second || !c.AbortOnFull || c.Submit != rbdio.SubmitThread {
		t.Fatalf("rbdio config %+v", c)
	}
	if d := DefaultOptions(); d.Pool != "rbd" || d.Client != "admin" || d.CachePolicy != rbdio.CacheNone || d.ReopenWait != DefaultReopenWait || d.Submit != rbdio.SubmitAuto {
		t.Fatalf("defaults %+v", d)
	}
}

func TestParseOptionsRefusesBadInput(t *testing.T) {
	for _, tc := range []struct{ opt, mention string }{
		{"rbd.pool=", "rbd.pool is empty"},
		{"rbd.client=", "rbd.client is empty"},
		{"rbd.osdtimeout=-5s", "negative"},
		{"rbd.connecttimeout=soon", "duration"},
		{"rbd.abortonfull=maybe", "true or false"},
		{"rbd.cachepolicy=off", "none, writethrough, writeback or writearound"},
		{"rbd.cachepolicy=", "cache policy"},
		{"rbd.reopenwait=-1s", "negative"},
		{"rbd.submit=fast", "auto, inline or thread"},
	} {
		o := DefaultOptions()
		err := graph.ParseOptionSets([]string{tc.opt}, &o)
		if !errors.Is(err, graph.ErrInvalidOption) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%q: %v; want ErrInvalidOption mentioning %q", tc.opt, err, tc.mention)
		}
	}
	o := DefaultOptions()
	o.LockRetry = 0
	if err := o.Validate(); !errors.Is(err, graph.ErrInvalidOption) {
		t.Errorf("a zero lock retry: %v", err)
	}
}

// The store's Status line says what the cache policy means for data
// acknowledged to the layers.
func TestCacheStatus(t *testing.T) {
	for policy, want := range map[rbdio.CachePolicy]string{
		rbdio.CacheNone:         "off (writes acknowledged once on the OSDs)",
		rbdio.CacheWritethrough: "writethrough (writes acknowledged once on the OSDs)",
		rbdio.CacheWriteback:    "writeback (writes acknowledged from the plugin's cache: lost if it dies under mounted layers)",
		rbdio.CacheWritearound:  "writearound (writes acknowledged from the plugin's cache: lost if it dies under mounted layers)",
	} {
		s := &Store{opts: Options{CachePolicy: policy}}
		if got := s.StoreStatus(); len(got) != 2 || got[0] != [2]string{"librbd Cache", want} {
			t.Errorf("%s: %q", policy, got)
		}
	}
}

// The store's Status line says who calls librbd, and what auto chose.
func TestSubmitStatus(t *testing.T) {
	for _, c := range []struct {
		mode    rbdio.SubmitMode
		godebug string
		want    string
	}{
		{rbdio.SubmitThread, "", "thread"},
		{rbdio.SubmitInline, "schedtrace=0", "inline"},
		{rbdio.SubmitAuto, "schedtrace=100000", "inline (auto: the Go runtime's sysmon is kept awake)"},
		{rbdio.SubmitAuto, "schedtrace=0", "thread (auto: the Go runtime's sysmon sleeps; GODEBUG=schedtrace is not set)"},
	} {
		t.Setenv("GODEBUG", c.godebug)
		s := &Store{opts: Options{CachePolicy: rbdio.CacheNone, Submit: c.mode}}
		if got := s.StoreStatus(); len(got) != 2 || got[1] != [2]string{"librbd Submit", c.want} {
			t.Errorf("%s with GODEBUG=%s: %q", c.mode, c.godebug, got)
		}
	}
}
