//go:build vmtest

package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// ctrEnv is one `rbd-nbd-graph snapshotter` and one containerd with a
// proxy_plugins entry for its socket, each in its own folder, started
// the way an operator runs them: snapshotter first, then containerd.
type ctrEnv struct {
	t      *testing.T
	dir    string
	prefix string // RBD image prefix of this env's per-host layers
	name   string // the snapshotter's name in containerd
	sock   string // the snapshotter's socket

	sn     *exec.Cmd
	snDone chan error
	// logMark is where the current start's lines begin in
	// snapshotter.log: an earlier start's ready line must not count.
	logMark int64
	ctrd    *exec.Cmd
	ctrdCh  chan error
	// snArgs are added to every start of the snapshotter (host identity,
	// shared prefix).
	snArgs []string
	// label names the env in its log files (two hosts in one test).
	label string
}

const ctrNamespace = "e2e"

func newCtrEnv(t *testing.T) *ctrEnv {
	t.Helper()
	testkit.RequireKernelNBD(t)
	needCeph(t)
	testkit.RequireTools(t, "containerd", "ctr", "runc", "mkfs.ext4")
	_, err := os.Stat("/bin/busybox")
	testkit.Require(t, err == nil, "needs /bin/busybox (package busybox-static) for the test image")
	e := &ctrEnv{t: t, dir: workDir(t), prefix: dkPrefix(t), name: "rbd-nbd"}
	e.sock = filepath.Join(e.dir, "snapshotter.sock")
	t.Cleanup(func() {
		if e.ctrd != nil {
			e.ctr(2*time.Minute, "task", "kill", "-s", "SIGKILL", "live")
			e.stopContainerd()
		}
		if e.sn != nil {
			e.stopSnapshotter(syscall.SIGTERM)
		}
		for _, l := range []string{"snapshotter.log", "containerd.log"} {
			b, _ := os.ReadFile(filepath.Join(e.dir, l))
			if t.Failed() {
				t.Logf("---- %s (last 6000 bytes) ----\n%s", l, tail(b, 6000))
			}
			if out := os.Getenv("VM_OUT"); out != "" && len(b) > 0 {
				_ = os.WriteFile(filepath.Join(out, strings.ReplaceAll(t.Name(), "/", "_")+e.label+"-"+l), b, 0o644)
			}
		}
		removeRBDImages(t, e.prefix)
	})
	return e
}

