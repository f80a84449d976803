//go:build vmtest

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// dockerEnv is one graph driver plugin (`rbd-nbd-graph serve`) and one
// dockerd using it, each in its own folder, the way an operator runs
// them: plugin first, then `dockerd --experimental -s NAME`.
type dockerEnv struct {
	t          testing.TB
	name       string // plugin name = storage driver name
	dir        string
	prefix     string // RBD image prefix of this env
	dockerArgs []string
	// storageDriver, when set, is a built-in driver (overlay2) dockerd
	// uses instead of the plugin; dataRoot, when set, is its --data-root.
	storageDriver string
	dataRoot      string

	plugin     *exec.Cmd
	pluginDone chan error
	dockerd    *exec.Cmd
	dockerDone chan error
	ctrd       *exec.Cmd
	ctrdDone   chan error
}

// The helpers of the docker tests take testing.TB so the benchmarks
// (docker_bench_test.go) share them.

// needDocker: everything a docker end-to-end test uses: root, a kernel
// with the nbd module, the test cluster, dockerd and its helpers, busybox.
func needDocker(t testing.TB) {
	t.Helper()
	testkit.RequireKernelNBD(t)
	testkit.CephConf(t)
	testkit.RequireTools(t, "dockerd", "containerd", "runc", "rbd", "mkfs.ext4")
	_, err := os.Stat("/bin/busybox")
	testkit.Require(t, err == nil, "needs /bin/busybox (package busybox-static) for the test image")
}

// dkPrefix is a fresh RBD image prefix for one test.
func dkPrefix(t testing.TB) string {
	var b [4]byte
	rand.Read(b[:])
	return "e2e" + hex.EncodeToString(b[:]) + "-"
}

// newDockerEnv prepares an env; dockerdArgs are added to dockerd's
// command line (e.g. --userns-remap=default, --storage-opt ...).
func newDockerEnv(t testing.TB, name string, dockerdArgs ...string) *dockerEnv {
	t.Helper()
	needDocker(t)
	e := &dockerEnv{
		t:          t,
		name:       name,
		dir:        workDir(t),
		prefix:     dkPrefix(t),
		dockerArgs: dockerdArgs,
	}
	// dockerd --userns-remap needs every folder above its data root
	// traversable by the remapped root (MkdirTemp makes 0700).
	if err := os.Chmod(e.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever happened, leave nothing running for the next test.
		if e.dockerd != nil {
			e.stopDockerd()
		}
		if e.plugin != nil {
			e.stopPlugin()
		}
		if e.ctrd != nil {
			e.ctrd.Process.Signal(syscall.SIGTERM)
			select {
			case <-e.ctrdDone:
			case <-time.After(time.Minute):
				e.ctrd.Process.Kill()
				<-e.ctrdDone
			}
		}
		for _, l := range []string{"plugin.log", "dockerd.log", "containerd.log"} {
			b, _ := os.ReadFile(filepath.Join(e.dir, l))
			// In the VM, keep the logs with the results (per-step timings
			// of the driver are in the plugin's debug log), and show
			// only their ends: CI shows the end of a failed test's
			// output, where whole logs would push out the failure.
			out := os.Getenv("VM_OUT")
			name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-" + l
			if out != "" && len(b) > 0 {
				_ = os.WriteFile(filepath.Join(out, name), b, 0o644)
			}
			switch {
			case !t.Failed():
			case out != "":
				t.Logf("---- %s (last 1500 bytes; all of it in %s) ----\n%s", l, filepath.Join(out, name), tail(b, 1500))
			default:
				t.Logf("---- %s (last 6000 bytes) ----\n%s", l, tail(b, 6000))
			}
		}
		e.removeImages()
	})
	return e
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// host is the DOCKER_HOST of this env's dockerd.
func (e *dockerEnv) host() string { return "unix://" + filepath.Join(e.dir, "docker.sock") }

// startPlugin runs `rbd-nbd-graph serve` in the background and waits for
// its socket.
func (e *dockerEnv) startPlugin(extra ...string) {
	e.t.Helper()
	args := []string{"serve", "--name", e.name,
		"--state", filepath.Join(e.dir, "plugin-state.json")}
	args = append(append(args, e.pluginOptions()...), extra...)
	e.startPluginCmd(testkit.Binary(e.t), args...)
}

// pluginOptions are the driver options every env's plugin gets.
func (e *dockerEnv) pluginOptions() []string {
	return []string{
		"-o", "rbd.pool=rbd",
		"-o", "rbd.configfile=" + os.Getenv("CEPH_CONF"),
		"-o", "rbd.imageprefix=" + e.prefix,
		"-o", "rbd.basesize=1G",
	}
}

