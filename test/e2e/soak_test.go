//go:build vmtest

package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// soakScript is what each soak container runs: it writes 64 KiB of random
// data to one of 40 files (dd conv=fsync: a failed write or flush is an
// error the script sees), records its SHA-256 the same way, checks an
// older file against its recorded sum, and keeps counts in
// /dev/shm/stats ("iterations write-errors verified verify-failures")
// until /dev/shm/stop appears; /dev/shm/errors lists every failure. The
// bookkeeping lives on the container's tmpfs so that the harness can
// still read it (and stop the loop) if the layer's filesystem fails.
const soakScript = `mkdir -p /data; i=0; werr=0; vok=0; vbad=0
while [ ! -e /dev/shm/stop ]; do
	f=/data/f$((i % 40))
	if dd if=/dev/urandom of=$f bs=4k count=16 conv=fsync 2>/dev/null && sha256sum $f | dd of=$f.sum conv=fsync 2>/dev/null; then :; else
		werr=$((werr + 1)); echo "write error at iteration $i on $f" >> /dev/shm/errors; fi
	g=/data/f$(( (i + 20) % 40 )).sum
	if [ -e $g ]; then
		if sha256sum -c -s $g; then vok=$((vok + 1)); else vbad=$((vbad + 1)); echo "verify failure at iteration $i: $g" >> /dev/shm/errors; fi
	fi
	i=$((i + 1))
	echo "$i $werr $vok $vbad" > /dev/shm/stats
	sleep 0.2
done
echo done > /dev/shm/done
while true; do sleep 1; done`

// soakStats is one container's /dev/shm/stats.
type soakStats struct{ iterations, writeErrors, verified, verifyFailures int }

func parseSoakStats(s string) (soakStats, bool) {
	f := strings.Fields(s)
	if len(f) != 4 {
		return soakStats{}, false
	}
	var v [4]int
	for i := range f {
		n, err := strconv.Atoi(f[i])
		if err != nil {
			return soakStats{}, false
		}
		v[i] = n
	}
	return soakStats{v[0], v[1], v[2], v[3]}, true
}

