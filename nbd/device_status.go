package nbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DeviceStatus describes one kernel NBD device.
type DeviceStatus struct {
	Index     int    `json:"index"`
	Path      string `json:"device"`
	Connected bool   `json:"connected"`
	Size      int64  `json:"size"`                 // bytes, from /sys/block/nbdN/size
	BackendID string `json:"backend_id,omitempty"` // /sys/block/nbdN/backend
	PID       int    `json:"pid,omitempty"`        // process that connected it (from the thread in /sys/block/nbdN/pid)
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
		ds.PID = processOf(int(pid))
	}
	if ro, err := readSysInt(st.Index, "ro"); err == nil {
		ds.ReadOnly = ro != 0
	}
	ds.BackendID = readBackendID(st.Index)
	return ds
}

// processOf maps the thread id the kernel records (task_pid_nr of the
// thread that sent CONNECT: in a Go program, any of its threads) to its
// process id. A thread that is gone keeps its number: the process is
// then gone too, or the number is all we know.
func processOf(tid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return tid
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			if pid, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return pid
			}
		}
	}
	return tid
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

func writeSys(index int, name, value string) error {
	return os.WriteFile(sysPath(index, name), []byte(value), 0)
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

// Disconnect asks the kernel to disconnect device index, whoever serves
// it: the kernel sends NBD_CMD_DISC on every connection, so the serving
// process (ours, in another process) answers what is in flight and lets
// go of the device. It returns once the kernel has taken the request;
// use WaitFree to wait until the device is free.
func Disconnect(ctx context.Context, index int) error {
	kernel, err := lookupFamily()
	if errors.Is(err, errFamilyMissing) {
		return &OpError{Op: "disconnect", Index: index, Err: ErrNoDevice}
	}
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return kernel.disconnect(index)
}

// WaitFree polls until device index is no longer connected and the
// kernel has released its configuration (no pid in sysfs), or ctx ends.
func WaitFree(ctx context.Context, index int) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := Status(ctx, index)
		if errors.Is(err, ErrNoDevice) || (err == nil && !st.Connected && st.PID == 0) {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nbd: %s still in use (connected=%v pid=%d): %w", DevicePath(index), st.Connected, st.PID, ctx.Err())
		case <-tick.C:
		}
	}
}
