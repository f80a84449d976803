//go:build vmtest

package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// Helpers of the fault tests (restarts, slow clusters): kernel log since a marker, OSD
// pauses, the connection counts `list` reports, a paced O_DIRECT writer
// that verifies what it wrote, and the flags of a process's threads.

// kernelLogMark writes a unique line into the kernel log; since returns the
// kernel log lines logged after it, so a test looks only at what happened
// while it ran (earlier tests may have logged IO errors on purpose).
type kernelLogMark struct {
	t    testing.TB
	text string
}

func markKernelLog(t testing.TB) *kernelLogMark {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	m := &kernelLogMark{t: t, text: "rbd-nbd-graph-e2e mark " + hex.EncodeToString(b[:]) + " " + t.Name()}
	if err := os.WriteFile("/dev/kmsg", []byte(m.text+"\n"), 0o200); err != nil {
		t.Fatalf("writing a marker to /dev/kmsg: %v", err)
	}
	return m
}

// since returns the kernel log lines after the marker. The marker must
// still be in the ring buffer: a test that logs so much that it scrolled
// out fails here rather than checking nothing.
func (m *kernelLogMark) since() []string {
	m.t.Helper()
	out, err := exec.Command("dmesg").CombinedOutput()
	if err != nil {
		m.t.Fatalf("dmesg: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], m.text) {
			return lines[i+1:]
		}
	}
	m.t.Fatalf("the kernel log marker %q is gone from dmesg (ring buffer overrun?)", m.text)
	return nil
}

// ioErrorPatterns are kernel log lines that mean IO failed or a
// filesystem gave up: none may appear while a device should hold IO.
// (Not nbd's "Dead connection, failed to find a fallback" nor "shutting
// down sockets": the first precedes a wait for a reattach that may well
// succeed, the second follows every orderly disconnect.)
var ioErrorPatterns = []string{
	"I/O error",
	"EXT4-fs error",
	"Aborting journal",
	"Detected aborted journal",
	"Remounting filesystem read-only",
}

// ioErrorLines are the lines of log matching ioErrorPatterns.
func ioErrorLines(log []string) []string {
	var bad []string
	for _, l := range log {
		for _, p := range ioErrorPatterns {
			if strings.Contains(l, p) {
				bad = append(bad, l)
				break
			}
		}
	}
	return bad
}

// nbdLines are the lines of log about NBD devices (kept in the test log:
// what the kernel did at each step is part of the result).
func nbdLines(log []string) []string {
	var out []string
	for _, l := range log {
		if strings.Contains(l, "nbd") || strings.Contains(l, "block ") {
			out = append(out, l)
		}
	}
	return out
}

// summarize shortens a list of log lines for a failure message.
func summarize(lines []string, n int) string {
	if len(lines) <= n {
		return strings.Join(lines, "\n")
	}
	return strings.Join(lines[:n], "\n") + fmt.Sprintf("\n... and %d more", len(lines)-n)
}

// osdPause is `ceph osd pause` (no reads, no writes served by any OSD)
// with the unpause also registered as a cleanup, so that a failing test
// never leaves the cluster paused for the next one.
type osdPause struct {
	t      testing.TB
	mu     sync.Mutex
	paused bool
	start  time.Time
}

func pauseOSDs(t testing.TB) *osdPause {
	t.Helper()
	p := &osdPause{t: t}
	t.Cleanup(p.cleanup)
	out, err := testkit.Run(t, 3*time.Minute, "ceph", "osd", "pause")
	if err != nil {
		t.Fatalf("ceph osd pause: %v\n%s", err, out)
	}
	p.mu.Lock()
	p.paused, p.start = true, time.Now()
	p.mu.Unlock()
	t.Logf("OSDs paused")
	return p
}

// unpause ends the pause and returns how long it lasted.
func (p *osdPause) unpause() time.Duration {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		return 0
	}
	out, err := testkit.Run(p.t, 3*time.Minute, "ceph", "osd", "unpause")
	if err != nil {
		p.t.Fatalf("ceph osd unpause: %v\n%s", err, out)
	}
	p.paused = false
	d := time.Since(p.start)
	p.t.Logf("OSDs unpaused after %.1fs", d.Seconds())
	return d
}

