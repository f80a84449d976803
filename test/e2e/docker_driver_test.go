//go:build vmtest

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// TestDockerDriver is the krbd graph driver's story on the NBD path, with a
// real dockerd (Debian's docker.io) using `rbd-nbd-graph serve` as its
// storage driver. One dockerd serves the subtests in order: starting it
// under TCG takes a while.
func TestDockerDriver(t *testing.T) {
	// A low clone depth limit, passed as dockerd does (Init), so that
	// DeepImageChains crosses it quickly.
	e := newDockerEnv(t, "rbd-nbd", "--storage-opt", "rbd.maxclonedepth=3")
	e.startPlugin()
	e.startDockerd()

	t.Run("InfoShowsTheDriver", func(t *testing.T) {
		if got := strings.TrimSpace(e.mustDocker("info", "--format", "{{.Driver}}")); got != "rbd-nbd" {
			t.Fatalf("docker info Driver = %q", got)
		}
		info := e.mustDocker("info")
		for _, want := range []string{"Pool: rbd", "Image Prefix: " + e.prefix, "Attached Devices:",
			"NBD Connections Per Device:", "librbd Cache: off (writes acknowledged once on the OSDs)",
			// serve runs itself with GODEBUG=schedtrace set, so auto submits inline.
			"librbd Submit: inline (auto: the Go runtime's sysmon is kept awake)", "Clone Depth Limit: 3", "Ceph Version:", "Kernel Version:"} {
			if !strings.Contains(info, want) {
				t.Errorf("docker info lacks %q:\n%s", want, info)
			}
		}
	})

	t.Run("ImportAndRun", func(t *testing.T) {
		e.importBusybox("busybox:e2e")
		out := e.mustDocker("run", "--rm", "busybox:e2e", "uname", "-a")
		if !strings.HasPrefix(out, "Linux ") {
			t.Fatalf("uname -a in a container: %q", out)
		}
		if devs := e.ourDevices(); len(devs) != 0 {
			t.Errorf("devices still attached after docker run --rm: %v", devs)
		}
	})

	t.Run("CommitExportAndMetadata", func(t *testing.T) {
		e.mustDocker("run", "--name", "writer", "busybox:e2e", "sh", "-c",
			"mkdir -p /data && echo hello > /data/f && dd if=/dev/urandom of=/data/blob bs=64k count=16 2>/dev/null && sha256sum /data/blob > /data/blob.sum && sync")
		e.mustDocker("commit", "writer", "committed:1")
		if out := e.mustDocker("run", "--rm", "committed:1", "cat", "/data/f"); out != "hello\n" {
			t.Fatalf("a container from the commit reads %q", out)
		}
		if out, err := e.docker(2*time.Minute, "run", "--rm", "committed:1", "sha256sum", "-c", "/data/blob.sum"); err != nil {
			t.Fatalf("checksum in a container from the commit: %v\n%s", err, out)
		}

		var md map[string]string
		raw := e.mustDocker("inspect", "--format", "{{json .GraphDriver.Data}}", "committed:1")
		if err := json.Unmarshal([]byte(raw), &md); err != nil {
			t.Fatalf("GraphDriver.Data: %v: %s", err, raw)
		}
		if !strings.HasPrefix(md["Image"], "rbd/"+e.prefix+"layer-") || md["Size"] != "1073741824" {
			t.Errorf("GraphDriver.Data of the commit: %v", md)
		}

		exported := filepath.Join(e.dir, "writer.tar")
		e.mustDocker("export", "-o", exported, "writer")
		exp, err := os.Open(exported)
		if err != nil {
			t.Fatal(err)
		}
		defer exp.Close()
		got := readTar(t, exp)
		f, err := os.Open(busyboxRootfs(t))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for name, want := range readTar(t, f) {
			if g, ok := got[name]; !ok || g.Type != want.Type || g.Linkname != want.Linkname || g.Digest != want.Digest {
				t.Errorf("export: %s = %+v (present %v), want %+v", name, g, ok, want)
			}
		}
		if f, ok := got["data/f"]; !ok || f.Digest != sha256hex("hello\n") {
			t.Errorf("export lacks the container's data/f: %+v", f)
		}
		if _, ok := got["lost+found"]; ok {
			t.Error("export shows the filesystem's lost+found")
		}
	})

	t.Run("RmAndRmiRemoveTheirImages", func(t *testing.T) {
		e.mustDocker("rm", "writer")
		e.mustDocker("rmi", "committed:1", "busybox:e2e")
		e.waitRBDImages(t, "after docker rm and rmi", e.prefix+"base")
	})

	t.Run("RestartDockerdAndPlugin", func(t *testing.T) {
		e.importBusybox("busybox:e2e")
		e.mustDocker("run", "--name", "keeper", "busybox:e2e", "sh", "-c", "echo persisted > /kept")
		e.mustDocker("commit", "keeper", "kept:1")
		e.stopDockerd()
		if devs := e.ourDevices(); len(devs) != 0 {
			t.Fatalf("devices left attached after dockerd stopped (Cleanup): %v", devs)
		}
		e.stopPlugin()
		e.startPlugin()
		e.startDockerd()
		if out := e.mustDocker("run", "--rm", "kept:1", "cat", "/kept"); out != "persisted\n" {
			t.Fatalf("after restarting both: %q", out)
		}
		if out := e.mustDocker("start", "-a", "keeper"); out != "" {
			t.Fatalf("restarting the old container printed %q", out)
		}
		if out := e.mustDocker("run", "--rm", "busybox:e2e", "ls", "/bin/busybox"); out != "/bin/busybox\n" {
			t.Fatalf("the imported image after restart: %q", out)
		}
	})

	t.Run("PluginCrashWithARunningContainer", func(t *testing.T) {
		e.mustDocker("run", "-d", "--name", "live", "busybox:e2e", "sh", "-c",
			"i=0; while true; do echo $i > /counter; sync; i=$((i+1)); sleep 1; done")
		testkit.Eventually(t, time.Minute, "the container to write", func() bool {
			out, err := e.docker(time.Minute, "exec", "live", "cat", "/counter")
			return err == nil && strings.TrimSpace(out) != ""
		})
		e.killPlugin()
		time.Sleep(2 * time.Second)
		e.startPlugin() // resumes dockerd's Init and adopts the device
		testkit.Eventually(t, 3*time.Minute, "the restarted plugin to adopt the running container's layer", func() bool {
			log, _ := os.ReadFile(filepath.Join(e.dir, "plugin.log"))
			return strings.Contains(string(log), "adopted a layer still mounted")
		})
		read := func() string {
			out, err := e.docker(2*time.Minute, "exec", "live", "cat", "/counter")
			if err != nil {
				t.Fatalf("reading in the container after the crash: %v\n%s", err, out)
			}
			return strings.TrimSpace(out)
		}
		first := read()
		time.Sleep(3 * time.Second)
		if second := read(); second == first {
			t.Fatalf("the container stopped writing after the plugin crash (counter stuck at %s)", first)
		}
		e.mustDocker("exec", "live", "sh", "-c", "echo after > /after && sync")
		e.mustDocker("rm", "-f", "live")
		if out := e.mustDocker("run", "--rm", "busybox:e2e", "true"); out != "" {
			t.Fatalf("docker run after the crash printed %q", out)
		}
	})

	t.Run("DeepImageChains", func(t *testing.T) {
		// Image layers past rbd.maxclonedepth (3) are flattened in the
		// background; every image still reads its whole history.
		img := "busybox:e2e"
		for _, name := range []string{"deepa", "deepb", "deepc"} {
			e.mustDocker("run", "--name", name, img, "sh", "-c", "echo "+name+" > /"+name)
			img = "deep:" + name
			e.mustDocker("commit", name, img)
			e.mustDocker("rm", name)
		}
		depth := func() string {
			var md map[string]string
			raw := e.mustDocker("inspect", "--format", "{{json .GraphDriver.Data}}", img)
			if err := json.Unmarshal([]byte(raw), &md); err != nil {
				t.Fatalf("GraphDriver.Data: %v: %s", err, raw)
			}
			return md["CloneDepth"]
		}
		testkit.Eventually(t, 5*time.Minute, "the deepest image layer to be flattened", func() bool {
			d := depth()
			return d == "0" || d == "1" || d == "2" || d == "3"
		})
		out := e.mustDocker("run", "--rm", img, "cat", "/deepa", "/deepc")
		if out != "deepa\ndeepc\n" {
			t.Fatalf("deepest image reads %q", out)
		}
	})

	t.Run("StorageOptSize", func(t *testing.T) {
		// --storage-opt size= grows the container's layer and its ext4
		// (online: resize2fs on the mounted filesystem); the base is 1G.
		out := e.mustDocker("run", "--rm", "--storage-opt", "size=3G", "busybox:e2e", "df", "-k", "/")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		f := strings.Fields(lines[len(lines)-1])
		if len(f) < 2 {
			t.Fatalf("df output: %q", out)
		}
		kib, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || kib < 2800<<10 {
			t.Fatalf("root filesystem of a size=3G container: %q (%v), want about 3 GiB", f[1], err)
		}
		if out, err := e.docker(time.Minute, "run", "--rm", "--storage-opt", "size=512M", "busybox:e2e", "true"); err == nil ||
			!strings.Contains(out, "smaller than the parent") {
			t.Fatalf("a size below the image's was accepted or unexplained: %v\n%s", err, out)
		}
	})

	t.Run("Cleanup", func(t *testing.T) {
		e.mustDocker("rm", "-f", "keeper")
		imgs := strings.Fields(e.mustDocker("images", "-q"))
		e.mustDocker(append([]string{"rmi", "-f"}, imgs...)...)
		e.waitRBDImages(t, "after removing everything", e.prefix+"base")
		e.stopDockerd()
		e.stopPlugin()
		if devs := e.ourDevices(); len(devs) != 0 {
			t.Fatalf("devices left attached: %v", devs)
		}
	})
}