// TestSoak is `make soak`, not part of `make vmtest`: it runs only when
// E2E_SOAK_DURATION is set (e.g. 10m). Three containers on the graph
// driver write and verify checksummed files while the harness, until the
// duration is over, restarts the plugin with SIGTERM, then with SIGKILL,
// then pauses the OSDs for 40-100 s, and again, letting every container
// make progress between faults. At the end every container stops writing, the page
// cache is dropped and every file is verified against its sum from the
// device. It prints containers, IOs, faults injected by kind, IO errors
// and data verified, and fails on any IO error, verify failure, stalled
// or stopped container.
func TestSoak(t *testing.T) {
	spec := os.Getenv("E2E_SOAK_DURATION")
	if spec == "" {
		t.Skip("the soak runs only with E2E_SOAK_DURATION set (make soak SOAK_DURATION=10m)")
	}
	duration, err := time.ParseDuration(spec)
	if err != nil || duration <= 0 {
		t.Fatalf("E2E_SOAK_DURATION=%q: want a positive Go duration such as 10m", spec)
	}
	testkit.RequireTools(t, "ceph")
	const nContainers = 3
	e := newDockerEnv(t, "rbd-nbd-soak")
	e.startPlugin()
	e.startDockerd()
	e.importBusybox("busybox:e2e")

	var ctrs []string
	for i := 0; i < nContainers; i++ {
		c := fmt.Sprintf("soak%d", i)
		e.mustDocker("run", "-d", "--name", c, "busybox:e2e", "sh", "-c", soakScript)
		ctrs = append(ctrs, c)
	}
	stats := func(c string) (soakStats, bool) {
		out, err := e.docker(2*time.Minute, "exec", c, "cat", "/dev/shm/stats")
		if err != nil {
			return soakStats{}, false
		}
		return parseSoakStats(out)
	}
	// progress waits until every container has done at least n more
	// iterations than it had at the start of the call.
	progress := func(what string, n int, timeout time.Duration) {
		t.Helper()
		base := map[string]int{}
		for _, c := range ctrs {
			s, _ := stats(c)
			base[c] = s.iterations
		}
		deadline := time.Now().Add(timeout)
		for _, c := range ctrs {
			for {
				s, ok := stats(c)
				if ok && s.iterations >= base[c]+n {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("%s: container %s made no progress within %v (stats %+v)", what, c, timeout, s)
					break
				}
				time.Sleep(time.Second)
			}
		}
	}
	progress("start", 10, 3*time.Minute)
	mark := markKernelLog(t)

	start := time.Now()
	end := start.Add(duration)
	faults := map[string]int{}
	var pauseTotal time.Duration
	var timeline []string
	// Restarts are quick and pauses long: two restarts per pause, so a
	// 10-minute soak on a loaded machine still restarts the plugin
	// several times.
	kinds := []string{"plugin SIGTERM+restart", "plugin SIGKILL+restart", "osd pause"}
	for k := 0; time.Now().Before(end) && !t.Failed(); k++ {
		kind := kinds[k%len(kinds)]
		at := time.Since(start)
		switch kind {
		case "osd pause":
			length := time.Duration(40+rand.IntN(61)) * time.Second
			p := pauseOSDs(t)
			time.Sleep(length)
			pauseTotal += p.unpause()
			timeline = append(timeline, fmt.Sprintf("%6.0fs %s %v", at.Seconds(), kind, length))
		default:
			sig := syscall.SIGTERM
			if strings.Contains(kind, "SIGKILL") {
				sig = syscall.SIGKILL
			}
			t0 := time.Now()
			e.signalPlugin(sig)
			exited := time.Since(t0)
			e.startPlugin()
			timeline = append(timeline, fmt.Sprintf("%6.0fs %s (exited in %.1fs)", at.Seconds(), kind, exited.Seconds()))
		}
		faults[kind]++
		// Every container must make progress after every fault before the
		// next one: a fault must not leave a device or a writer stuck.
		progress("after "+kind, 5, 4*time.Minute)
		time.Sleep(time.Duration(5+rand.IntN(11)) * time.Second)
	}
	elapsed := time.Since(start)

	// Stop the writers, then verify every file from the device.
	for _, c := range ctrs {
		if out, err := e.docker(2*time.Minute, "exec", c, "sh", "-c", ": > /dev/shm/stop"); err != nil {
			t.Errorf("telling %s to stop: %v\n%s", c, err, out)
		}
	}
	// One deadline for all: a container whose layer is gone would
	// otherwise cost the whole wait each.
	deadline := time.Now().Add(3 * time.Minute)
	for _, c := range ctrs {
		stopped := false
		for ; !stopped && time.Now().Before(deadline); time.Sleep(time.Second) {
			_, err := e.docker(time.Minute, "exec", c, "cat", "/dev/shm/done")
			stopped = err == nil
		}
		if !stopped {
			t.Errorf("%s did not stop writing within 3 minutes (a write stuck, or docker exec failing)", c)
		}
	}
	dropCaches(t)
	var total soakStats
	var notRunning, errLines []string
	filesOK, filesBad := 0, 0
	for _, c := range ctrs {
		if r := strings.TrimSpace(e.mustDocker("inspect", "--format", "{{.State.Running}}", c)); r != "true" {
			notRunning = append(notRunning, c)
		}
		s, ok := stats(c)
		if !ok {
			t.Errorf("%s: cannot read its stats", c)
		}
		total.iterations += s.iterations
		total.writeErrors += s.writeErrors
		total.verified += s.verified
		total.verifyFailures += s.verifyFailures
		out, _ := e.docker(5*time.Minute, "exec", c, "sh", "-c", "cd /data && sha256sum -c f*.sum")
		for _, l := range strings.Split(out, "\n") {
			switch {
			case strings.HasSuffix(l, ": OK"):
				filesOK++
			case strings.TrimSpace(l) != "":
				filesBad++
				errLines = append(errLines, c+": "+l)
			}
		}
		if out, err := e.docker(time.Minute, "exec", c, "cat", "/dev/shm/errors"); err == nil && strings.TrimSpace(out) != "" {
			errLines = append(errLines, c+": "+strings.TrimSpace(out))
		}
	}
	kernelErrs := ioErrorLines(mark.since())

	var kindNames []string
	for k := range faults {
		kindNames = append(kindNames, k)
	}
	sort.Strings(kindNames)
	var fs []string
	nFaults := 0
	for _, k := range kindNames {
		fs = append(fs, fmt.Sprintf("%s %d", k, faults[k]))
		nFaults += faults[k]
	}
	ioErrors := total.writeErrors + len(kernelErrs)
	var b strings.Builder
	fmt.Fprintf(&b, "soak: %v (asked %v)\n", elapsed.Round(time.Second), duration)
	fmt.Fprintf(&b, "containers: %d (still running at the end: %d)\n", nContainers, nContainers-len(notRunning))
	fmt.Fprintf(&b, "IOs: %d writes of 64 KiB + %d checksum writes, each flushed (%d MiB), %d reads verified while running\n",
		total.iterations, total.iterations, total.iterations*64/1024, total.verified+total.verifyFailures)
	fmt.Fprintf(&b, "faults injected: %d (%s); OSDs paused %.0fs in all\n", nFaults, strings.Join(fs, ", "), pauseTotal.Seconds())
	fmt.Fprintf(&b, "IO errors: %d (failed writes/flushes in containers %d, kernel log lines %d)\n", ioErrors, total.writeErrors, len(kernelErrs))
	fmt.Fprintf(&b, "data verified: %d checks while running (%d failed), %d files from the device at the end (%d failed)\n",
		total.verified+total.verifyFailures, total.verifyFailures, filesOK+filesBad, filesBad)
	fmt.Fprintf(&b, "timeline:\n  %s\n", strings.Join(timeline, "\n  "))
	summary := b.String()
	t.Logf("\n%s", summary)
	if out := os.Getenv("VM_OUT"); out != "" {
		_ = os.WriteFile(filepath.Join(out, "soak-summary.txt"), []byte(summary), 0o644)
	}

	if len(notRunning) > 0 {
		t.Errorf("containers no longer running: %v", notRunning)
	}
	if ioErrors > 0 || total.verifyFailures > 0 || filesBad > 0 {
		t.Errorf("IO errors %d, verify failures %d (while running) and %d (at the end):\n%s\n%s",
			ioErrors, total.verifyFailures, filesBad, summarize(errLines, 20), summarize(kernelErrs, 20))
	}
	if filesOK == 0 {
		t.Errorf("no file was verified at the end: the soak checked nothing")
	}
	for _, c := range ctrs {
		e.docker(2*time.Minute, "rm", "-f", c)
	}
}
