package graph

import (
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSplitMountOptions(t *testing.T) {
	for _, c := range []struct {
		in    []string
		flags uintptr
		data  []string
	}{
		{[]string{"nodev", "nosuid", "noatime"}, unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOATIME, nil},
		{[]string{"discard", "nodev", "data=ordered"}, unix.MS_NODEV, []string{"discard", "data=ordered"}},
		{[]string{"noatime", "atime", "noexec"}, unix.MS_NOEXEC, nil}, // later wins
		{[]string{"defaults", "lazytime", "nouuid"}, unix.MS_LAZYTIME, []string{"nouuid"}},
	} {
		flags, data, err := splitMountOptions(c.in)
		if err != nil || flags != c.flags || !slices.Equal(data, c.data) {
			t.Errorf("splitMountOptions(%q) = %#x, %q, %v; want %#x, %q", c.in, flags, data, err, c.flags, c.data)
		}
	}
	for _, bad := range []string{"ro", "rw", "bind", "remount", "rshared", "private"} {
		if _, _, err := splitMountOptions([]string{"nodev", bad}); err == nil {
			t.Errorf("splitMountOptions accepted %q", bad)
		}
		_, err := ParseOptions(DefaultOptions(), []string{"rbd.mountopt=nodev," + bad})
		if !errors.Is(err, ErrInvalidOption) {
			t.Errorf("rbd.mountopt=nodev,%s: %v, want ErrInvalidOption", bad, err)
		}
	}
}
