package dockerplugin_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	dgraph "github.com/docker/docker/daemon/graphdriver"
	"github.com/docker/docker/daemon/graphdriver/graphtest"
	"github.com/docker/docker/pkg/idtools"
	"github.com/docker/docker/pkg/plugingetter"
	"github.com/docker/docker/pkg/plugins"
	"github.com/docker/docker/pkg/reexec"
	"github.com/moby/sys/mountinfo"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	gt "github.com/rbd-nbd-graph/rbd-nbd-graph/graph/graphtest"
)

// The driver under moby's own graphtest suite goes through the whole
// plugin path: dockerd's plugin client and graphdriver proxy (the code
// dockerd runs), our socket and HTTP front, go-plugins-helpers, the
// Plugin, NaiveDiffDriver and graph.Driver on FileStore and loop devices.
const viaHTTP = "rbd-nbd-via-http"

var testOpts = []string{"rbd.basesize=64M", "rbd.imageprefix=t-"}

func TestMain(m *testing.M) {
	// ApplyDiff unpacks in a re-executed child (docker's chrootarchive).
	if reexec.Init() {
		return
	}
	if err := dgraph.Register(viaHTTP, initViaHTTP); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// server is one plugin serving a socket, as `rbd-nbd-graph serve` does.
type server struct {
	sock   string
	plugin *dockerplugin.Plugin
	store  *gt.FileStore
	att    *gt.LoopAttacher
	cancel context.CancelFunc
	done   chan error
}

// startServer runs a plugin on FileStore and loop devices under dir;
// opts adjust its Config.
func startServer(dir string, log *slog.Logger, opts ...func(*dockerplugin.Config)) (*server, error) {
	store, err := gt.OpenFileStore(filepath.Join(dir, "store"))
	if err != nil {
		return nil, err
	}
	s := &server{sock: filepath.Join(dir, "plugin.sock"), store: store, att: gt.NewLoopAttacher(store), done: make(chan error, 1)}
	cfg := dockerplugin.Config{
		Name:      "rbd-nbd-test",
		StateFile: filepath.Join(dir, "state", "init.json"),
		Parse: func(kvs []string) (graph.Options, dockerplugin.Opener, error) {
			o, err := graph.ParseOptions(graph.DefaultOptions(), kvs)
			return o, func(context.Context) (dockerplugin.Backend, error) {
				return dockerplugin.Backend{Store: s.store, Attacher: s.att}, nil
			}, err
		},
		HostID: "test-host",
		Logger: log,
	}
	for _, o := range opts {
		o(&cfg)
	}
	s.plugin = dockerplugin.New(cfg)
	ln, err := dockerplugin.Listen(s.sock)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- dockerplugin.Serve(ctx, ln, s.plugin, 10*time.Second) }()
	return s, nil
}

// stop is what SIGTERM does.
func (s *server) stop() error {
	s.cancel()
	return <-s.done
}

// client returns dockerd's plugin client for the socket.
func (s *server) client() (*plugins.Client, error) {
	return plugins.NewClient("unix://"+s.sock, nil)
}

// dockerDriver connects to s the way dockerd does for `-s NAME`: the
// graphdriver proxy over the v1 plugin client, which calls Init.
func (s *server) dockerDriver(home string, options []string, idMap idtools.IdentityMapping) (dgraph.Driver, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	var act struct{ Implements []string }
	if err := c.Call("Plugin.Activate", nil, &act); err != nil {
		return nil, err
	}
	if len(act.Implements) != 1 || act.Implements[0] != "GraphDriver" {
		return nil, errors.New("plugin does not implement GraphDriver")
	}
	return dgraph.GetDriver("rbd-nbd-plugin", getter{name: "rbd-nbd-plugin", client: c}, dgraph.Options{
		Root: home, DriverOptions: options, IDMap: idMap, ExperimentalEnabled: true,
	})
}

