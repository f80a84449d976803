package rbdexport

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// A file copied into the export with nbdcopy is what librbd then reads
// from the image, and what nbdcopy reads back out; zero runs in the
// source become zeroes in the image even where it held data before.
func TestNbdcopyRoundTrip(t *testing.T) {
	testkit.Tool(t, "nbdcopy")
	c := cluster(t)
	const size = 37<<20 + 512<<10 // not a whole number of objects
	img := newImage(t, c, size)

	// Old data everywhere, so zeroes must really be written.
	im, err := c.OpenImage(testContext(t), img, rbdio.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := bytes.Repeat([]byte{0xAA}, size)
	if _, err := im.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	im.Close()

	src, data := testkit.RandomFile(t, t.TempDir(), size, 1)
	copy(data[5<<20:9<<20], make([]byte, 4<<20)) // a run of zeroes across an object boundary
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}

	exp := export(t, "rbd:rbd/"+img)
	runTool(t, "nbdcopy", src, exp.uri)
	out := filepath.Join(t.TempDir(), "out.bin")
	runTool(t, "nbdcopy", exp.uri, out)
	exp.stop(t)

	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, data); i >= 0 {
		t.Fatalf("nbdcopy round trip differs at offset %d (got %d bytes, want %d)", i, len(got), len(data))
	}
	if i := firstDiff(readImage(t, c, img, rbdio.OpenOptions{}), data); i >= 0 {
		t.Fatalf("librbd reads the image differently from what was copied in, from offset %d", i)
	}
}

// fio's nbd engine writes through the export and verifies every block
// with crc32c, at queue depth and with mixed sizes.
func TestFioVerify(t *testing.T) {
	c := cluster(t)
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"randwrite 4k qd16", []string{"--rw=randwrite", "--bs=4k", "--iodepth=16"}},
		{"randrw mixed sizes qd8", []string{"--rw=randrw", "--bsrange=4k-256k", "--iodepth=8"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			img := newImage(t, c, 64<<20)
			exp := export(t, "rbd:rbd/"+img)
			args := append([]string{
				"--name=verify", "--ioengine=nbd", "--uri=" + exp.uri,
				"--size=32M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
				"--verify_backlog=64", "--verify_state_save=0", "--output-format=json",
			}, tt.args...)
			out := runTool(t, "fio", args...)
			var res struct {
				Jobs []struct {
					Error int `json:"error"`
					Read  struct {
						IOBytes int64 `json:"io_bytes"`
					} `json:"read"`
					Write struct {
						IOBytes int64 `json:"io_bytes"`
					} `json:"write"`
				} `json:"jobs"`
			}
			i := strings.Index(out, "{")
			if i < 0 || json.Unmarshal([]byte(out[i:]), &res) != nil || len(res.Jobs) != 1 {
				t.Fatalf("fio output is not the expected JSON:\n%s", out)
			}
			j := res.Jobs[0]
			if j.Error != 0 || j.Write.IOBytes < 1<<20 || j.Read.IOBytes == 0 {
				t.Fatalf("fio: error %d, wrote %d bytes, verified %d bytes", j.Error, j.Write.IOBytes, j.Read.IOBytes)
			}
		})
	}
}

// Single requests with nbdsh: write zeroes (with and without holes) and
// trim reach librbd; a flush succeeds.
func TestZeroTrimFlush(t *testing.T) {
	testkit.Tool(t, "nbdsh")
	c := cluster(t)
	img := newImage(t, c, 16<<20)
	exp := export(t, "rbd:rbd/"+img)
	script := `
h.pwrite(b"\x55" * (12 << 20), 0)
h.zero(8192, 4096)                                  # may punch a hole
h.zero(8192, 65536, nbd.CMD_FLAG_NO_HOLE)           # must stay allocated
h.trim(4 << 20, 4 << 20)                            # a whole object
h.flush()
print("ok")
`
	if out := nbdsh(t, exp.uri, script); !strings.Contains(out, "ok") {
		t.Fatalf("nbdsh: %s", out)
	}
	exp.stop(t)
	got := readImage(t, c, img, rbdio.OpenOptions{})
	want := bytes.Repeat([]byte{0x55}, 12<<20)
	copy(want[4096:4096+8192], make([]byte, 8192))
	copy(want[65536:65536+8192], make([]byte, 8192))
	copy(want[4<<20:8<<20], make([]byte, 4<<20))
	want = append(want, make([]byte, 4<<20)...)
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("image differs from the expected result at offset %d: got %#x want %#x", i, got[i], want[i])
	}
}

