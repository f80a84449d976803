package nbd

import "testing"

func TestParseDevicePath(t *testing.T) {
	for in, want := range map[string]int{"/dev/nbd0": 0, "/dev/nbd15": 15, "nbd3": 3} {
		if got, err := ParseDevicePath(in); err != nil || got != want {
			t.Errorf("ParseDevicePath(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"/dev/sda", "/dev/nbd", "/dev/nbdx", "/dev/nbd-1", "/dev/nbd1p2"} {
		if _, err := ParseDevicePath(bad); err == nil {
			t.Errorf("ParseDevicePath(%q) accepted", bad)
		}
	}
	for _, i := range []int{0, 7, 255} {
		if got, err := ParseDevicePath(DevicePath(i)); err != nil || got != i {
			t.Errorf("ParseDevicePath(DevicePath(%d)) = %d, %v", i, got, err)
		}
	}
}
