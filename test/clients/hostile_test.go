package clients

import (
	"bufio"
	"bytes"
	"context"
	be "encoding/binary"
	"fmt"
	"io"
	"net"
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
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// The export under hostile and heavy clients: raw sockets that
// never read, more connections than descriptors, a wide umask.

// exportProc is an `export` process started through a wrapper command
// (a shell that sets the umask, prlimit), for tests that need its pid,
// its socket path and its log.
type exportProc struct {
	cmd    *exec.Cmd
	sock   string
	uri    string
	stderr *syncBuffer
	exited chan error
}

// syncBuffer is a bytes.Buffer the process's stderr and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startWrapped runs wrapper... binary export args... and waits for the
// URI. The process is stopped at cleanup; it must exit 0 unless the
// test already failed.
func startWrapped(t *testing.T, wrapper []string, args ...string) *exportProc {
	t.Helper()
	argv := append(append(wrapper, testkit.Binary(t), "export"), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	p := &exportProc{cmd: cmd, stderr: &syncBuffer{}, exited: make(chan error, 1)}
	for i, a := range args {
		if a == "--socket" && i+1 < len(args) {
			p.sock = args[i+1]
		}
	}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	uri := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			uri <- sc.Text()
		}
		close(uri)
		io.Copy(io.Discard, out)
	}()
	select {
	case p.uri = <-uri:
	case <-time.After(30 * time.Second):
	}
	if p.uri == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("export %v printed no URI; stderr:\n%s", args, p.stderr.String())
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.exited:
			if err != nil && !t.Failed() {
				t.Errorf("export %v after SIGTERM: %v", args, err)
			}
		case <-time.After(45 * time.Second):
			cmd.Process.Kill()
			t.Errorf("export %v did not exit within 45s of SIGTERM", args)
		}
		if t.Failed() {
			t.Logf("export stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// alive fails the test if the process has exited.
func (p *exportProc) alive(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("export exited: %v; stderr:\n%s", err, p.stderr.String())
	default:
	}
}

// rssBytes is the process's resident set size (VmRSS).
func (p *exportProc) rssBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("export process status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", p.cmd.Process.Pid)
	return 0
}

// rawClient connects to sock, opens the default export with
// NBD_OPT_EXPORT_NAME by hand and returns the connection in the
// transmission phase, for clients that misbehave on purpose.
func rawClient(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var hello [18]byte // NBDMAGIC, IHAVEOPT, handshake flags
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		c.Close()
		t.Fatalf("handshake: %v", err)
	}
	msg := be.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	msg = append(msg, "IHAVEOPT"...)
	msg = be.BigEndian.AppendUint32(msg, nbd.OptExportName)
	msg = be.BigEndian.AppendUint32(msg, 0) // the default export
	if _, err := c.Write(msg); err != nil {
		c.Close()
		t.Fatalf("handshake: %v", err)
	}
	var info [10]byte // size, transmission flags
	if _, err := io.ReadFull(c, info[:]); err != nil {
		c.Close()
		t.Fatalf("handshake: %v", err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// sendRead sends a READ request and does not wait for its reply.
func sendRead(t *testing.T, c net.Conn, cookie, off uint64, length uint32) {
	t.Helper()
	var b [nbd.RequestSize]byte
	(&nbd.Request{Type: nbd.CmdRead, Cookie: cookie, Offset: off, Length: length}).Encode(b[:])
	if _, err := c.Write(b[:]); err != nil {
		t.Fatalf("send READ: %v", err)
	}
}

// wellBehavedRead opens a fresh client and reads 4 KiB, within limit.
func wellBehavedRead(t *testing.T, sock string, limit time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		cl, err := nbd.Dial(ctx, "unix", sock, "")
		if err != nil {
			done <- err
			return
		}
		defer cl.Close()
		buf := make([]byte, 4096)
		_, err = cl.ReadAt(buf, 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("well-behaved client: %v after %v", err, time.Since(start))
		}
	case <-time.After(limit + 5*time.Second):
		t.Fatalf("well-behaved client got no answer in %v", limit)
	}
	t.Logf("well-behaved client read 4 KiB in %v", time.Since(start))
}

// Under umask 000 bind(2) alone makes the socket 0777: anyone could
// connect and read and write the export.
func TestExportSocketModeUnderUmask000(t *testing.T) {
	umask000 := []string{"/bin/sh", "-c", `umask 000; exec "$0" "$@"`}
	for _, tc := range []struct {
		flags []string
		want  os.FileMode
	}{
		{nil, 0o600},
		{[]string{"--socket-mode", "0660", "--socket-group", strconv.Itoa(os.Getgid())}, 0o660},
	} {
		sock := filepath.Join(t.TempDir(), "nbd.sock")
		p := startWrapped(t, umask000, append([]string{"--socket", sock}, append(tc.flags, "mem:1M")...)...)
		st, err := os.Lstat(p.sock)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != tc.want {
			t.Errorf("export %v under umask 000: socket mode %v, want %v", tc.flags, st.Mode(), tc.want)
		}
	}
}

// --allow-remote lets --listen use any address, but the exposure is
// still worth a warning on every start.
func TestExportWarnsOfRemoteListen(t *testing.T) {
	// Read-only, 4 KiB, on an ephemeral port and stopped at once: nothing
	// talks to it.
	p := startWrapped(t, nil, "--listen", "0.0.0.0:0", "--allow-remote", "--read-only", "mem:4K")
	// stderr is copied from a pipe: the log may trail the URI on stdout.
	log := p.stderr.String()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(log, "export: serving") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		log = p.stderr.String()
	}
	if !strings.Contains(log, "level=WARN") || !strings.Contains(log, "every interface") {
		t.Errorf("no warning naming the exposure in the log:\n%s", log)
	}
}