// A snapshot export serves the snapshot's data; a write to it gets an
// error reply (EPERM, NBD's value for EROFS) and the connection goes on.
// The same for a --read-only export of the image head.
func TestReadOnlyExports(t *testing.T) {
	testkit.Tool(t, "nbdsh")
	c := cluster(t)
	img := newImage(t, c, 4<<20)
	im, err := c.OpenImage(testContext(t), img, rbdio.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	im.Close()
	if err := c.CreateSnapshot(testContext(t), img, "s1"); err != nil {
		t.Fatal(err)
	}
	im, err = c.OpenImage(testContext(t), img, rbdio.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.WriteAt(bytes.Repeat([]byte{2}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	im.Close()

	script := `
import errno
try:
    h.pwrite(b"\x09" * 4096, 0)
    print("write accepted")
except nbd.Error as e:
    print("write refused", errno.errorcode.get(e.errno, e.errno))
print("then read", h.pread(4096, 0)[:1].hex())
`
	for _, tt := range []struct {
		name, target string
		args         []string
		want         string
	}{
		{"snapshot", "rbd:rbd/" + img + "@s1", nil, "01"},
		{"read-only head", "rbd:rbd/" + img, []string{"--read-only"}, "02"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			exp := export(t, append(tt.args, tt.target)...)
			out := nbdsh(t, exp.uri, script)
			if !strings.Contains(out, "write refused EPERM") || !strings.Contains(out, "then read "+tt.want) {
				t.Fatalf("nbdsh output:\n%s\nwant the write refused with EPERM and the read to give %s", out, tt.want)
			}
		})
	}
	if got := readImage(t, c, img, rbdio.OpenOptions{Snapshot: "s1"}); got[0] != 1 {
		t.Errorf("snapshot changed: first byte %#x", got[0])
	}
}

// The failures the issue lists, each a clear message and exit status 1.
func TestExportFailures(t *testing.T) {
	t.Parallel() // the no-cluster case waits 30 s
	conf := testkit.CephConf(t)
	c := cluster(t)
	dir := t.TempDir()

	t.Run("missing image", func(t *testing.T) {
		out := runExportFailing(t, "--ceph-conf", conf, "rbd:rbd/rbdexport-no-such-image")
		mustMatch(t, out, `open image rbd/rbdexport-no-such-image: not found .*rbd_open`)
	})
	t.Run("missing snapshot", func(t *testing.T) {
		img := newImage(t, c, 1<<20)
		out := runExportFailing(t, "--ceph-conf", conf, "rbd:rbd/"+img+"@nosnap")
		mustMatch(t, out, `open image rbd/`+img+`@nosnap: not found`)
	})
	t.Run("missing pool", func(t *testing.T) {
		out := runExportFailing(t, "--ceph-conf", conf, "rbd:nopool/img")
		mustMatch(t, out, `open pool nopool: not found .*ceph osd pool create nopool`)
	})
	t.Run("wrong key", func(t *testing.T) {
		authtool := testkit.Tool(t, "ceph-authtool")
		kr := filepath.Join(dir, "wrong.keyring")
		runTool(t, authtool, "--create-keyring", kr, "--gen-key", "-n", "client.admin")
		out := runExportFailing(t, "--ceph-conf", conf, "--keyring", kr, "rbd:rbd/x")
		mustMatch(t, out, `permission denied .*cephx refused client.admin`)
	})
	t.Run("no cluster", func(t *testing.T) {
		t.Parallel()
		data, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		dead := filepath.Join(dir, "dead.conf")
		data = regexp.MustCompile(`(?m)^mon host = .*$`).ReplaceAll(data, []byte("mon host = [v2:127.0.0.1:9,v1:127.0.0.1:10]"))
		if err := os.WriteFile(dead, data, 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out := runExportFailing(t, "--ceph-conf", dead, "--connect-timeout", "3s", "rbd:rbd/x")
		mustMatch(t, out, `cluster unreachable .*127.0.0.1:9.*ceph.conf `+regexp.QuoteMeta(dead)+`.*is the cluster running`)
		if took := time.Since(start); took > 20*time.Second {
			t.Errorf("export with --connect-timeout 3s gave up after %v", took)
		}
	})
	t.Run("image held by another export", func(t *testing.T) {
		testkit.Tool(t, "nbdinfo")
		img := newImage(t, c, 1<<20)
		first := export(t, "rbd:rbd/"+img)
		out := runExportFailing(t, "--ceph-conf", conf, "rbd:rbd/"+img)
		mustMatch(t, out, `locked by another client .*held by client`)
		// The first export is unharmed.
		if info := runTool(t, "nbdinfo", first.uri); !strings.Contains(info, "export-size: 1048576") {
			t.Errorf("first export after the refused second one:\n%s", info)
		}
	})
}

func mustMatch(t *testing.T, out, pattern string) {
	t.Helper()
	if !regexp.MustCompile(pattern).MatchString(out) {
		t.Fatalf("output does not match %q:\n%s", pattern, out)
	}
}

// After an export is killed (SIGKILL: no unlock, no unwatch), a new one
// of the same image waits for the dead client's watch to time out (about
// 30 s), breaks its exclusive lock and serves, with the data intact.
func TestExportAfterCrash(t *testing.T) {
	t.Parallel() // mostly waiting for the watch to time out
	testkit.Tool(t, "nbdcopy")
	c := cluster(t)
	img := newImage(t, c, 8<<20)
	src, data := testkit.RandomFile(t, t.TempDir(), 8<<20, 7)
	first, err := startExport(t, "rbd:rbd/"+img)
	if err != nil {
		t.Fatal(err)
	}
	runTool(t, "nbdcopy", "--flush", src, first.uri)
	first.cmd.Process.Kill()
	<-first.exited
	first.exited = nil

	start := time.Now()
	second := export(t, "rbd:rbd/"+img)
	t.Logf("second export serving after %v", time.Since(start).Round(time.Second))
	out := filepath.Join(t.TempDir(), "out.bin")
	runTool(t, "nbdcopy", second.uri, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, data); i >= 0 {
		t.Fatalf("data written before the crash differs at offset %d", i)
	}
}
