package nbd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DeviceStatus describes one kernel NBD device.
type DeviceStatus struct {
	Index     int    `json:"index"`
	Path      string `json:"device"`
	Connected bool   `json:"connected"`
	Size      int64  `json:"size"`                 // bytes, from /sys/block/nbdN/size
	BackendID string `json:"backend_id,omitempty"` // /sys/block/nbdN/backend
	PID       int    `json:"pid,omitempty"`        // process that connected it, /sys/block/nbdN/pid
	ReadOnly  bool   `json:"read_only"`
}

// List reports every NBD device the kernel has (STATUS over netlink, plus
// size, backend identifier and pid from sysfs), connected or not. With no
// nbd module loaded there are no devices: the list is empty and nothing is
// loaded.
func List(ctx context.Context) ([]DeviceStatus, error) {
	kernel, err := lookupFamily()
	if errors.Is(err, errFamilyMissing) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sts, err := kernel.status(-1)
	if err != nil {
		return nil, err
	}
	out := make([]DeviceStatus, 0, len(sts))
	for _, st := range sts {
		out = append(out, describe(st))
	}
	return out, nil
}

// Status reports one device.
func Status(ctx context.Context, index int) (DeviceStatus, error) {
	kernel, err := lookupFamily()
	if errors.Is(err, errFamilyMissing) {
		return DeviceStatus{}, &OpError{Op: "status", Index: index, Err: ErrNoDevice}
	}
	if err != nil {
		return DeviceStatus{}, err
	}
	sts, err := kernel.status(index)
	if err != nil {
		return DeviceStatus{}, err
	}
	if len(sts) == 0 {
		return DeviceStatus{}, &OpError{Op: "status", Index: index, Err: ErrNoDevice}
	}
	return describe(sts[0]), nil
}

// ErrNoDevice: the kernel has no NBD device with that index.
var ErrNoDevice = errors.New("no such nbd device")

// FindByBackend returns the connected devices whose backend identifier
// is id.
func FindByBackend(ctx context.Context, id string) ([]DeviceStatus, error) {
	all, err := List(ctx)
	if err != nil {
		return nil, err
	}
	var out []DeviceStatus
	for _, st := range all {
		if st.Connected && st.BackendID == id {
			out = append(out, st)
		}
	}
	return out, nil
}

func describe(st deviceStatus) DeviceStatus {
	ds := DeviceStatus{Index: st.Index, Path: DevicePath(st.Index), Connected: st.Connected}
	if sectors, err := readSysInt(st.Index, "size"); err == nil {
		ds.Size = sectors * 512
	}
	if pid, err := readSysInt(st.Index, "pid"); err == nil {
		ds.PID = int(pid)
	}
	if ro, err := readSysInt(st.Index, "ro"); err == nil {
		ds.ReadOnly = ro != 0
	}
	ds.BackendID = readBackendID(st.Index)
	return ds
}

func sysPath(index int, name string) string {
	return filepath.Join("/sys/block", "nbd"+strconv.Itoa(index), name)
}

func readSysInt(index int, name string) (int64, error) {
	b, err := os.ReadFile(sysPath(index, name))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// readBackendID is "" when the device has no backend identifier (the
// kernel creates the file only while a backend is connected).
func readBackendID(index int) string {
	b, err := os.ReadFile(sysPath(index, "backend"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