func (p *osdPause) cleanup() {
	p.mu.Lock()
	paused := p.paused
	p.mu.Unlock()
	if !paused {
		return
	}
	for i := 0; i < 3; i++ {
		if out, err := testkit.Run(p.t, 3*time.Minute, "ceph", "osd", "unpause"); err == nil {
			p.mu.Lock()
			p.paused = false
			p.mu.Unlock()
			return
		} else {
			p.t.Logf("cleanup: ceph osd unpause: %v\n%s", err, out)
		}
	}
	p.t.Errorf("cleanup: the OSDs could not be unpaused; later tests will hang")
}

// connEntry is the connection part of a `list --format json` entry
// (the fault tests): pointers, so that a missing field is told from a zero.
type connEntry struct {
	Device              string `json:"device"`
	Connections         *int   `json:"connections"`
	ConnectionsLive     *int   `json:"connections_live"`
	ConnectionsReplaced *int   `json:"connections_replaced"`
}

func listConns(t testing.TB, dev string) (connEntry, string) {
	t.Helper()
	out := testkit.Must(t, time.Minute, testkit.Binary(t), "list", "--format", "json")
	var l []connEntry
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("list --format json is not JSON: %v\n%s", err, out)
	}
	for _, e := range l {
		if e.Device == dev {
			return e, out
		}
	}
	t.Fatalf("list --format json does not show %s:\n%s", dev, out)
	return connEntry{}, out
}

func intp(p *int) string {
	if p == nil {
		return "absent"
	}
	return strconv.Itoa(*p)
}

// checkAllConnections: list reports that dev has all its want
// connections live.
func checkAllConnections(t testing.TB, dev string, want int) {
	t.Helper()
	// The serving process records its counts about once a second: give a
	// replacement that just happened a moment to show.
	e, raw := listConns(t, dev)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if e.Connections != nil && e.ConnectionsLive != nil && *e.Connections == want && *e.ConnectionsLive == want {
			break
		}
		e, raw = listConns(t, dev)
	}
	t.Logf("%s: connections %s, live %s, replaced %s", dev, intp(e.Connections), intp(e.ConnectionsLive), intp(e.ConnectionsReplaced))
	if e.Connections == nil || e.ConnectionsLive == nil {
		t.Errorf("list --format json has no connections/connections_live for %s:\n%s", dev, raw)
		return
	}
	if *e.Connections != want || *e.ConnectionsLive != want {
		t.Errorf("%s: connections %d, connections_live %d; want both %d", dev, *e.Connections, *e.ConnectionsLive, want)
	}
}

// alignedBlock is a page-aligned buffer, as O_DIRECT needs.
func alignedBlock(t testing.TB, size int) []byte {
	t.Helper()
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { syscall.Munmap(b) })
	return b
}

// fillBlock fills b with a pattern naming the writer and block number.
func fillBlock(b []byte, name string, n int) {
	line := []byte(fmt.Sprintf("%s block %09d\n", name, n))
	for i := 0; i < len(b); i += len(line) {
		copy(b[i:], line)
	}
}

// directWriter writes block after block of its file (or device) with
// O_DIRECT, one at a time, pausing between them, and records how long
// each took, so a test sees writes stall under a fault and resume after
// it; verify reads back every block it acknowledged.
type directWriter struct {
	t     testing.TB
	name  string
	path  string
	bs    int
	mu    sync.Mutex
	done  int // blocks written and acknowledged
	errs  []string
	worst time.Duration // slowest acknowledged or failed write
	stop  chan struct{}
	exit  chan struct{}
}

// startDirectWriter starts writing path (created if missing) at most
// maxBlocks blocks of bs bytes, one every pace.
func startDirectWriter(t testing.TB, name, path string, bs, maxBlocks int, pace time.Duration) *directWriter {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_DIRECT, 0o644)
	if err != nil {
		t.Fatalf("opening %s with O_DIRECT: %v", path, err)
	}
	w := &directWriter{t: t, name: name, path: path, bs: bs, stop: make(chan struct{}), exit: make(chan struct{})}
	buf := alignedBlock(t, bs)
	go func() {
		defer close(w.exit)
		defer f.Close()
		for i := 0; i < maxBlocks; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			fillBlock(buf, name, i)
			start := time.Now()
			_, err := f.WriteAt(buf, int64(i)*int64(bs))
			lat := time.Since(start)
			w.mu.Lock()
			if lat > w.worst {
				w.worst = lat
			}
			if err != nil {
				w.errs = append(w.errs, fmt.Sprintf("block %d after %.1fs: %v", i, lat.Seconds(), err))
				stop := len(w.errs) >= 5
				w.mu.Unlock()
				if stop {
					return
				}
				continue
			}
			w.done = i + 1
			w.mu.Unlock()
			time.Sleep(pace)
		}
	}()
	// Never leave the goroutine writing into a device being unmapped.
	t.Cleanup(func() { w.halt(3 * time.Minute) })
	return w
}

