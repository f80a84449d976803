package nbdattach

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// ConnState is what the process serving a device records about its
// connections, for `list`: the kernel's STATUS says only whether a
// device is connected, not how many of its sockets are alive.
type ConnState struct {
	PID        int   `json:"pid"`
	Configured int   `json:"configured"`
	Live       int   `json:"live"`
	Replaced   int64 `json:"replaced"`
}

func connStateFile(index int) string {
	return filepath.Join(serverPIDDir, fmt.Sprintf("nbd%d.conns", index))
}

// FollowConnections keeps dev's connection counts in its state file
// (checked every second, written when they change) until the returned
// function is called, which removes the file if it is still ours.
func FollowConnections(dev *nbd.Device, log *slog.Logger) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	path := connStateFile(dev.Index())
	go func() {
		defer close(exited)
		var last ConnState
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			live, configured, replaced := dev.Connections()
			cur := ConnState{PID: os.Getpid(), Configured: configured, Live: live, Replaced: replaced}
			if cur != last {
				if err := writeConnState(path, cur); err != nil {
					log.Warn("cannot record the device's connections", "file", path, "err", err)
				}
				last = cur
			}
			select {
			case <-done:
				return
			case <-dev.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		if st, ok := ReadConnState(dev.Index()); ok && st.PID == os.Getpid() {
			os.Remove(path)
		}
	}
}

func writeConnState(path string, st ConnState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadConnState is the recorded state of device index, if its recorder
// is alive.
func ReadConnState(index int) (ConnState, bool) {
	b, err := os.ReadFile(connStateFile(index))
	if err != nil {
		return ConnState{}, false
	}
	var st ConnState
	if json.Unmarshal(b, &st) != nil || st.PID <= 0 || !Running(st.PID) {
		return ConnState{}, false
	}
	return st, true
}
