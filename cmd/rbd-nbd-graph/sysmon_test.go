package main

import (
	"slices"
	"testing"
)

func TestSysmonEnv(t *testing.T) {
	base := []string{"PATH=/usr/bin", "HOME=/root"}
	for _, c := range []struct {
		args    []string
		environ []string
		want    []string // nil: no exec
	}{
		{[]string{"serve"}, base, append(slices.Clone(base), "GODEBUG="+sysmonGODEBUG)},
		{[]string{"map", "--foreground", "rbd:rbd/x"}, base, append(slices.Clone(base), "GODEBUG="+sysmonGODEBUG)},
		{[]string{"export", "mem:1M"}, []string{"GODEBUG=madvdontneed=1", "HOME=/"}, []string{"GODEBUG=madvdontneed=1," + sysmonGODEBUG, "HOME=/"}},
		{[]string{"export", "mem:1M"}, []string{"GODEBUG="}, []string{"GODEBUG=" + sysmonGODEBUG}},
		// The operator's choice stands, whatever it is.
		{[]string{"serve"}, []string{"GODEBUG=schedtrace=0"}, nil},
		{[]string{"bench"}, []string{"GODEBUG=x=1,schedtrace=500"}, nil},
		// Commands that serve no IO, and none at all.
		{[]string{"list"}, base, nil},
		{[]string{"unmap", "/dev/nbd0"}, base, nil},
		{[]string{"version"}, base, nil},
		{nil, base, nil},
	} {
		got, ok := sysmonEnv(commands(), c.args, c.environ)
		if ok != (c.want != nil) || !slices.Equal(got, c.want) {
			t.Errorf("sysmonEnv(%q, %q) = %q, %v; want %q", c.args, c.environ, got, ok, c.want)
		}
	}
}
