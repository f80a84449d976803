//go:build vmtest

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// registry is Debian's docker-registry on a loopback port, with its
// access log in its log file.
// twoHosts sets up two hosts in this VM (two containerd, two snapshotters
// with their own host IDs) sharing layers under shared in one pool, and a
// registry on loopback; the shared images are removed at the end.
func twoHosts(t *testing.T) (a, b *ctrEnv, shared string, reg *registry) {
	shared = dkPrefix(t) + "shared-"
	a, b = newCtrEnv(t), newCtrEnv(t)
	t.Cleanup(func() { removeRBDImages(t, shared) })
	a.label, b.label = "-a", "-b"
	a.snArgs = []string{"--host-id", "host-a", "--shared-prefix", shared}
	b.snArgs = []string{"--host-id", "host-b", "--shared-prefix", shared}
	return a, b, shared, startRegistry(t, a.dir)
}

type registry struct {
	t    *testing.T
	addr string
	log  string
}

func startRegistry(t *testing.T, dir string) *registry {
	t.Helper()
	testkit.RequireTools(t, "docker-registry")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	conf := filepath.Join(dir, "registry.yml")
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "registry-data"), addr)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &registry{t: t, addr: addr, log: filepath.Join(dir, "registry.log")}
	logf, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("docker-registry", "serve", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if b, _ := os.ReadFile(r.log); t.Failed() {
			t.Logf("---- registry.log (last 4000 bytes) ----\n%s", tail(b, 4000))
		}
	})
	testkit.Eventually(t, 2*time.Minute, "the registry to answer", func() bool {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return r
}

// size is how much of the access log there is now.
// push puts the image name of archive into the registry as ref, through
// e's content store (no unpack), and leaves e without it.
func (r *registry) push(e *ctrEnv, archive, name, ref string) {
	e.mustCtr("images", "import", "--no-unpack", archive)
	e.mustCtr("images", "tag", name, ref)
	e.mustCtr("images", "push", "--plain-http", ref)
	e.mustCtr("images", "rm", "--sync", ref, name)
}

func (r *registry) size() int {
	b, _ := os.ReadFile(r.log)
	return len(b)
}

// blobGets lists the blob digests fetched since offset.
func (r *registry) blobGets(offset int) []string {
	b, _ := os.ReadFile(r.log)
	var out []string
	for _, line := range strings.Split(string(b[min(offset, len(b)):]), "\n") {
		if i := strings.Index(line, "\"GET /v2/"); i >= 0 && strings.Contains(line, "/blobs/sha256:") {
			j := strings.Index(line[i:], "/blobs/") + i + len("/blobs/")
			out = append(out, strings.Fields(line[j:])[0])
		}
	}
	return out
}

// pull runs containerd's client Pull with its unpacker into our
// snapshotter (what nerdctl, dockerd's containerd store and CRI do; ctr
// image pull in 1.6 fetches every blob first and passes no chain ID).
func (e *ctrEnv) pull(ref, snapshotter string) time.Duration {
	e.t.Helper()
	client, err := containerd.New(e.ctrdSock(), containerd.WithDefaultNamespace(ctrNamespace))
	if err != nil {
		e.t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts))})
	start := time.Now()
	if _, err := client.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter(snapshotter), containerd.WithResolver(resolver)); err != nil {
		e.t.Fatalf("pull %s into %s: %v", ref, snapshotter, err)
	}
	d := time.Since(start)
	e.t.Logf("%s: pulled %s into %s in %.1fs", e.label, ref, snapshotter, d.Seconds())
	return d
}

