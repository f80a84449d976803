package clients

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// nbdinfoExport is the part of `nbdinfo --json` the tests check.
type nbdinfoExport struct {
	Name         string `json:"export-name"`
	Description  string `json:"description"`
	Size         int64  `json:"export-size"`
	ReadOnly     bool   `json:"is_read_only"`
	CanFlush     bool   `json:"can_flush"`
	CanFUA       bool   `json:"can_fua"`
	CanTrim      bool   `json:"can_trim"`
	CanZero      bool   `json:"can_zero"`
	CanMultiConn bool   `json:"can_multi_conn"`
	CanDF        bool   `json:"can_df"`
	MinBlock     int    `json:"block_size_minimum"`
	PrefBlock    int    `json:"block_size_preferred"`
	MaxBlock     int    `json:"block_size_maximum"`
}

func nbdinfo(t *testing.T, args ...string) []nbdinfoExport {
	t.Helper()
	out := runTool(t, "nbdinfo", append([]string{"--json"}, args...)...)
	var info struct {
		Protocol string          `json:"protocol"`
		Exports  []nbdinfoExport `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json output: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" {
		t.Fatalf("nbdinfo protocol %q, want newstyle-fixed", info.Protocol)
	}
	return info.Exports
}

func TestNbdinfoListsExportWithFlags(t *testing.T) {
	dir := t.TempDir()
	odd := sparseFile(t, dir, "odd.img", 1000)
	tests := []struct {
		name   string
		args   []string
		expect nbdinfoExport
	}{
		{"mem read-write", []string{"--name", "disk", "mem:64M"}, nbdinfoExport{
			Name: "disk", Description: "mem:64M", Size: 64 << 20,
			CanFlush: true, CanFUA: true, CanTrim: true, CanZero: true,
			MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20}},
		{"mem read-only multi-conn", []string{"--read-only", "--multi-conn", "mem:1G"}, nbdinfoExport{
			Description: "mem:1G", Size: 1 << 30, ReadOnly: true,
			CanFlush: true, CanFUA: true, CanMultiConn: true,
			MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20}},
		{"file with odd size", []string{"--description", "odd file", "file:" + odd}, nbdinfoExport{
			Description: "odd file", Size: 1000,
			CanFlush: true, CanFUA: true, CanTrim: true, CanZero: true,
			MinBlock: 1, PrefBlock: 4096, MaxBlock: 32 << 20}},
		{"block size 4096", []string{"--block-size", "4096", "mem:16M"}, nbdinfoExport{
			Description: "mem:16M", Size: 16 << 20,
			CanFlush: true, CanFUA: true, CanTrim: true, CanZero: true,
			MinBlock: 4096, PrefBlock: 4096, MaxBlock: 32 << 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uri := export(t, tt.args...)
			got := nbdinfo(t, uri)
			if len(got) != 1 || got[0] != tt.expect {
				t.Fatalf("nbdinfo --json %s:\n got %+v\nwant %+v", uri, got, tt.expect)
			}
			// --list goes through NBD_OPT_LIST, then NBD_OPT_INFO.
			listed := nbdinfo(t, "--list", uri)
			if len(listed) != 1 || listed[0].Name != tt.expect.Name || listed[0].Description != tt.expect.Description {
				t.Fatalf("nbdinfo --list: %+v", listed)
			}
		})
	}
}

func TestNbdcopyRoundTrip(t *testing.T) {
	dir := t.TempDir()
	const size = 24<<20 + 4096 // not a multiple of nbdcopy's request size
	src, data := testkit.RandomFile(t, dir, size, 1)
	backing := sparseFile(t, dir, "backing.img", size)
	for _, target := range []string{fmt.Sprintf("mem:%d", size), "file:" + backing} {
		t.Run(strings.SplitN(target, ":", 2)[0], func(t *testing.T) {
			uri := export(t, target)
			runTool(t, "nbdcopy", "--flush", src, uri)
			out := filepath.Join(t.TempDir(), "out.bin")
			runTool(t, "nbdcopy", uri, out)
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("nbdcopy out differs from what nbdcopy put in (%d vs %d bytes)", len(got), len(data))
			}
			if strings.HasPrefix(target, "file:") {
				stored, _ := os.ReadFile(backing)
				if !bytes.Equal(stored, data) {
					t.Fatal("the backing file does not hold the copied data")
				}
			}
		})
	}
}

func TestQemuImgCompare(t *testing.T) {
	dir := t.TempDir()
	const size = 16 << 20
	src, data := testkit.RandomFile(t, dir, size, 2)
	uri := export(t, fmt.Sprintf("mem:%d", size))
	runTool(t, "nbdcopy", src, uri)
	out := runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	// The comparison can fail: one changed byte is found at its offset.
	data[5<<20+17] ^= 0xff
	other := filepath.Join(dir, "other.bin")
	os.WriteFile(other, data, 0o600)
	out, err := tool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", other, uri)
	if err == nil || !regexp.MustCompile(`Content mismatch at offset 5242880\b`).MatchString(out) {
		t.Fatalf("qemu-img compare against a different file: err %v, output %q; want a mismatch at offset 5242880", err, out)
	}
}

func TestFioVerify(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		minWrite int64
	}{
		{"randwrite 4k qd16", []string{"--rw=randwrite", "--bs=4k", "--iodepth=16"}, 32 << 20},
		{"write 64k qd4", []string{"--rw=write", "--bs=64k", "--iodepth=4"}, 32 << 20},
		{"randrw mixed sizes qd8", []string{"--rw=randrw", "--bsrange=512-128k", "--iodepth=8"}, 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uri := export(t, "mem:64M")
			args := append([]string{
				"--name=verify", "--ioengine=nbd", "--uri=" + uri,
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
			if j.Error != 0 || j.Write.IOBytes < tt.minWrite || j.Read.IOBytes == 0 {
				t.Fatalf("fio job: error %d, wrote %d bytes, read (verified) %d bytes", j.Error, j.Write.IOBytes, j.Read.IOBytes)
			}
		})
	}
}

func TestExportRefusesBadInput(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"export", "--listen", "0.0.0.0:10809", "mem:1M"}, "not a loopback address"},
		{[]string{"export", "--listen", ":10809", "mem:1M"}, "every interface"},
		{[]string{"export", "--socket", "x", "--listen", "127.0.0.1:1", "mem:1M"}, "exclusive"},
		{[]string{"export", "mem:1Q"}, "want a number"},
		{[]string{"export", "mem:0"}, "must be positive"},
		{[]string{"export", "/dev/sda"}, "write file:/dev/sda"},
		{[]string{"export", "nope:x"}, "unknown kind"},
		{[]string{"export", "file:/does/not/exist"}, "create it first"},
		{[]string{"export", "--block-size", "1000", "mem:1M"}, "power of two"},
		{[]string{"export"}, "exactly one TARGET"},
	}
	for _, tt := range tests {
		out, err := runBinary(t, tt.args...)
		if err == nil || !strings.Contains(out, tt.want) {
			t.Errorf("rbd-nbd-graph %s: err %v, output %q; want a failure mentioning %q", strings.Join(tt.args, " "), err, out, tt.want)
		}
	}
}