// initViaHTTP is the graphdriver.InitFunc moby's graphtest calls: a
// plugin server per driver, reached through dockerd's proxy.
func initViaHTTP(home string, options []string, idMap idtools.IdentityMapping) (dgraph.Driver, error) {
	if os.Geteuid() != 0 {
		return nil, dgraph.ErrNotSupported
	}
	srv, err := startServer(filepath.Dir(home), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	d, err := srv.dockerDriver(home, options, idMap)
	if err != nil {
		return nil, errors.Join(err, srv.stop())
	}
	return &stoppingDriver{Driver: d, srv: srv}, nil
}

// stoppingDriver stops the plugin server after dockerd's Cleanup, and
// checks nothing was left attached.
type stoppingDriver struct {
	dgraph.Driver
	srv *server
}

func (d *stoppingDriver) Cleanup() error {
	err := errors.Join(d.Driver.Cleanup(), d.srv.stop())
	if n := len(d.srv.att.Attached()); n != 0 {
		err = errors.Join(err, errors.New("devices left attached after Cleanup"))
	}
	return err
}

type getter struct {
	name   string
	client *plugins.Client
}

func (g getter) Get(name, capability string, mode int) (plugingetter.CompatPlugin, error) {
	if name != g.name {
		return nil, errors.New("no such plugin " + name)
	}
	return compatPlugin(g), nil
}
func (g getter) GetAllByCap(string) ([]plugingetter.CompatPlugin, error)      { return nil, nil }
func (g getter) GetAllManagedPluginsByCap(string) []plugingetter.CompatPlugin { return nil }
func (g getter) Handle(string, func(string, *plugins.Client))                 {}

type compatPlugin getter

func (p compatPlugin) Name() string               { return p.name }
func (p compatPlugin) ScopedPath(s string) string { return s }
func (p compatPlugin) IsV1() bool                 { return true }
func (p compatPlugin) Client() *plugins.Client    { return p.client }

func requireLoop(t *testing.T) { gt.RequireLoop(t) }

func TestGraphtestCreateEmpty(t *testing.T) {
	requireLoop(t)
	graphtest.DriverTestCreateEmpty(t, viaHTTP, testOpts...)
}

func TestGraphtestCreateBase(t *testing.T) {
	requireLoop(t)
	graphtest.DriverTestCreateBase(t, viaHTTP, testOpts...)
}

func TestGraphtestCreateSnap(t *testing.T) {
	requireLoop(t)
	graphtest.DriverTestCreateSnap(t, viaHTTP, testOpts...)
}

func TestGraphtestDeepLayerRead(t *testing.T) {
	requireLoop(t)
	// Deeper than the default clone depth limit (8): flattening runs.
	graphtest.DriverTestDeepLayerRead(t, 12, viaHTTP, testOpts...)
}

func TestGraphtestDiffApply(t *testing.T) {
	requireLoop(t)
	graphtest.DriverTestDiffApply(t, 20, viaHTTP, testOpts...)
}

func TestGraphtestChanges(t *testing.T) {
	requireLoop(t)
	graphtest.DriverTestChanges(t, viaHTTP, testOpts...)
}

// newServer starts a plugin for one test and stops it at the end.
func newServer(t *testing.T) *server {
	t.Helper()
	requireLoop(t)
	srv, err := startServer(t.TempDir(), slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if n := len(srv.att.Attached()); n != 0 {
			t.Errorf("%d devices attached after the plugin stopped", n)
		}
	})
	return srv
}

// call posts a raw body and returns the status and the body.
func call(t *testing.T, sock, method, path, body string) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	req, err := http.NewRequest(method, "http://plugin"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// errField decodes {"Err": ...}; "" when the body has no Err.
func errField(t *testing.T, body string) string {
	t.Helper()
	var r struct{ Err string }
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("response is not JSON: %q: %v", body, err)
	}
	return r.Err
}

