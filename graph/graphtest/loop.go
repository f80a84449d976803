package graphtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// LoopAttacher is a graph.Attacher that attaches FileStore images as loop
// devices (losetup), so the driver's mount logic runs against the real
// kernel, mkfs and mount on hosts without NBD. Stale finds the loop
// devices whose backing file is in the store, as the NBD attacher finds
// its devices by backend identifier.
type LoopAttacher struct {
	store *FileStore

	mu       sync.Mutex
	attached map[string]graph.ImageRef // device path -> what it serves
}

var _ graph.Attacher = (*LoopAttacher)(nil)

// NewLoopAttacher attaches images of store.
func NewLoopAttacher(store *FileStore) *LoopAttacher {
	return &LoopAttacher{store: store, attached: map[string]graph.ImageRef{}}
}

// Attached lists the devices attached through this attacher and not yet
// detached.
func (a *LoopAttacher) Attached() map[string]graph.ImageRef {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]graph.ImageRef, len(a.attached))
	for k, v := range a.attached {
		out[k] = v
	}
	return out
}

func (a *LoopAttacher) Attach(ctx context.Context, req graph.AttachRequest) (graph.Device, error) {
	ref := req.Ref()
	file, err := a.store.open(ref)
	if err != nil {
		return nil, err
	}
	args := []string{"--find", "--show"}
	if req.ReadOnly || req.Snapshot != "" {
		args = append(args, "--read-only")
	}
	// Another process (other tests on this machine) may take the free
	// device losetup picked between its lookup and its setup: try again.
	var out string
	for try := 0; ; try++ {
		out, err = losetup(ctx, append(args, file)...)
		if err == nil || try == 4 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(50*(try+1)) * time.Millisecond)
	}
	if err != nil {
		a.store.close(ref)
		return nil, err
	}
	return a.track(strings.TrimSpace(out), ref), nil
}

func (a *LoopAttacher) track(path string, ref graph.ImageRef) *loopDevice {
	a.mu.Lock()
	a.attached[path] = ref
	a.mu.Unlock()
	return &loopDevice{a: a, path: path, ref: ref}
}

type loopDevice struct {
	a    *LoopAttacher
	path string
	ref  graph.ImageRef
	once sync.Once
	err  error
}

func (d *loopDevice) Path() string { return d.path }

func (d *loopDevice) Detach(ctx context.Context) error {
	d.once.Do(func() {
		if d.err = detachLoop(ctx, d.path); d.err != nil {
			return
		}
		d.a.mu.Lock()
		delete(d.a.attached, d.path)
		d.a.mu.Unlock()
		d.a.store.close(d.ref)
	})
	return d.err
}

// Release leaves the loop device attached for a later LoopAttacher's
// Stale to find; it closes the store's handle of the file.
func (d *loopDevice) Release(ctx context.Context) error {
	d.once.Do(func() {
		d.a.mu.Lock()
		delete(d.a.attached, d.path)
		d.a.mu.Unlock()
		d.a.store.close(d.ref)
	})
	return nil
}

// Stale lists loop devices backed by files of this store.
func (a *LoopAttacher) Stale(ctx context.Context) ([]graph.StaleDevice, error) {
	out, err := losetup(ctx, "--list", "--json", "--output", "NAME,BACK-FILE,RO")
	if err != nil {
		return nil, err
	}
	var list struct {
		Loopdevices []struct {
			Name     string `json:"name"`
			BackFile string `json:"back-file"`
			RO       any    `json:"ro"` // bool or "0"/"1" depending on util-linux
		} `json:"loopdevices"`
	}
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return nil, fmt.Errorf("losetup --list --json: %w", err)
		}
	}
	var stale []graph.StaleDevice
	for _, l := range list.Loopdevices {
		ref, ok := a.store.refFromDataPath(strings.TrimSuffix(l.BackFile, " (deleted)"))
		if !ok {
			continue
		}
		ro := l.RO == true || l.RO == "1"
		stale = append(stale, &staleLoop{a: a, path: l.Name, req: graph.AttachRequest{Image: ref.Image, Snapshot: ref.Snapshot, ReadOnly: ro}})
	}
	return stale, nil
}

type staleLoop struct {
	a    *LoopAttacher
	path string
	req  graph.AttachRequest
}

func (s *staleLoop) Request() graph.AttachRequest { return s.req }
func (s *staleLoop) Path() string                 { return s.path }

// Adopt takes the device over: a loop device needs no server, so this
// only records it.
func (s *staleLoop) Adopt(ctx context.Context) (graph.Device, error) {
	if _, err := s.a.store.open(s.req.Ref()); err != nil {
		return nil, err
	}
	return s.a.track(s.path, s.req.Ref()), nil
}

// Served is false: a loop device has no serving process.
func (s *staleLoop) Served() bool { return false }

func (s *staleLoop) Detach(ctx context.Context) error {
	return detachLoop(ctx, s.path)
}

// detachLoop detaches a loop device and waits until it is free. While
// anyone else has the device open (another process listing loop devices,
// say) the kernel only marks it for release at the last close, so
// losetup --detach returning is not enough.
func detachLoop(ctx context.Context, dev string) error {
	if _, err := losetup(ctx, "--detach", dev); err != nil {
		return err
	}
	backing := filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(backing); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still attached 10 s after losetup --detach: something holds it open", dev)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// DescribeDevices is the Status line for loop devices.
func (a *LoopAttacher) DescribeDevices() [][2]string {
	return [][2]string{{"Devices", "loop (test attacher)"}}
}

func losetup(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "losetup", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("losetup %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}
