//go:build vmtest

package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// TestDebPackage installs the package `make deb` built (E2E_DEB) with
// dpkg, as an operator would, and runs the dockerd story from the
// installed files only: the driver options go into the installed config
// file, the plugin is started with the installed unit's ExecStart (flags
// from the installed /etc/default file) under a fake NOTIFY_SOCKET, as
// systemd would, and must send READY=1; then dockerd imports and runs a
// container on it, and SIGTERM (systemctl stop) ends the plugin cleanly.
func TestDebPackage(t *testing.T) {
	deb := os.Getenv("E2E_DEB")
	testkit.Require(t, deb != "", "needs E2E_DEB, the package make deb built")
	testkit.RequireTools(t, "dpkg")
	e := newDockerEnv(t, "rbd-nbd")

	testkit.Must(t, 2*time.Minute, "dpkg", "-i", deb)
	t.Cleanup(func() { testkit.Run(t, 2*time.Minute, "dpkg", "--purge", "rbd-nbd-graph") })
	for _, f := range []string{"/usr/bin/rbd-nbd-graph", "/lib/systemd/system/rbd-nbd-graph.service",
		"/lib/systemd/system/rbd-nbd-graph-snapshotter.service", "/etc/rbd-nbd-graph/rbd-nbd-graph.conf",
		"/etc/default/rbd-nbd-graph", "/usr/share/man/man8/rbd-nbd-graph.8.gz"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("installed package lacks %s: %v", f, err)
		}
	}
	if out := testkit.Must(t, time.Minute, "dpkg-query", "-W", "-f", "${Status}", "rbd-nbd-graph"); out != "install ok installed" {
		t.Fatalf("dpkg-query: %q", out)
	}

	// The operator's edit of the installed config file.
	conf := "/etc/rbd-nbd-graph/rbd-nbd-graph.conf"
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("rbd.configfile=" + os.Getenv("CEPH_CONF") + "\nrbd.imageprefix=" + e.prefix + "\nrbd.basesize=1G\n")
	f.Close()

	// ExecStart of the installed unit, $VARS from the installed /etc/default.
	unit, err := os.ReadFile("/lib/systemd/system/rbd-nbd-graph.service")
	if err != nil {
		t.Fatal(err)
	}
	defaults, _ := os.ReadFile("/etc/default/rbd-nbd-graph")
	vars := map[string]string{}
	for _, l := range strings.Split(string(defaults), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			vars[k] = v
		}
	}
	var argv []string
	for _, l := range strings.Split(string(unit), "\n") {
		if rest, ok := strings.CutPrefix(l, "ExecStart="); ok {
			for _, w := range strings.Fields(rest) {
				if strings.HasPrefix(w, "$") {
					argv = append(argv, strings.Fields(vars[w[1:]])...)
				} else {
					argv = append(argv, w)
				}
			}
		}
	}
	if len(argv) < 2 || argv[0] != "/usr/bin/rbd-nbd-graph" || argv[1] != "serve" {
		t.Fatalf("installed unit's ExecStart: %q", argv)
	}
	notifyPath := filepath.Join(e.dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	logf, err := os.Create(filepath.Join(e.dir, "plugin.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.plugin = cmd
	e.pluginDone = make(chan error, 1)
	go func() { e.pluginDone <- cmd.Wait() }()
	notify.SetReadDeadline(time.Now().Add(90 * time.Second))
	buf := make([]byte, 4096)
	n, err := notify.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "READY=1") {
		t.Fatalf("no READY=1 from the installed unit's serve: %q, %v", buf[:n], err)
	}
	t.Logf("installed plugin ready (READY=1) in %.1fs: %q", time.Since(start).Seconds(), argv)

	e.startDockerd()
	if got := strings.TrimSpace(e.mustDocker("info", "--format", "{{.Driver}}")); got != "rbd-nbd" {
		t.Fatalf("docker info Driver = %q", got)
	}
	e.importBusybox("busybox:deb")
	if out := e.mustDocker("run", "--rm", "busybox:deb", "uname", "-a"); !strings.HasPrefix(out, "Linux ") {
		t.Fatalf("uname -a in a container: %q", out)
	}
	e.mustDocker("rmi", "busybox:deb")
	e.stopDockerd()
	// systemctl stop: SIGTERM; STOPPING=1, then exit 0 (stopPlugin checks).
	e.stopPlugin()
	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := notify.Read(buf); err != nil || string(buf[:n]) != "STOPPING=1" {
		t.Errorf("no STOPPING=1 after SIGTERM: %q, %v", buf[:n], err)
	}
}