func TestMalformedRequestsGetErrAndTheDaemonStaysUp(t *testing.T) {
	srv := newServer(t)
	home := filepath.Join(t.TempDir(), "home")
	initBody, _ := json.Marshal(map[string]any{"Home": home, "Opts": testOpts})
	if code, body := call(t, srv.sock, "POST", "/GraphDriver.Init", string(initBody)); code != 200 || errField(t, body) != "" {
		t.Fatalf("Init: %d %s", code, body)
	}
	for _, tc := range []struct {
		method, path, body string
		status             int
		mention            string
	}{
		{"POST", "/GraphDriver.Create", `{"ID": `, 400, "malformed request to /GraphDriver.Create"},
		{"POST", "/GraphDriver.Create", `{"ID": 42}`, 400, "malformed"},
		{"POST", "/GraphDriver.Get", ``, 400, "malformed"},
		{"POST", "/GraphDriver.Get", `[1,2]`, 400, "malformed"},
		{"POST", "/GraphDriver.Exists", `{"ID":"a"} trailing`, 400, "malformed"},
		{"POST", "/GraphDriver.Remove", `{"ID":"` + strings.Repeat("a", 2<<20) + `"}`, 400, "larger than"},
		{"POST", "/GraphDriver.Nope", `{}`, 404, "unknown method"},
		{"GET", "/GraphDriver.Status", ``, 405, "POST"},
		{"POST", "/GraphDriver.Create", `{"ID":"../../etc"}`, 500, "invalid layer ID"},
		{"POST", "/GraphDriver.Create", `{"ID":"x","StorageOpt":{"size":"huge"}}`, 500, "storage-opt size"},
		{"POST", "/GraphDriver.Get", `{"ID":"missing"}`, 500, "layer not found"},
		{"POST", "/GraphDriver.Diff", `{"ID":"missing"}`, 500, "layer not found"},
		{"POST", "/GraphDriver.ApplyDiff?id=missing", `not a tar`, 500, "layer not found"},
	} {
		code, body := call(t, srv.sock, tc.method, tc.path, tc.body)
		if code != tc.status || !strings.Contains(errField(t, body), tc.mention) {
			t.Errorf("%s %s %.40q: %d %.200s; want %d with Err mentioning %q", tc.method, tc.path, tc.body, code, body, tc.status, tc.mention)
		}
	}
	// Still serving, and Exists answers valid JSON (the seed's was not).
	code, body := call(t, srv.sock, "POST", "/GraphDriver.Exists", `{"ID":"missing"}`)
	var ex struct{ Exists bool }
	if code != 200 || json.Unmarshal([]byte(body), &ex) != nil || ex.Exists {
		t.Fatalf("Exists after bad requests: %d %q", code, body)
	}
	if code, body := call(t, srv.sock, "POST", "/GraphDriver.Create", `{"ID":"ok"}`); code != 200 || errField(t, body) != "" {
		t.Fatalf("Create after bad requests: %d %s", code, body)
	}
	code, body = call(t, srv.sock, "POST", "/GraphDriver.Exists", `{"ID":"ok"}`)
	if code != 200 || json.Unmarshal([]byte(body), &ex) != nil || !ex.Exists {
		t.Fatalf("Exists(ok): %d %q", code, body)
	}
	if code, body := call(t, srv.sock, "POST", "/GraphDriver.Cleanup", `{}`); code != 200 || errField(t, body) != "" {
		t.Fatalf("Cleanup: %d %s", code, body)
	}
}

func TestCallsBeforeInitAreRefused(t *testing.T) {
	srv := newServer(t)
	code, body := call(t, srv.sock, "POST", "/GraphDriver.Get", `{"ID":"a"}`)
	if code != 500 || !strings.Contains(errField(t, body), "not initialized") {
		t.Fatalf("Get before Init: %d %s", code, body)
	}
	code, body = call(t, srv.sock, "POST", "/GraphDriver.Status", `{}`)
	if code != 200 || !strings.Contains(body, "not initialized") {
		t.Fatalf("Status before Init: %d %s", code, body)
	}
	code, body = call(t, srv.sock, "POST", "/GraphDriver.Init", `{"Home":"/nonexistent-abs/x","Opts":["rbd.bogus=1"]}`)
	if code != 500 || !strings.Contains(errField(t, body), "unknown option") {
		t.Fatalf("Init with an unknown option: %d %s", code, body)
	}
}

func TestSocketIsPrivateAndStaleOnesAreReplaced(t *testing.T) {
	srv := newServer(t)
	st, err := os.Stat(srv.sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a 0600 socket", st.Mode())
	}
	if _, err := dockerplugin.Listen(srv.sock); err == nil || !strings.Contains(err.Error(), "another plugin") {
		t.Fatalf("Listen on a live socket: %v", err)
	}
	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	// Under umask 000 a bind alone makes the socket 0777; Listen binds it
	// with its final mode (the umask is process-wide: no t.Parallel here).
	old := syscall.Umask(0)
	ln, err = dockerplugin.Listen(stale)
	syscall.Umask(old)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if st, err := os.Lstat(stale); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket made under umask 000: %v, %v; want 0600", st.Mode(), err)
	}
	ln.Close()
}

