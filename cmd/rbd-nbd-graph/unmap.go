package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// runUnmap: unmap DEVICE|TARGET. It disconnects the device (the serving
// process answers what is in flight, then exits) and, unlike Ceph's
// rbd-nbd, waits until the device is free and its server has exited, so a
// script can reuse the device or the image right after.
func runUnmap(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "unmap", "unmap [flags] DEVICE|TARGET",
		"Disconnects the device (/dev/nbdN, or every device mapped to TARGET as given to map:\n"+
			"rbd:POOL/IMAGE, POOL/IMAGE, file:PATH, ...); its server answers what is in flight and exits.\n"+
			"Waits until the device is free and the server has exited.")
	force := fs.Bool("force", false, "disconnect even if the device is mounted (the filesystem then sees IO errors)")
	var timeout time.Duration
	durationVar(fs, &timeout, "timeout", 60*time.Second, "how long to wait for the device to be free")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: want exactly one DEVICE or TARGET, got %q", errUsage, fs.Args())
	}
	arg := fs.Arg(0)

	indexes, err := mappedDevices(ctx, arg)
	if err != nil {
		return err
	}
	for _, i := range indexes {
		if !*force {
			if where := mountedAt(nbd.DevicePath(i)); where != "" {
				return fmt.Errorf("%s is mounted on %s: unmount it first (or --force)", nbd.DevicePath(i), where)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, i := range indexes {
		st, _ := nbd.Status(ctx, i)
		server := nbdattach.ServerPID(st)
		if err := nbd.Disconnect(ctx, i); err != nil {
			return err
		}
		if err := nbd.WaitFree(wctx, i); err != nil {
			return err
		}
		if server > 0 && server != os.Getpid() {
			if err := waitExit(wctx, server); err != nil {
				return fmt.Errorf("%s is free but its server (pid %d) %w", nbd.DevicePath(i), server, err)
			}
		}
		env.log.Debug("unmapped", "device", nbd.DevicePath(i))
	}
	return nil
}

// mappedDevices resolves unmap's and detach's argument: /dev/nbdN (which
// must be connected) or a TARGET (every device mapped to it).
func mappedDevices(ctx context.Context, arg string) ([]int, error) {
	var indexes []int
	if strings.HasPrefix(arg, "/dev/") {
		i, err := nbd.ParseDevicePath(arg)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		st, err := nbd.Status(ctx, i)
		if err != nil {
			return nil, err
		}
		if !st.Connected {
			return nil, fmt.Errorf("%s is not mapped", arg)
		}
		indexes = []int{i}
	} else {
		id, err := backendID(arg)
		if err != nil {
			return nil, err
		}
		devs, err := nbd.FindByBackend(ctx, id)
		if err != nil {
			return nil, err
		}
		if len(devs) == 0 {
			return nil, fmt.Errorf("%s is not mapped (see 'rbd-nbd-graph list')", arg)
		}
		for _, d := range devs {
			indexes = append(indexes, d.Index)
		}
	}

	return indexes, nil
}

// mountedAt returns a mount point of dev or of one of its partitions, or "".
func mountedAt(dev string) string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		src := fields[0]
		if src == dev || (strings.HasPrefix(src, dev+"p") && len(src) > len(dev)+1) {
			return fields[1]
		}
	}
	return ""
}

// waitExit waits for process pid to exit. It is not our child, so poll
// /proc; a zombie (exited, not yet reaped by its new parent) has exited.
func waitExit(ctx context.Context, pid int) error {
	for {
		if !nbdattach.Running(pid) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("has not exited: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