// With fewer descriptors than clients, accept(2) fails with EMFILE: the
// server must back off and keep serving, not exit.
func TestExportSurvivesDescriptorLimit(t *testing.T) {
	prlimit := testkit.Tool(t, "prlimit")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	p := startWrapped(t, []string{prlimit, "--nofile=40:40", "--"}, "--socket", sock, "mem:1M")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 60 {
		c, err := net.DialTimeout("unix", sock, 10*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	// Long enough for the server to take every descriptor and hit EMFILE
	// on the rest (which wait in the backlog).
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.stderr.String(), "too many open files") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	p.alive(t)
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	wellBehavedRead(t, sock, 20*time.Second)
	p.alive(t)
}

// 20 clients each send two 32 MiB READs and never read a reply. Without
// a budget across connections every READ holds its 32 MiB buffer: the
// process grew by 1.3 GB. With --max-inflight-bytes 128M at most 128 MiB
// of payload is held, plus at most one 256 KiB request per connection
// (which the budget always admits, so no connection starves): 133 MiB.
// The bound adds to the idle RSS the 64 MiB of the mem: export the READs
// touch, and 64 MiB of slack for the heap's growth between collections
// and the connections' read buffers. Once the clients leave, the
// buffers go back to the OS.
func TestExportFloodMemoryBound(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	p := startWrapped(t, nil, "--socket", sock, "--max-inflight-bytes", "128M", "mem:64M")
	idle := p.rssBytes(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 20 {
		c := rawClient(t, sock)
		conns = append(conns, c)
		sendRead(t, c, uint64(2*i), 0, 32<<20)
		sendRead(t, c, uint64(2*i+1), 32<<20, 32<<20)
	}
	// Let the server take in everything it will.
	var peak int64
	for range 30 {
		time.Sleep(100 * time.Millisecond)
		peak = max(peak, p.rssBytes(t))
	}
	const data, held, slack = 64 << 20, 128<<20 + 20*(256<<10), 64 << 20
	bound := idle + data + held + slack
	t.Logf("export RSS: %d MiB idle, %d MiB peak under the flood (bound %d MiB)", idle>>20, peak>>20, bound>>20)
	if peak > bound {
		t.Errorf("export RSS %d MiB under the flood, want at most %d MiB", peak>>20, bound>>20)
	}
	p.alive(t)
	wellBehavedRead(t, sock, 10*time.Second)

	for _, c := range conns {
		c.Close()
	}
	conns = nil
	after := idle + data + 32<<20
	deadline := time.Now().Add(20 * time.Second)
	rss := p.rssBytes(t)
	for rss > after && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		rss = p.rssBytes(t)
	}
	t.Logf("export RSS %d MiB after the clients left (want at most %d MiB)", rss>>20, after>>20)
	if rss > after {
		t.Errorf("export RSS %d MiB 20 s after the flood ended, want at most %d MiB: the buffers were not given back", rss>>20, after>>20)
	}
}

// export runs with the Go runtime's sysmon kept awake (it executes
// itself again with GODEBUG's schedtrace set: cmd/rbd-nbd-graph/sysmon.go),
// unless GODEBUG already chooses schedtrace.
func TestExportKeepsSysmonAwake(t *testing.T) {
	for _, c := range []struct {
		wrapper []string
		want    string
	}{
		{nil, "GODEBUG=schedtrace=2147483647"},
		{[]string{"env", "GODEBUG=madvdontneed=1"}, "GODEBUG=madvdontneed=1,schedtrace=2147483647"},
		{[]string{"env", "GODEBUG=schedtrace=0"}, "GODEBUG=schedtrace=0"},
	} {
		p := startWrapped(t, c.wrapper, "--socket", filepath.Join(t.TempDir(), "nbd.sock"), "--read-only", "mem:4K")
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		var godebug []string
		for _, kv := range strings.Split(string(environ), "\x00") {
			if strings.HasPrefix(kv, "GODEBUG=") {
				godebug = append(godebug, kv)
			}
		}
		if len(godebug) != 1 || godebug[0] != c.want {
			t.Errorf("wrapper %q: the export's environment has %q, want [%q]", c.wrapper, godebug, c.want)
		}
	}
}
