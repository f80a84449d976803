//go:build vmtest

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// counterScript appends an incrementing counter to /counter every 0.1 s
// and syncs, as an application that cares about its data would.
const counterScript = "i=0; while true; do echo $i >> /counter; sync; i=$((i+1)); sleep 0.1; done"

// checkCounter parses the counter file: lines 0, 1, 2, ... with no gap
// and no repeat (a last line cut short by the running writer is left
// out). It returns how many lines there are, or a description of the
// first fault.
func checkCounter(s string) (int, string) {
	lines := strings.Split(s, "\n")
	lines = lines[:len(lines)-1] // after the last newline: empty or cut short
	for i, l := range lines {
		n, err := strconv.Atoi(l)
		if err != nil {
			return i, fmt.Sprintf("line %d is %q, not a number (data lost or garbled)", i+1, l)
		}
		if n != i {
			return i, fmt.Sprintf("line %d holds %d, want %d (a gap or a repeat)", i+1, n, i)
		}
	}
	return len(lines), ""
}

// dropCaches writes back what is dirty and drops the page cache, so that
// the next read comes from the device: data the kernel only ever had in
// memory (a device detached under its filesystem) shows as lost then.
func dropCaches(t testing.TB) {
	t.Helper()
	if out, err := testkit.Run(t, 3*time.Minute, "sync"); err != nil {
		t.Logf("sync: %v\n%s", err, out) // the IO errors it meets are checked in dmesg
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		t.Fatalf("dropping the page cache: %v", err)
	}
}

// The graph driver plugin is stopped (SIGTERM: systemctl restart, an
// upgrade; SIGKILL: a crash) under a container that appends a counter to
// a file and syncs every 0.1 s, and started again with the same flags.
// The restarted plugin adopts the container's device; the container keeps
// running and writing; its file, read back from the device (page cache
// dropped), has no gap and no repeat; the kernel logged no IO error.
func TestPluginRestartUnderContainer(t *testing.T) {
	e := newDockerEnv(t, "rbd-nbd-restart")
	e.startPlugin()
	e.startDockerd()
	e.importBusybox("busybox:e2e")

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		name := map[syscall.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGKILL: "SIGKILL"}[sig]
		t.Run(name, func(t *testing.T) {
			if e.plugin == nil { // an earlier subtest failed half way
				e.startPlugin()
			}
			ctr := "counter-" + strings.ToLower(name)
			e.mustDocker("run", "-d", "--name", ctr, "busybox:e2e", "sh", "-c", counterScript)
			defer e.docker(2*time.Minute, "rm", "-f", ctr)
			read := func() (string, error) { return e.docker(2*time.Minute, "exec", ctr, "cat", "/counter") }
			testkit.Eventually(t, 2*time.Minute, "the container to write 20 lines", func() bool {
				out, err := read()
				n, _ := checkCounter(out)
				return err == nil && n >= 20
			})
			out, _ := read()
			atStop, _ := checkCounter(out)
			mark := markKernelLog(t)
			pid := e.plugin.Process.Pid
			start := time.Now()
			e.signalPlugin(sig)
			t.Logf("plugin %d ended %.1fs after %s", pid, time.Since(start).Seconds(), name)
			// (A device detached under a mounted filesystem still counts as
			// connected until it is closed: the kernel log below is what
			// shows a detach.)
			if devs := e.ourDevices(); len(devs) == 0 {
				t.Errorf("no device of ours is connected after the plugin ended: it detached the container's layer")
			}

			e.startPlugin()
			time.Sleep(10 * time.Second)

			running := strings.TrimSpace(e.mustDocker("inspect", "--format", "{{.State.Running}}", ctr))
			if running != "true" {
				t.Errorf("the container is not running after the restart (State.Running = %s)", running)
			}
			dropCaches(t)
			out, err := read()
			if err != nil {
				t.Fatalf("reading the counter after the restart: %v\n%s", err, out)
			}
			n, fault := checkCounter(out)
			if fault != "" {
				t.Errorf("the counter file read back from the device: %s (%d good lines)", fault, n)
			}
			// The container is still writing, and it lands on the device.
			testkit.Eventually(t, 2*time.Minute, "the counter to grow after the restart", func() bool {
				out, err := read()
				m, _ := checkCounter(out)
				return err == nil && m > n+10
			})
			t.Logf("counter: %d lines just before the %s, %d ten seconds after the restart", atStop, name, n)

			log := mark.since()
			t.Logf("kernel log about NBD since %s:\n%s", name, summarize(nbdLines(log), 30))
			if bad := ioErrorLines(log); len(bad) > 0 {
				t.Errorf("%d IO error lines in the kernel log after %s and restart:\n%s", len(bad), name, summarize(bad, 20))
			}
		})
	}
}

// SIGTERM to the process serving a `map`ped device is a handover, not a
// detach: fio (writes with verification) keeps running, the device stays
// connected after the server has exited, `attach` serves it again and fio
// finishes with no error and its verify passing. Only --detach-on-exit
// makes SIGTERM detach.
func TestMapSIGTERMHandover(t *testing.T) {
	t.Run("Handover", func(t *testing.T) {
		testkit.RequireTools(t, "fio")
		image := newImage(t, 256, "")
		dev := mapDevice(t, image)
		pid := servingPID(t, dev)
		mark := markKernelLog(t)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		fio := startFioVerify(t, ctx, "handover", dev)

		start := time.Now()
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 2*time.Minute, "the server to exit after SIGTERM", func() bool { return !processAlive(pid) })
		t.Logf("the server (pid %d) exited %.1fs after SIGTERM", pid, time.Since(start).Seconds())
		if !isConnected(t, dev) {
			t.Fatalf("%s was detached by SIGTERM; it should stay connected for the next server", dev)
		}
		time.Sleep(2 * time.Second)

		got := strings.TrimSpace(testkit.Must(t, 3*time.Minute, testkit.Binary(t), "attach", image))
		if got != dev {
			t.Fatalf("attach printed %q, want the live device %s", got, dev)
		}
		fio.finish(t, ctx, "the SIGTERM handover and the attach")
		if bad := ioErrorLines(mark.since()); len(bad) > 0 {
			t.Errorf("%d IO error lines in the kernel log across the handover:\n%s", len(bad), summarize(bad, 20))
		}
		unmap(t, dev)
	})

	t.Run("DetachOnExit", func(t *testing.T) {
		dev := mapDevice(t, "mem:64M", "--detach-on-exit")
		pid := servingPID(t, dev)
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, time.Minute, "the server to exit after SIGTERM", func() bool { return !processAlive(pid) })
		testkit.Eventually(t, 30*time.Second, dev+" to be detached by its server's SIGTERM (--detach-on-exit)", func() bool {
			return !isConnected(t, dev)
		})
	})
}