// dockerd restarts: Cleanup then Init again, layers survive; an Init that
// repeats the running one keeps it; Status and GetMetadata are there.
func TestDockerdRestart(t *testing.T) {
	srv := newServer(t)
	home := filepath.Join(t.TempDir(), "home")
	d, err := srv.dockerDriver(home, testOpts, idtools.IdentityMapping{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Create("img", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateReadWrite("ctr", "img", &dgraph.CreateOpts{StorageOpt: map[string]string{"size": "128M"}}); err != nil {
		t.Fatal(err)
	}
	fs, err := d.Get("ctr", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fs.Path(), "hello"), []byte("world"), 0o644); err != nil {
		t.Fatal(err)
	}
	md, err := d.GetMetadata("ctr")
	if err != nil || md["Device"] == "" || md["Image"] != "t-layer-ctr" || md["Size"] != "134217728" {
		t.Fatalf("GetMetadata: %v, %v", md, err)
	}
	status := d.Status()
	if !hasStatus(status, "Pool", "filestore") || !hasStatus(status, "Attached Devices", "1") || !hasStatus(status, "Kernel Version", "") {
		t.Fatalf("Status: %v", status)
	}
	// dockerd restarted without Cleanup: the same Init keeps the instance.
	if _, err := srv.dockerDriver(home, testOpts, idtools.IdentityMapping{}); err != nil {
		t.Fatal(err)
	}
	if md, _ := d.GetMetadata("ctr"); md["Device"] == "" {
		t.Fatal("a repeated Init dropped the mounted layer")
	}
	if err := d.Put("ctr"); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Get("ctr", ""); err == nil || !strings.Contains(err.Error(), "not initialized") {
		t.Fatalf("Get after Cleanup: %v", err)
	}
	d, err = srv.dockerDriver(home, testOpts, idtools.IdentityMapping{})
	if err != nil {
		t.Fatal(err)
	}
	fs, err = d.Get("ctr", "")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(fs.Path(), "hello")); err != nil || string(b) != "world" {
		t.Fatalf("after restart: %q, %v", b, err)
	}
	if err := d.Put("ctr"); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

func hasStatus(st [][2]string, key, valuePart string) bool {
	for _, kv := range st {
		if kv[0] == key && strings.Contains(kv[1], valuePart) {
			return true
		}
	}
	return false
}

// dockerd --userns-remap: Init's maps make the layer root the remapped
// root, ApplyDiff shifts file owners into the range and Diff shifts them
// back.
func TestUserNamespaceRemap(t *testing.T) {
	srv := newServer(t)
	const base = 100000
	idMap := idtools.IdentityMapping{
		UIDMaps: []idtools.IDMap{{ContainerID: 0, HostID: base, Size: 65536}},
		GIDMaps: []idtools.IDMap{{ContainerID: 0, HostID: base, Size: 65536}},
	}
	d, err := srv.dockerDriver(filepath.Join(t.TempDir(), "home"), testOpts, idMap)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Cleanup()
	if err := d.Create("l", "", nil); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/owned", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 1000, Size: 2},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("hi"))
		}
	}
	tw.Close()
	if _, err := d.ApplyDiff("l", "", &buf); err != nil {
		t.Fatal(err)
	}
	fs, err := d.Get("l", "")
	if err != nil {
		t.Fatal(err)
	}
	owner := func(p string) (int, int) {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		uid, gid := statOwner(st)
		return uid, gid
	}
	if u, g := owner(fs.Path()); u != base || g != base {
		t.Errorf("layer root owned by %d:%d, want %d:%d", u, g, base, base)
	}
	if u, g := owner(filepath.Join(fs.Path(), "etc/owned")); u != base+1000 || g != base+1000 {
		t.Errorf("unpacked file owned by %d:%d, want %d:%d", u, g, base+1000, base+1000)
	}
	if err := d.Put("l"); err != nil {
		t.Fatal(err)
	}
	rc, err := d.Diff("l", "")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "etc/owned" {
			found = true
			if h.Uid != 1000 || h.Gid != 1000 {
				t.Errorf("diff shows etc/owned as %d:%d, want 1000:1000", h.Uid, h.Gid)
			}
		}
	}
	if !found {
		t.Error("diff lacks etc/owned")
	}
}