// TestDockerDriverUsernsRemap: the same with dockerd --userns-remap=default
// (the seed's own patch): layer roots and files belong to the remapped
// range, and containers run.
func TestDockerDriverUsernsRemap(t *testing.T) {
	testkit.RequireTools(t, "useradd") // dockerd creates the dockremap user with it
	e := newDockerEnv(t, "rbd-nbd-userns", "--userns-remap=default")
	e.startPlugin()
	e.startDockerd()
	e.importBusybox("busybox:e2e")
	if out := e.mustDocker("run", "--rm", "busybox:e2e", "uname", "-a"); !strings.HasPrefix(out, "Linux ") {
		t.Fatalf("uname -a: %q", out)
	}
	e.mustDocker("run", "--name", "writer", "busybox:e2e", "sh", "-c", "echo remapped > /f && id -u > /uid")
	e.mustDocker("commit", "writer", "remapped:1")
	if out := e.mustDocker("run", "--rm", "remapped:1", "cat", "/f", "/uid"); out != "remapped\n0\n" {
		t.Fatalf("a container from the commit reads %q", out)
	}
	if out := e.mustDocker("run", "--rm", "remapped:1", "stat", "-c", "%u", "/f"); out != "0\n" {
		t.Fatalf("inside the container /f belongs to %q, want root", out)
	}
	images := e.rbdImages()
	var remappedBase string
	for _, im := range images {
		if strings.HasPrefix(im, e.prefix+"base-") {
			remappedBase = im
		}
	}
	if remappedBase == "" {
		t.Fatalf("no base image for the remapped root among %v", images)
	}
	e.mustDocker("rm", "writer")
	e.mustDocker("rmi", "remapped:1", "busybox:e2e")
	e.waitRBDImages(t, "after rm and rmi", remappedBase)
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