// TestContainerdSharedLayers: two hosts in one VM (two containerd, two
// snapshotters with their own identities and prefixes, one pool and one
// shared prefix) and a registry on loopback. Host A pulls and runs an
// image of three layers; host B pulls the same image with containerd's
// client and unpacker: it fetches no layer blob and makes no layer
// image, and runs it. Removing the image on A keeps B's container
// working; removing it on B too frees every shared image (containerd's
// GC removes every snapshot through the proxy). The pull and start times
// of A (cold) and B (shared) are logged; TestBenchContainerdPull is the
// benchmark, with containerd's overlayfs beside them.
func TestContainerdSharedLayers(t *testing.T) {
	a, b, shared, reg := twoHosts(t)

	// Three layers, the two on top of busybox of a few MiB of data each.
	archive := filepath.Join(a.dir, "image-oci.tar")
	mib := func(seed uint64) []byte { return testkit.RandomBytes(4<<20, seed) }
	writeOCIArchive(t, archive, "docker.io/library/busybox:shared",
		ociLayer{"data/l2": mib(2), "etc/l2": []byte("layer two\n")},
		ociLayer{"data/l3": mib(3), "etc/l3": []byte("layer three\n")})
	ref := reg.addr + "/e2e/busybox:shared"

	for _, e := range []*ctrEnv{a, b} {
		e.startSnapshotter()
		e.startContainerd()
	}
	reg.push(a, archive, "docker.io/library/busybox:shared", ref)

	// Host A, cold.
	startA := time.Now()
	a.pull(ref, a.name)
	out := a.mustCtr("run", "--rm", "--snapshotter", a.name, ref, "a-probe", "cat", "/etc/l2", "/etc/l3")
	coldA := time.Since(startA)
	if out != "layer two\nlayer three\n" {
		t.Fatalf("A's container reads %q", out)
	}
	if got := rbdImagesWithPrefix(t, shared); len(got) != 3 {
		t.Fatalf("shared images after A's pull: %v, want the 3 layers", got)
	}

	// Host B: nothing to fetch or unpack.
	bImages := rbdImagesWithPrefix(t, b.prefix)
	mark := reg.size()
	startB := time.Now()
	b.pull(ref, b.name)
	b.mustCtr("run", "-d", "--snapshotter", b.name, ref, "live", "sh", "-c",
		"while true; do cat /etc/l2 /etc/l3 > /seen; sleep 0.5; done")
	testkit.Eventually(t, 2*time.Minute, "B's container to read its layers", func() bool {
		out, err := b.ctr(time.Minute, "task", "exec", "--exec-id", "s0", "live", "cat", "/seen")
		return err == nil && out == "layer two\nlayer three\n"
	})
	sharedB := time.Since(startB)
	for _, got := range reg.blobGets(mark) {
		if isLayer(t, archive, got) {
			t.Errorf("host B fetched layer blob %s from the registry", got)
		}
	}
	// B's only new image is its container's writable layer.
	if got := rbdImagesWithPrefix(t, b.prefix); len(got) != len(bImages)+1 {
		t.Fatalf("B's images: %v -> %v; want only the container's writable layer more", bImages, got)
	}

	// Removing the image on A keeps B's container working.
	a.mustCtr("images", "rm", "--sync", ref)
	testkit.Eventually(t, 3*time.Minute, "A's snapshots to go", func() bool { return len(a.snapshots()) == 0 })
	if got := rbdImagesWithPrefix(t, shared); len(got) != 3 {
		t.Fatalf("shared images after A removed the image: %v, want the 3 B uses", got)
	}
	if out, err := b.ctr(time.Minute, "task", "exec", "--exec-id", "s1", "live", "sh", "-c", "cat /etc/l2 /etc/l3 && md5sum /data/l2 /data/l3"); err != nil ||
		!strings.HasPrefix(out, "layer two\nlayer three\n") {
		t.Fatalf("B's container after A removed the image: %q, %v", out, err)
	}

	// Removing it on B too frees every shared image.
	b.mustCtr("task", "kill", "-s", "SIGKILL", "live")
	testkit.Eventually(t, 2*time.Minute, "B's task to stop", func() bool {
		out, _ := b.ctr(time.Minute, "task", "ls")
		return !strings.Contains(out, "RUNNING")
	})
	b.mustCtr("task", "rm", "live")
	b.mustCtr("containers", "rm", "live")
	b.mustCtr("images", "rm", "--sync", ref)
	testkit.Eventually(t, 3*time.Minute, "B's snapshots to go", func() bool { return len(b.snapshots()) == 0 })
	// The snapshotter deletes them in the background, a few RBD calls
	// each (seconds apiece on a loaded TCG guest).
	testkit.Eventually(t, 8*time.Minute, "every shared image to go", func() bool {
		return len(rbdImagesWithPrefix(t, shared)) == 0
	})
	for _, e := range []*ctrEnv{a, b} {
		if got := rbdImagesWithPrefix(t, e.prefix); len(got) != 1 {
			t.Errorf("%s's images left: %v, want only its base", e.label, got)
		}
	}

	t.Logf("pull+start: A cold %.1fs, B shared %.1fs (B/A %.2f); with overlayfs: TestBenchContainerdPull",
		coldA.Seconds(), sharedB.Seconds(), sharedB.Seconds()/coldA.Seconds())
}

// isLayer reports whether digest is a layer of the archive's image (not
// its config or manifest): layers are the tar blobs, which start with a
// tar header's name field rather than "{".
func isLayer(t *testing.T, archive, digest string) bool {
	t.Helper()
	out, err := testkit.Run(t, time.Minute, "tar", "-xOf", archive, "blobs/sha256/"+strings.TrimPrefix(digest, "sha256:"))
	return err == nil && !bytes.HasPrefix([]byte(out), []byte("{"))
}
