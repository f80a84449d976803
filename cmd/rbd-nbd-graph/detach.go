package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// runDetach: detach DEVICE|TARGET. As rbd-nbd's detach: the server of a
// device mapped by map or attach stops serving and exits, and the device
// stays connected in the kernel, its IO queued for --dead-conn-timeout
// (the map flag) until 'attach TARGET' serves it again. The server is
// told with detachSignal, which hands the device over even under
// --detach-on-exit.
func runDetach(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "detach", "detach [flags] DEVICE|TARGET",
		"Stops the server of a device mapped by map or attach and keeps the device: the kernel\n"+
			"holds its IO for map's --dead-conn-timeout, and 'rbd-nbd-graph attach TARGET' serves it\n"+
			"again (as rbd-nbd detach and attach). DEVICE: /dev/nbdN; TARGET: as given to map.")
	var timeout time.Duration
	durationVar(fs, &timeout, "timeout", 60*time.Second, "how long to wait for the server to exit")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: want exactly one DEVICE or TARGET, got %q", errUsage, fs.Args())
	}
	indexes, err := mappedDevices(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, i := range indexes {
		dev := nbd.DevicePath(i)
		st, err := nbd.Status(ctx, i)
		if err != nil {
			return err
		}
		id, ours := nbdattach.ParseBackendID(st.BackendID)
		if !ours || id.Layer {
			return fmt.Errorf("%s is not served by 'rbd-nbd-graph map' (a layer of serve or snapshotter, or another tool's device): only map and attach devices can be detached", dev)
		}
		pid := nbdattach.ServerPID(st)
		if pid <= 0 || pid == os.Getpid() {
			return fmt.Errorf("%s has no running server: it is detached already ('rbd-nbd-graph attach %s' serves it again)", dev, id.Target)
		}
		if !isMapServer(pid) {
			return fmt.Errorf("%s: process %d is not an 'rbd-nbd-graph map' or 'attach' server; not signalling it", dev, pid)
		}
		if err := syscall.Kill(pid, detachSignal); err != nil {
			return fmt.Errorf("%s: telling its server (pid %d) to detach: %w", dev, pid, err)
		}
		if err := waitExit(wctx, pid); err != nil {
			return fmt.Errorf("%s: its server (pid %d) %w", dev, pid, err)
		}
		if st, err := nbd.Status(ctx, i); err != nil || !st.Connected {
			return fmt.Errorf("%s: the server exited but the device is no longer connected (%v)", dev, err)
		}
		env.log.Debug("detached", "device", dev, "server", pid)
	}
	return nil
}

// isMapServer says whether pid runs 'rbd-nbd-graph map' or 'attach': a
// recorded or kernel-reported pid may have been reused by an unrelated
// process, which must not get the signal.
func isMapServer(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	argv := bytes.Split(b, []byte{0})
	return len(argv) > 1 && (string(argv[1]) == "map" || string(argv[1]) == "attach")
}