// startSnapshotter runs `rbd-nbd-graph snapshotter --detach-on-exit`
// style options of a test and waits for its socket.
func (e *ctrEnv) startSnapshotter(extra ...string) {
	e.t.Helper()
	args := []string{"snapshotter", "--socket", e.sock, "--root", filepath.Join(e.dir, "sn"),
		"-o", "rbd.pool=rbd",
		"-o", "rbd.configfile=" + os.Getenv("CEPH_CONF"),
		"-o", "rbd.imageprefix=" + e.prefix,
		"-o", "rbd.basesize=1G",
	}
	args = append(append(args, e.snArgs...), extra...)
	logf, err := os.OpenFile(filepath.Join(e.dir, "snapshotter.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(testkit.Binary(e.t), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "RBD_NBD_GRAPH_LOG=debug")
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.sn, e.snDone = cmd, make(chan error, 1)
	go func() { e.snDone <- cmd.Wait() }()
	// The socket appears before the driver is ready (it listens first),
	// so wait for a call to succeed: the ready line in its log.
	testkit.Eventually(e.t, 3*time.Minute, "the snapshotter to be ready", func() bool {
		select {
		case err := <-e.snDone:
			e.sn = nil
			e.t.Fatalf("the snapshotter exited at start: %v", err)
		default:
		}
		b, _ := os.ReadFile(filepath.Join(e.dir, "snapshotter.log"))
		return bytes.Contains(b[min(len(b), int(e.logMark)):], []byte("serving containerd's snapshots API"))
	})
	st, err := os.Stat(e.sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		e.t.Fatalf("snapshotter socket: %v, %v; want mode 0600", st.Mode(), err)
	}
	e.t.Logf("snapshotter up in %.1fs", time.Since(start).Seconds())
}

func (e *ctrEnv) markLog() {
	if st, err := os.Stat(filepath.Join(e.dir, "snapshotter.log")); err == nil {
		e.logMark = st.Size()
	}
}

func (e *ctrEnv) stopSnapshotter(sig syscall.Signal) {
	e.t.Helper()
	e.markLog()
	e.sn.Process.Signal(sig)
	select {
	case err := <-e.snDone:
		if sig == syscall.SIGTERM && err != nil {
			e.t.Errorf("the snapshotter exited with %v after SIGTERM", err)
		}
	case <-time.After(3 * time.Minute):
		e.sn.Process.Kill()
		<-e.snDone
		e.t.Errorf("the snapshotter did not exit within 3 minutes of %v", sig)
	}
	e.sn = nil
}

// startContainerd runs containerd with the proxy_plugins entry (and no
// CRI), and waits until it answers.
func (e *ctrEnv) startContainerd() {
	e.t.Helper()
	conf := filepath.Join(e.dir, "containerd.toml")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[debug]
  level = "debug"
[grpc]
  address = %q
[proxy_plugins]
  [proxy_plugins.%s]
    type = "snapshot"
    address = %q
`, filepath.Join(e.dir, "containerd-root"), filepath.Join(e.dir, "containerd-state"), e.ctrdSock(), e.name, e.sock)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		e.t.Fatal(err)
	}
	logf, err := os.OpenFile(filepath.Join(e.dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("containerd", "--config", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.ctrd, e.ctrdCh = cmd, make(chan error, 1)
	go func() { e.ctrdCh <- cmd.Wait() }()
	testkit.Eventually(e.t, 5*time.Minute, "containerd to answer", func() bool {
		select {
		case err := <-e.ctrdCh:
			e.ctrd = nil
			e.t.Fatalf("containerd exited at start: %v", err)
		default:
		}
		_, err := testkit.Run(e.t, time.Minute, "ctr", "--address", e.ctrdSock(), "version")
		return err == nil
	})
	e.t.Logf("containerd up in %.1fs", time.Since(start).Seconds())
}

func (e *ctrEnv) stopContainerd() {
	e.ctrd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.ctrdCh:
	case <-time.After(time.Minute):
		e.ctrd.Process.Kill()
		<-e.ctrdCh
	}
	e.ctrd = nil
}

func (e *ctrEnv) ctrdSock() string { return filepath.Join(e.dir, "containerd.sock") }

// ctr runs ctr against this env's containerd in the test namespace.
func (e *ctrEnv) ctr(timeout time.Duration, args ...string) (string, error) {
	e.t.Helper()
	start := time.Now()
	out, err := testkit.Run(e.t, timeout, "ctr", append([]string{"--address", e.ctrdSock(), "--namespace", ctrNamespace}, args...)...)
	e.t.Logf("$ ctr %s  (%.1fs)", strings.Join(args, " "), time.Since(start).Seconds())
	return out, err
}

func (e *ctrEnv) mustCtr(args ...string) string {
	e.t.Helper()
	out, err := e.ctr(5*time.Minute, args...)
	if err != nil {
		e.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// collectGarbage runs one containerd garbage collection and waits for it,
// by deleting a fresh lease with --sync. A snapshot removal does not
// always schedule one: containerd drops a deletion event stamped before
// the end of the collection in progress, although that collection's walk
// of the backend may already have missed the removal (CI: writer-done
// removed 25 ms into a collection stayed in the pool for the 3 minutes
// that no other change came).
func (e *ctrEnv) collectGarbage() {
	e.t.Helper()
	id := strings.TrimSpace(e.mustCtr("leases", "create"))
	e.mustCtr("leases", "rm", "--sync", id)
}

// snapshots lists the keys `ctr snapshots ls` shows for our snapshotter.
func (e *ctrEnv) snapshots() map[string]string {
	e.t.Helper()
	out := e.mustCtr("snapshots", "--snapshotter", e.name, "ls")
	kinds := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 2 {
			kinds[f[0]] = f[len(f)-1]
		}
	}
	return kinds
}

// rbdImagesWithPrefix lists the images of pool rbd starting with prefix.
func rbdImagesWithPrefix(t testing.TB, prefix string) []string {
	t.Helper()
	out := testkit.Must(t, time.Minute, "rbd", "ls", "-p", "rbd")
	var mine []string
	for _, im := range strings.Fields(out) {
		if strings.HasPrefix(im, prefix) {
			mine = append(mine, im)
		}
	}
	sort.Strings(mine)
	return mine
}

// removeRBDImages deletes what a test left in the pool (snapshots first,
// children before parents).
func removeRBDImages(t testing.TB, prefix string) {
	for round := 0; round < 8; round++ {
		left := rbdImagesWithPrefix(t, prefix)
		if len(left) == 0 {
			return
		}
		for _, im := range left {
			spec := "rbd/" + im
			testkit.Run(t, time.Minute, "rbd", "snap", "unprotect", spec+"@layer")
			testkit.Run(t, time.Minute, "rbd", "snap", "purge", "--no-progress", spec)
			testkit.Run(t, time.Minute, "rbd", "rm", "--no-progress", spec)
		}
	}
	t.Errorf("images left in the pool: %v", rbdImagesWithPrefix(t, prefix))
}

// ociLayer is one layer of a test image: files added to a tar.
type ociLayer map[string][]byte

// writeOCIArchive writes an OCI image layout tar (what `ctr images
// import` reads) of the busybox rootfs plus extra layers, named ref.
func writeOCIArchive(t testing.TB, path, ref string, extra ...ociLayer) {
	t.Helper()
	base, err := os.ReadFile(busyboxRootfs(t))
	if err != nil {
		t.Fatal(err)
	}
	layers := [][]byte{base}
	for _, l := range extra {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		names := make([]string, 0, len(l))
		for n := range l {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(l[n])), ModTime: time.Unix(1700000000, 0)}); err != nil {
				t.Fatal(err)
			}
			tw.Write(l[n])
		}
		tw.Close()
		layers = append(layers, buf.Bytes())
	}
	blobs := map[string][]byte{}
	add := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return d, len(b)
	}
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Platform    map[string]string `json:"platform,omitempty"`
	}
	var layerDescs []desc
	var diffIDs []string
	for _, l := range layers {
		d, n := add(l)
		layerDescs = append(layerDescs, desc{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: d, Size: n})
		diffIDs = append(diffIDs, d)
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"/bin/sh"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	cd, cn := add(cfg)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cd, Size: cn},
		"layers": layerDescs,
	})
	md, mn := add(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []desc{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: md, Size: mn,
			Platform:    map[string]string{"architecture": "amd64", "os": "linux"},
			Annotations: map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref[strings.LastIndex(ref, ":")+1:]}}},
	})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	file := func(name string, b []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	file("index.json", index)
	digests := make([]string, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	for _, d := range digests {
		file("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d])
	}
	tw.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// rootMount is the line of /proc/mounts for / inside a container.
func rootMount(out string) []string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[1] == "/" {
			return f
		}
	}
	return nil
}

// TestContainerdSnapshotter: containerd 1.6 (Debian's) with a
// proxy_plugins entry imports a busybox image into the snapshotter and
// runs containers on NBD devices; a container's writes are committed and
// viewed; ctr snapshots ls/info/usage/rm show and remove ours; a restart
// of the snapshotter under a running container loses nothing; removing
// everything leaves only the base image in the pool.
func TestContainerdSnapshotter(t *testing.T) {
	e := newCtrEnv(t)
	e.startSnapshotter()
	e.startContainerd()

	const ref = "docker.io/library/busybox:e2e"
	archive := filepath.Join(e.dir, "busybox-oci.tar")
	writeOCIArchive(t, archive, ref, ociLayer{"etc/layer2": []byte("second layer\n")})
	e.mustCtr("images", "import", "--snapshotter", e.name, archive)
	snaps := e.snapshots()
	committed := 0
	for _, kind := range snaps {
		if kind == "Committed" {
			committed++
		}
	}
	if committed != 2 {
		t.Fatalf("after the import, ctr snapshots ls shows %v; want the image's 2 layers committed", snaps)
	}

	// A container runs on an NBD device.
	out := e.mustCtr("run", "--rm", "--snapshotter", e.name, ref, "probe", "cat", "/proc/mounts", "/etc/layer2")
	root := rootMount(out)
	if root == nil || !strings.HasPrefix(root[0], "/dev/nbd") || root[2] != "ext4" || !strings.HasPrefix(root[3], "rw") {
		t.Fatalf("the container's / is %v, want a read-write ext4 on /dev/nbdN:\n%s", root, out)
	}
	if !strings.Contains(out, "second layer") {
		t.Fatalf("the container does not see the second layer's file:\n%s", out)
	}

	// A container writes; its snapshot is committed and viewed.
	e.mustCtr("run", "--snapshotter", e.name, ref, "writer", "sh", "-c", "echo written-by-writer > /data && sync")
	e.mustCtr("snapshots", "--snapshotter", e.name, "commit", "writer-done", "writer")
	e.mustCtr("containers", "rm", "writer")
	target := filepath.Join(e.dir, "view")
	os.MkdirAll(target, 0o755)
	e.mustCtr("snapshots", "--snapshotter", e.name, "view", "--target", target, "writer-view", "writer-done")
	mounts := e.mustCtr("snapshots", "--snapshotter", e.name, "mounts", target, "writer-view")
	if !strings.Contains(mounts, "/dev/nbd") || !strings.Contains(mounts, "ext4") || !strings.Contains(mounts, "ro") {
		t.Fatalf("ctr snapshots mounts = %q, want a read-only ext4 mount of /dev/nbdN", mounts)
	}
	testkit.Must(t, time.Minute, "sh", "-c", mounts)
	b, err := os.ReadFile(filepath.Join(target, "data"))
	testkit.Run(t, time.Minute, "umount", target)
	if err != nil || string(b) != "written-by-writer\n" {
		t.Fatalf("the view of the committed container snapshot reads %q, %v", b, err)
	}

	// ctr snapshots info and usage.
	info := e.mustCtr("snapshots", "--snapshotter", e.name, "info", "writer-done")
	if !strings.Contains(info, `"Kind": "Committed"`) || !strings.Contains(info, `"Parent"`) {
		t.Fatalf("ctr snapshots info writer-done = %s", info)
	}
	usage := e.mustCtr("snapshots", "--snapshotter", e.name, "usage", "-b", "writer-done")
	var size int64
	for _, line := range strings.Split(usage, "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "writer-done" {
			size, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	if size <= 0 {
		t.Fatalf("ctr snapshots usage -b writer-done = %q, want a size > 0", usage)
	}

	// ctr snapshots rm removes ours (children first) and their images.
	before := len(rbdImagesWithPrefix(t, e.prefix))
	e.mustCtr("snapshots", "--snapshotter", e.name, "rm", "writer-view")
	e.mustCtr("snapshots", "--snapshotter", e.name, "rm", "writer-done")
	// containerd drops its records at once and the backend snapshots at
	// its next garbage collection, which a removal does not always
	// schedule (see collectGarbage), so the wait asks for one.
	testkit.Eventually(t, 3*time.Minute, "the removed snapshots' images to go", func() bool {
		e.collectGarbage()
		return len(rbdImagesWithPrefix(t, e.prefix)) == before-2
	})
	if _, ok := e.snapshots()["writer-done"]; ok {
		t.Fatal("writer-done still listed after ctr snapshots rm")
	}

	// A restart of the snapshotter under a running container.
	e.mustCtr("run", "-d", "--snapshotter", e.name, ref, "live", "sh", "-c",
		"i=0; while true; do echo $i >> /log; i=$((i+1)); sync; sleep 0.2; done")
	execs := 0
	liveLog := func() (string, error) {
		execs++
		return e.ctr(time.Minute, "task", "exec", "--exec-id", fmt.Sprintf("c%d", execs), "live", "sh", "-c", "sync; cat /log")
	}
	written := 0
	testkit.Eventually(t, 2*time.Minute, "the live container to write", func() bool {
		out, err := liveLog()
		written = strings.Count(out, "\n")
		return err == nil && written >= 3
	})
	dmesgBefore, _ := testkit.Run(t, time.Minute, "dmesg")
	e.stopSnapshotter(syscall.SIGTERM)
	time.Sleep(3 * time.Second)
	e.startSnapshotter()
	// The container's syncs wait while no process serves its device, until
	// the new one adopts it; on a loaded guest the start alone takes a
	// minute (seen: 19 lines in all across it). So wait for it to write on,
	// rather than count lines in a fixed time.
	testkit.Eventually(t, 3*time.Minute, "the live container to write on after the restart", func() bool {
		o, err := liveLog()
		out = o
		return err == nil && strings.Count(o, "\n") >= written+20
	})
	lines := strings.Fields(out)
	for i, l := range lines {
		if l != strconv.Itoa(i) {
			t.Fatalf("the live container's log is broken at line %d (%q) after the restart:\n%s", i, l, out)
		}
	}
	dmesg, _ := testkit.Run(t, time.Minute, "dmesg")
	if fresh := dmesg[min(len(dmesg), len(dmesgBefore)):]; strings.Contains(fresh, "I/O error") {
		t.Fatalf("IO errors across the restart:\n%s", tail([]byte(fresh), 3000))
	}
	e.mustCtr("task", "kill", "-s", "SIGKILL", "live")
	testkit.Eventually(t, 2*time.Minute, "the live task to stop", func() bool {
		out, _ := e.ctr(time.Minute, "task", "ls")
		return !strings.Contains(out, "RUNNING")
	})
	e.mustCtr("task", "rm", "live")
	e.mustCtr("containers", "rm", "live")
	t.Logf("the live container wrote %d lines across the restart", len(lines))

	// Removing the image frees every layer (containerd's GC removes the
	// snapshots through the proxy): only the base image stays.
	e.mustCtr("images", "rm", "--sync", ref)
	testkit.Eventually(t, 3*time.Minute, "containerd's GC to remove our snapshots", func() bool {
		return len(e.snapshots()) == 0
	})
	// The snapshotter deletes the layers in the background once their
	// records are gone (graph/snapshotter/reaper.go), a few RBD calls each.
	var left []string
	testkit.Eventually(t, 3*time.Minute, "every layer image but the base to go", func() bool {
		left = rbdImagesWithPrefix(t, e.prefix)
		return len(left) == 1 && strings.HasSuffix(left[0], "base")
	})
	t.Logf("images left after removing everything: %v", left)
}
