//go:build vmtest

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// The layer lifecycle on our driver against the krbd graph driver's way (every
// step a CLI process: rbd clone, rbd map through krbd, mount, umount,
// rbd unmap), in the same boot and cluster. bench/scripts/layers-vm.sh
// runs these in the VM and prints the ratios.
//
//	BenchmarkLayerLifecycle   Create + Get + Put of a child of a formatted layer
//	BenchmarkContainerLayers  the driver calls of one `docker run --rm`: an
//	                          init layer and the container layer on top,
//	                          each created, mounted, released and removed
//	BenchmarkDockerRunTrue    `docker run --rm IMAGE true` on our driver
//	                          (the krbd graph driver cannot run on dockerd 20.10)
//
// Ours is measured through the plugin socket as dockerd calls it; the
// seed's way is what its driver did, step by step.

// pluginClient calls the plugin over its socket as dockerd does.
type pluginClient struct {
	tb   testing.TB
	http *http.Client
}

func newPluginClient(tb testing.TB, sock string) *pluginClient {
	return &pluginClient{tb: tb, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}}
}

func (c *pluginClient) call(method string, req any) map[string]any {
	c.tb.Helper()
	body, _ := json.Marshal(req)
	resp, err := c.http.Post("http://plugin/GraphDriver."+method, "application/json", bytes.NewReader(body))
	if err != nil {
		c.tb.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		c.tb.Fatalf("%s: %v", method, err)
	}
	if e, _ := out["Err"].(string); e != "" || resp.StatusCode != 200 {
		c.tb.Fatalf("%s %s: %d %v", method, body, resp.StatusCode, out)
	}
	return out
}

func (c *pluginClient) create(id, parent string) {
	c.call("CreateReadWrite", map[string]string{"ID": id, "Parent": parent})
}
func (c *pluginClient) get(id string) string {
	dir, _ := c.call("Get", map[string]string{"ID": id})["Dir"].(string)
	return dir
}
func (c *pluginClient) put(id string)    { c.call("Put", map[string]string{"ID": id}) }
func (c *pluginClient) remove(id string) { c.call("Remove", map[string]string{"ID": id}) }

// oursReady starts a plugin, initializes it (as dockerd would) and makes a
// formatted parent layer with a file in it.
func oursReady(b *testing.B) (*dockerEnv, *pluginClient) {
	e := newDockerEnv(b, "rbd-nbd-bench")
	e.startPlugin()
	c := newPluginClient(b, filepath.Join("/run/docker/plugins", e.name+".sock"))
	c.call("Init", map[string]any{"Home": filepath.Join(e.dir, "home")})
	c.create("parent", "")
	dir := c.get("parent")
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		b.Fatal(err)
	}
	c.put("parent")
	b.Cleanup(func() { c.call("Cleanup", struct{}{}) })
	return e, c
}

// seedKrbd drives images the krbd graph driver's way: one CLI process per step.
type seedKrbd struct {
	tb     testing.TB
	prefix string
	mnt    string
}

