package graph_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// mountOf is the mount holding dir (the longest mount point above it).
func mountOf(t *testing.T, dir string) *mountinfo.Info {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.ParentsFilter(dir))
	if err != nil || len(mounts) == 0 {
		t.Fatalf("no mount holds %s: %v", dir, err)
	}
	best := mounts[0]
	for _, m := range mounts {
		if len(m.Mountpoint) > len(best.Mountpoint) {
			best = m
		}
	}
	return best
}

// TestMountOptionsAreFlags: rbd.mountopt=nodev,nosuid,noatime reaches
// mount(2) as flags, which ext4 and xfs refuse as filesystem data
// (EINVAL, "Unknown parameter 'nodev'"), and the layers' mounts carry
// them (/proc/self/mountinfo), the read-only parent too.
func TestMountOptionsAreFlags(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			if fs == "xfs" {
				testkit.RequireTools(t, "mkfs.xfs", "xfs_growfs")
			}
			opts, err := graph.ParseOptions(testOptions(), []string{"rbd.fs=" + fs, "rbd.basesize=320M", "rbd.mountopt=nodev,nosuid,noatime"})
			if err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, func(c *graph.Config) { c.Options = opts })
			e.create("a", "")
			e.create("b", "a")
			for _, l := range []struct {
				id string
				ro bool
			}{{"a", true}, {"b", false}} {
				dir := e.get(l.id)
				m := mountOf(t, dir)
				vfs := strings.Split(m.Options, ",")
				for _, want := range []string{"nodev", "nosuid", "noatime"} {
					if !slices.Contains(vfs, want) {
						t.Errorf("layer %s mounted %q at %s, want %s among them", l.id, m.Options, m.Mountpoint, want)
					}
				}
				if slices.Contains(vfs, "ro") != l.ro {
					t.Errorf("layer %s mounted %q, read-only should be %v", l.id, m.Options, l.ro)
				}
				if m.FSType != fs || strings.Contains(m.VFSOptions, "nodev") {
					t.Errorf("layer %s: %s with filesystem options %q", l.id, m.FSType, m.VFSOptions)
				}
				e.put(l.id)
			}
		})
	}
}