// startPluginCmd runs the plugin binary bin with args in the background
// (debug log in plugin.log) and waits for its socket.
func (e *dockerEnv) startPluginCmd(bin string, args ...string) {
	e.t.Helper()
	logf, err := os.OpenFile(filepath.Join(e.dir, "plugin.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "RBD_NBD_GRAPH_LOG=debug")
	sock := filepath.Join("/run/docker/plugins", e.name+".sock")
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.plugin = cmd
	e.pluginDone = make(chan error, 1)
	go func() { e.pluginDone <- cmd.Wait() }()
	testkit.Eventually(e.t, 30*time.Second, "the plugin socket "+sock, func() bool {
		select {
		case err := <-e.pluginDone:
			e.pluginDone <- err
			return true // reported below
		default:
		}
		return acceptsConnections(sock)
	})
	select {
	case err := <-e.pluginDone:
		e.plugin = nil
		e.t.Fatalf("the plugin exited at start: %v", err)
	default:
	}
	e.t.Logf("plugin %s up in %.1fs", e.name, time.Since(start).Seconds())
}

// stopPlugin sends SIGTERM and waits (the plugin cleans up first).
func (e *dockerEnv) stopPlugin() {
	e.t.Helper()
	e.signalPlugin(syscall.SIGTERM)
}

// killPlugin kills the plugin as a crash would: nothing is cleaned.
func (e *dockerEnv) killPlugin() {
	e.t.Helper()
	e.signalPlugin(syscall.SIGKILL)
}

func (e *dockerEnv) signalPlugin(sig syscall.Signal) {
	e.t.Helper()
	if e.plugin == nil {
		return
	}
	e.plugin.Process.Signal(sig)
	select {
	case err := <-e.pluginDone:
		if sig == syscall.SIGTERM && err != nil {
			e.t.Errorf("the plugin exited with %v after SIGTERM", err)
		}
	case <-time.After(3 * time.Minute):
		e.plugin.Process.Kill()
		<-e.pluginDone
		e.t.Errorf("the plugin did not exit within 3 minutes of %v", sig)
	}
	e.plugin = nil
}

// startContainerd runs a containerd of this env's own, once. dockerd
// would start one itself, but gives up on it after a fixed time that a
// loaded machine under TCG can exceed; started here it gets all the time
// it needs.
func (e *dockerEnv) startContainerd() {
	e.t.Helper()
	if e.ctrd != nil {
		return
	}
	sock := filepath.Join(e.dir, "containerd.sock")
	conf := filepath.Join(e.dir, "containerd.toml")
	cfg := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
		filepath.Join(e.dir, "containerd-root"), filepath.Join(e.dir, "containerd-state"), sock)
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
	e.ctrd = cmd
	e.ctrdDone = make(chan error, 1)
	go func() { e.ctrdDone <- cmd.Wait() }()
	testkit.Eventually(e.t, 5*time.Minute, "containerd to answer", func() bool {
		select {
		case err := <-e.ctrdDone:
			e.ctrd = nil
			e.t.Fatalf("containerd exited at start: %v", err)
		default:
		}
		_, err := testkit.Run(e.t, time.Minute, "ctr", "--address", sock, "version")
		return err == nil
	})
	e.t.Logf("containerd up in %.1fs", time.Since(start).Seconds())
}

// startDockerd starts dockerd on the plugin (and containerd, the first
// time) and waits until it answers.
func (e *dockerEnv) startDockerd() {
	e.t.Helper()
	e.startContainerd()
	driver, dataRoot := []string{"--experimental", "-s", e.name}, filepath.Join(e.dir, "data")
	if e.storageDriver != "" {
		driver = []string{"--storage-driver", e.storageDriver}
	}
	if e.dataRoot != "" {
		dataRoot = e.dataRoot
	}
	args := append(driver, "--data-root", dataRoot,
		"--exec-root", filepath.Join(e.dir, "exec"),
		"--pidfile", filepath.Join(e.dir, "dockerd.pid"),
		"--containerd", filepath.Join(e.dir, "containerd.sock"),
		"-H", e.host(),
		"--iptables=false", "--bridge=none",
	)
	args = append(args, e.dockerArgs...)
	logf, err := os.OpenFile(filepath.Join(e.dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("dockerd", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.dockerd = cmd
	e.dockerDone = make(chan error, 1)
	go func() { e.dockerDone <- cmd.Wait() }()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		select {
		case err := <-e.dockerDone:
			e.dockerd = nil
			e.t.Fatalf("dockerd exited at start: %v", err)
		default:
		}
		if _, err := e.docker(time.Minute, "version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatal("dockerd did not answer within 5 minutes")
		}
		time.Sleep(time.Second)
	}
	e.t.Logf("dockerd up in %.1fs", time.Since(start).Seconds())
}

// stopDockerd sends SIGTERM and waits; dockerd calls the driver's Cleanup.
func (e *dockerEnv) stopDockerd() {
	e.t.Helper()
	if e.dockerd == nil {
		return
	}
	e.dockerd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.dockerDone:
	case <-time.After(3 * time.Minute):
		e.dockerd.Process.Kill()
		<-e.dockerDone
		e.t.Errorf("dockerd did not exit within 3 minutes of SIGTERM")
	}
	e.dockerd = nil
}

// dockerCLI is Debian's client when present (it matches dockerd 20.10),
// else whatever docker is on PATH.
func dockerCLI() string {
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker"
	}
	return "docker"
}

// docker runs the docker client against this env's dockerd.
func (e *dockerEnv) docker(timeout time.Duration, args ...string) (string, error) {
	e.t.Helper()
	return e.dockerIn(timeout, nil, args...)
}

func (e *dockerEnv) dockerIn(timeout time.Duration, stdin io.Reader, args ...string) (string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockerCLI(), append([]string{"-H", e.host()}, args...)...)
	cmd.Stdin = stdin
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	e.t.Logf("$ docker %s  (%.1fs)", strings.Join(args, " "), time.Since(start).Seconds())
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, timeout)
	}
	return out.String(), err
}