func newSeedKrbd(b *testing.B, e *dockerEnv) *seedKrbd {
	s := &seedKrbd{tb: b, prefix: "rbd/" + e.prefix + "seed-", mnt: filepath.Join(e.dir, "seed-mnt")}
	if err := os.MkdirAll(s.mnt, 0o755); err != nil {
		b.Fatal(err)
	}
	// krbd: the rbd module (the seed used the kernel client).
	testkit.Must(b, time.Minute, "modprobe", "rbd")
	// The parent, formatted as ours is (layering only: krbd's features).
	base := s.prefix + "parent"
	testkit.Must(b, time.Minute, "rbd", "create", "--size", "1G", "--image-feature", "layering", base)
	dev := s.mapImage(base)
	testkit.Must(b, 5*time.Minute, "mkfs.ext4", "-F", "-q", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", dev)
	s.unmap(dev)
	s.snapshot(base)
	b.Cleanup(func() {
		testkit.Run(b, time.Minute, "rbd", "snap", "unprotect", base+"@layer")
		testkit.Run(b, time.Minute, "rbd", "snap", "rm", "--no-progress", base+"@layer")
		testkit.Run(b, time.Minute, "rbd", "rm", "--no-progress", base)
	})
	return s
}

// noudev: the guest runs no udevd, and rbd would wait for its events.
func (s *seedKrbd) mapImage(spec string) string {
	return strings.TrimSpace(testkit.Must(s.tb, 2*time.Minute, "rbd", "device", "map", "-o", "noudev", spec))
}
func (s *seedKrbd) unmap(dev string) {
	testkit.Must(s.tb, 2*time.Minute, "rbd", "device", "unmap", "-o", "noudev", dev)
}
func (s *seedKrbd) snapshot(spec string) {
	testkit.Must(s.tb, time.Minute, "rbd", "snap", "create", spec+"@layer")
	testkit.Must(s.tb, time.Minute, "rbd", "snap", "protect", spec+"@layer")
}
func (s *seedKrbd) unsnapshot(spec string) {
	testkit.Must(s.tb, time.Minute, "rbd", "snap", "unprotect", spec+"@layer")
	testkit.Must(s.tb, time.Minute, "rbd", "snap", "rm", "--no-progress", spec+"@layer")
}
func (s *seedKrbd) clone(parent, child string) {
	testkit.Must(s.tb, time.Minute, "rbd", "clone", parent+"@layer", child)
}
func (s *seedKrbd) rm(spec string) {
	testkit.Must(s.tb, time.Minute, "rbd", "rm", "--no-progress", spec)
}

// getPut is the seed's Get then Put: map, mount, umount, unmap.
func (s *seedKrbd) getPut(spec string) {
	dev := s.mapImage(spec)
	testkit.Must(s.tb, time.Minute, "mount", "-t", "ext4", dev, s.mnt)
	testkit.Must(s.tb, time.Minute, "umount", s.mnt)
	s.unmap(dev)
}

func BenchmarkLayerLifecycle(b *testing.B) {
	b.Run("ours", func(b *testing.B) {
		_, c := oursReady(b)
		i := 0
		for b.Loop() {
			id := fmt.Sprintf("child%d", i)
			i++
			c.create(id, "parent")
			c.get(id)
			c.put(id)
			b.StopTimer()
			c.remove(id)
			b.StartTimer()
		}
	})
	b.Run("seed-krbd", func(b *testing.B) {
		e := newDockerEnv(b, "rbd-nbd-bench")
		s := newSeedKrbd(b, e)
		i := 0
		for b.Loop() {
			child := fmt.Sprintf("%schild%d", s.prefix, i)
			i++
			s.clone(s.prefix+"parent", child)
			s.getPut(child)
			b.StopTimer()
			s.rm(child)
			b.StartTimer()
		}
	})
}

func BenchmarkContainerLayers(b *testing.B) {
	b.Run("ours", func(b *testing.B) {
		_, c := oursReady(b)
		i := 0
		for b.Loop() {
			init, rw := fmt.Sprintf("c%d-init", i), fmt.Sprintf("c%d", i)
			i++
			c.create(init, "parent")
			c.get(init)
			c.put(init)
			c.create(rw, init)
			c.get(rw)
			c.put(rw)
			c.remove(rw)
			c.remove(init)
		}
	})
	b.Run("seed-krbd", func(b *testing.B) {
		e := newDockerEnv(b, "rbd-nbd-bench")
		s := newSeedKrbd(b, e)
		i := 0
		for b.Loop() {
			init, rw := fmt.Sprintf("%sc%d-init", s.prefix, i), fmt.Sprintf("%sc%d", s.prefix, i)
			i++
			s.clone(s.prefix+"parent", init)
			s.getPut(init)
			s.snapshot(init)
			s.clone(init, rw)
			s.getPut(rw)
			s.rm(rw)
			s.unsnapshot(init)
			s.rm(init)
		}
	})
}

func BenchmarkDockerRunTrue(b *testing.B) {
	e := newDockerEnv(b, "rbd-nbd-bench")
	e.startPlugin()
	e.startDockerd()
	e.importBusybox("busybox:e2e")
	e.mustDocker("run", "--rm", "busybox:e2e", "true") // warm: the image's snapshot, the module
	for b.Loop() {
		e.mustDocker("run", "--rm", "busybox:e2e", "true")
	}
}