// The plugin restarts (SIGTERM, as systemctl restart or an upgrade
// does) while dockerd and a container keep running: the layer stays
// mounted through the gap (the container keeps its files), and the new
// process resumes the recorded instance, since dockerd does not call
// Init again, and adopts the mount with the container's reference.
func TestPluginRestartResumes(t *testing.T) {
	requireLoop(t)
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	srv, err := startServer(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	// The last Put unmounts at once (no rbd.unmountdelay), so the
	// references counted after the restart show.
	opts := append(slices.Clone(testOpts), "rbd.unmountdelay=0")
	d, err := srv.dockerDriver(filepath.Join(dir, "home"), opts, idtools.IdentityMapping{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Create("l", "", nil); err != nil {
		t.Fatal(err)
	}
	fs, err := d.Get("l", "") // the running container's reference
	if err != nil {
		t.Fatal(err)
	}
	dirL := fs.Path()
	mnt := filepath.Dir(dirL) // Get returns the rootfs folder inside the mount
	if err := os.WriteFile(filepath.Join(dirL, "f"), []byte("v"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.stop(); err != nil { // SIGTERM
		t.Fatal(err)
	}
	// Between the two processes the container goes on.
	if ok, err := mountinfo.Mounted(mnt); err != nil || !ok {
		t.Fatalf("%s is not mounted after SIGTERM (%v): the container lost its root", mnt, err)
	}
	if b, err := os.ReadFile(filepath.Join(dirL, "f")); err != nil || string(b) != "v" {
		t.Fatalf("during the restart: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(dirL, "g"), []byte("w"), 0o644); err != nil {
		t.Fatalf("write during the restart: %v", err)
	}
	srv, err = startServer(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	// The same dockerd proxy, no new Init.
	if !d.Exists("l") {
		t.Fatal("after a plugin restart the layer is unknown")
	}
	fs, err = d.Get("l", "")
	if err != nil {
		t.Fatalf("Get after a plugin restart: %v", err)
	}
	if fs.Path() != dirL {
		t.Fatalf("after restart the layer is at %s, was %s", fs.Path(), dirL)
	}
	for name, want := range map[string]string{"f": "v", "g": "w"} {
		if b, err := os.ReadFile(filepath.Join(dirL, name)); err != nil || string(b) != want {
			t.Fatalf("after restart %s: %q, %v", name, b, err)
		}
	}
	// Two references now: ours and the container's, adopted.
	for i := range 2 {
		if err := d.Put("l"); err != nil {
			t.Fatal(err)
		}
		mounted, _ := mountinfo.Mounted(mnt)
		if want := i == 0; mounted != want {
			t.Fatalf("after Put %d: mounted %v, want %v", i+1, mounted, want)
		}
	}
	// dockerd's Cleanup ends the instance for good: nothing to resume.
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.att.Attached()); n != 0 {
		t.Fatalf("%d devices attached after Cleanup", n)
	}
	srv, err = startServer(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.stop()
	if d.Exists("l") || !hasStatus(d.Status(), "State", "not initialized") {
		t.Fatalf("resumed after dockerd's Cleanup: %v", d.Status())
	}
}

// SIGTERM with --detach-on-exit and layers in use: Serve returns after
// unmounting and detaching everything, as Cleanup does.
func TestShutdownWithDetachOnExitCleansUp(t *testing.T) {
	requireLoop(t)
	dir := t.TempDir()
	srv, err := startServer(dir, slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		func(c *dockerplugin.Config) { c.DetachOnExit = true })
	if err != nil {
		t.Fatal(err)
	}
	d, err := srv.dockerDriver(filepath.Join(dir, "home"), testOpts, idtools.IdentityMapping{})
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, id := range []string{"a", "b"} {
		if err := d.Create(id, "", nil); err != nil {
			t.Fatal(err)
		}
		fs, err := d.Get(id, "")
		if err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, filepath.Dir(fs.Path()))
	}
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.att.Attached()); n != 0 {
		t.Fatalf("%d devices attached after shutdown", n)
	}
	for _, p := range dirs {
		if ok, _ := mountinfo.Mounted(p); ok {
			t.Fatalf("%s still mounted after shutdown with DetachOnExit", p)
		}
	}
	if _, err := os.Stat(srv.sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
