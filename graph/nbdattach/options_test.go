package nbdattach

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

func TestParseOptions(t *testing.T) {
	o := DefaultOptions()
	if o.DeadConnTimeout != 2*time.Minute {
		t.Fatalf("default dead connection timeout %v", o.DeadConnTimeout)
	}
	err := graph.ParseOptionSets([]string{"nbd.connections=4", "NBD.QueueDepth=64", "nbd.iotimeout=30", "nbd.deadconntimeout=5m", "nbd.maxsectorskb=4096"}, &o)
	want := Options{Connections: 4, QueueDepth: 64, MaxSectorsKB: 4096, IOTimeout: 30 * time.Second, DeadConnTimeout: 5 * time.Minute}
	if err != nil || o != want {
		t.Fatalf("parsed %+v, %v; want %+v", o, err, want)
	}
	for _, tc := range []struct{ opt, mention string }{
		{"nbd.connections=x", "integer"},
		{"nbd.connections=65", "from 1 to 64"},
		{"nbd.queuedepth=0", "from 1 to 4096"},
		{"nbd.maxsectorskb=2", "from 4 to 32768"},
		{"nbd.maxsectorskb=65536", "from 4 to 32768"},
		{"nbd.iotimeout=-1s", "negative"},
		{"nbd.deadconntimeout=later", "duration"},
	} {
		o := DefaultOptions()
		err := graph.ParseOptionSets([]string{tc.opt}, &o)
		if !errors.Is(err, graph.ErrInvalidOption) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%q: %v; want ErrInvalidOption mentioning %q", tc.opt, err, tc.mention)
		}
	}
	if err := (&Options{Connections: 100}).Validate(); !errors.Is(err, graph.ErrInvalidOption) {
		t.Errorf("100 connections set directly: %v", err)
	}
}