// mustDocker runs a docker command that has to succeed.
func (e *dockerEnv) mustDocker(args ...string) string {
	e.t.Helper()
	out, err := e.docker(5*time.Minute, args...)
	if err != nil {
		e.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// importBusybox imports the test rootfs as ref.
func (e *dockerEnv) importBusybox(ref string) {
	e.t.Helper()
	tarball := busyboxRootfs(e.t)
	f, err := os.Open(tarball)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if out, err := e.dockerIn(5*time.Minute, f, "import", "-", ref); err != nil {
		e.t.Fatalf("docker import: %v\n%s", err, out)
	}
}

// rbdImages lists this env's images in pool rbd.
func (e *dockerEnv) rbdImages() []string {
	e.t.Helper()
	out := testkit.Must(e.t, time.Minute, "rbd", "ls", "-p", "rbd")
	var mine []string
	for _, im := range strings.Fields(out) {
		if strings.HasPrefix(im, e.prefix) {
			mine = append(mine, im)
		}
	}
	sort.Strings(mine)
	return mine
}

// waitRBDImages fails t unless this env's images in pool rbd become
// want within 3 minutes: the driver deletes a removed layer's images in
// the background (graph/reap.go).
func (e *dockerEnv) waitRBDImages(t testing.TB, what string, want ...string) {
	t.Helper()
	var got []string
	defer func() {
		if t.Failed() {
			t.Logf("RBD images %s: %v, want %v", what, got, want)
		}
	}()
	testkit.Eventually(t, 3*time.Minute, "RBD images "+what+" to be "+strings.Join(want, ", "), func() bool {
		got = e.rbdImages()
		return slices.Equal(got, want)
	})
}

// removeImages deletes what the env left in the pool (snapshots first,
// children before parents), so tests do not fill the cluster.
func (e *dockerEnv) removeImages() {
	for round := 0; round < 8; round++ {
		left := e.rbdImages()
		if len(left) == 0 {
			return
		}
		for _, im := range left {
			spec := "rbd/" + im
			testkit.Run(e.t, time.Minute, "rbd", "snap", "unprotect", spec+"@layer")
			testkit.Run(e.t, time.Minute, "rbd", "snap", "purge", "--no-progress", spec)
			testkit.Run(e.t, time.Minute, "rbd", "rm", "--no-progress", spec)
		}
	}
	e.t.Errorf("images left in the pool: %v", e.rbdImages())
}

// ourDevices lists the connected NBD devices serving this env's images.
func (e *dockerEnv) ourDevices() []string {
	e.t.Helper()
	var devs []string
	paths, _ := filepath.Glob("/sys/block/nbd*")
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join(p, "pid")); err != nil {
			continue // not connected
		}
		backend, _ := os.ReadFile(filepath.Join(p, "backend"))
		if strings.Contains(string(backend), "/"+e.prefix) {
			devs = append(devs, "/dev/"+filepath.Base(p))
		}
	}
	return devs
}

// busyboxFiles are the applets linked in the test image.
var busyboxFiles = []string{"sh", "uname", "cat", "echo", "ls", "mkdir", "sleep", "sync", "true", "dd", "sha256sum", "rm", "id", "stat", "df"}

// busyboxRootfs writes (once per test) a tar of a minimal root filesystem
// made from the host's static busybox, and returns its path.
func busyboxRootfs(t testing.TB) string {
	t.Helper()
	path := filepath.Join(workDir(t), "busybox-rootfs.tar")
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Unix(1700000000, 0)
	add := func(h *tar.Header, data []byte) {
		h.ModTime = now
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if data != nil {
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "var/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: mode}, nil)
	}
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))}, bb)
	for _, a := range busyboxFiles {
		add(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	passwd := []byte("root:x:0:0:root:/root:/bin/sh\n")
	add(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(passwd))}, passwd)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// tarEntry is what a tar says about one file: type, mode, link target and
// a content digest.
type tarEntry struct {
	Type     byte
	Mode     int64
	Linkname string
	Digest   string
}

func readTar(t testing.TB, r io.Reader) map[string]tarEntry {
	t.Helper()
	out := map[string]tarEntry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		sum := sha256.New()
		if _, err := io.Copy(sum, tr); err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		out[name] = tarEntry{Type: h.Typeflag, Mode: h.Mode & 0o7777, Linkname: h.Linkname, Digest: hex.EncodeToString(sum.Sum(nil))}
	}
}

// acceptsConnections reports whether a server listens on the unix
// socket at path. A socket file alone does not say so: a process that
// died (SIGKILL, a crash) leaves its file behind, and a test that waited
// for the file would talk to nobody and then stop the next process
// before it had started.
func acceptsConnections(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