func (w *directWriter) blocks() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.done
}

func (w *directWriter) errors() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.errs...)
}

func (w *directWriter) slowest() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.worst
}

// halt stops the writer and waits (up to timeout) for its last write;
// false if it is still stuck in a write.
func (w *directWriter) halt(timeout time.Duration) bool {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	select {
	case <-w.exit:
		return true
	case <-time.After(timeout):
		return false
	}
}

// verify reads back (O_DIRECT, past the page cache) every block the
// writer had acknowledged and returns the mismatches.
func (w *directWriter) verify() []string {
	w.t.Helper()
	f, err := os.OpenFile(w.path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return []string{fmt.Sprintf("opening %s: %v", w.path, err)}
	}
	defer f.Close()
	buf := alignedBlock(w.t, w.bs)
	want := make([]byte, w.bs)
	var bad []string
	n := w.blocks()
	for i := 0; i < n && len(bad) < 10; i++ {
		if _, err := f.ReadAt(buf, int64(i)*int64(w.bs)); err != nil {
			bad = append(bad, fmt.Sprintf("block %d: %v", i, err))
			continue
		}
		fillBlock(want, w.name, i)
		if !bytes.Equal(buf, want) {
			bad = append(bad, fmt.Sprintf("block %d reads %q...", i, buf[:40]))
		}
	}
	return bad
}

// ioResult is how one O_DIRECT IO ended and how long it took.
type ioResult struct {
	err error
	d   time.Duration
}

// asyncDirectIO starts one O_DIRECT write (write=true: a block of
// fillBlock(pattern)) or read of bs bytes at off; the result arrives on
// the channel when the IO ends.
func asyncDirectIO(t testing.TB, path string, write bool, off int64, bs int, pattern string) <-chan ioResult {
	t.Helper()
	buf := alignedBlock(t, bs)
	if write {
		fillBlock(buf, pattern, int(off/int64(bs)))
	}
	done := make(chan ioResult, 1)
	go func() {
		start := time.Now()
		flags := os.O_RDONLY
		if write {
			flags = os.O_WRONLY
		}
		f, err := os.OpenFile(path, flags|syscall.O_DIRECT, 0)
		if err == nil {
			if write {
				_, err = f.WriteAt(buf, off)
			} else {
				_, err = f.ReadAt(buf, off)
			}
			f.Close()
		}
		done <- ioResult{err, time.Since(start)}
	}()
	return done
}

// timedDirectIO does one O_DIRECT IO (see asyncDirectIO) and returns its
// duration and error; it gives up waiting after limit (the IO may still
// be stuck in the kernel then: the error is errStillBlocked).
func timedDirectIO(t testing.TB, path string, write bool, off int64, bs int, pattern string, limit time.Duration) (time.Duration, error) {
	t.Helper()
	select {
	case r := <-asyncDirectIO(t, path, write, off, bs, pattern):
		return r.d, r.err
	case <-time.After(limit):
		return limit, errStillBlocked
	}
}

var errStillBlocked = errors.New("the IO is still blocked")

// taskFlags maps each thread of pid to field 9 (flags) of its stat.
func taskFlags(t testing.TB, pid int) map[int]uint64 {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of process %d: %v", pid, err)
	}
	out := map[int]uint64{}
	for _, task := range tasks {
		tid, err := strconv.Atoi(filepath.Base(task))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(task, "stat"))
		if err != nil {
			continue // the thread ended meanwhile
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		// After the command: state(3) ppid pgrp session tty_nr tpgid flags(9).
		if len(f) < 7 {
			t.Fatalf("/proc/%d/task/%d/stat: too short: %q", pid, tid, s)
		}
		flags, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/task/%d/stat flags %q: %v", pid, tid, f[6], err)
		}
		out[tid] = flags
	}
	return out
}
