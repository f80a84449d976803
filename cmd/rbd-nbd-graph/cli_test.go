package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
)

// runCLI runs this test binary as the rbd-nbd-graph command (TestMain)
// with args, bounded to 60 s, and returns its exit code, stdout and
// stderr. For commands that end by themselves; an export is run with
// runSelf.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(os.Environ(), "RBD_NBD_GRAPH_TEST_MAIN=1", logEnv+"=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Run() //nolint:errcheck // the exit code is the result
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// The command line as issue 16 asks, each point run through the binary.
func TestCLIRunsTheBinary(t *testing.T) {
	sock := func() string { return filepath.Join(t.TempDir(), "s") }
	// This machine has no kernel NBD: a map whose flags parsed fails
	// with the kernel-support message (exit 1), a bad command line with
	// exit 2 before that.
	const parsed, noNBD = 1, "no NBD support"
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string // in stderr (or stdout for code 0)
		not  []string
	}{
		{"flags after TARGET", []string{"map", "mem:1M", "--foreground", "--read-only", "--connections", "2"}, parsed, []string{noNBD}, nil},
		{"short -c for ceph.conf", []string{"map", "-c", "/etc/ceph/none.conf", "--foreground", "mem:1M"}, parsed, []string{noNBD}, nil},
		{"--conf as rbd-nbd spells it", []string{"map", "--conf=/etc/ceph/none.conf", "--foreground", "mem:1M"}, parsed, []string{noNBD}, nil},
		{"single-dash long flags of earlier versions", []string{"map", "-foreground", "-io-timeout", "30", "-connections=2", "mem:1M"}, parsed, []string{noNBD}, nil},
		{"--io-timeout in plain seconds", []string{"map", "--io-timeout", "30", "--foreground", "mem:1M"}, parsed, []string{noNBD}, nil},
		{"a bad duration names the plain-seconds form", []string{"map", "--io-timeout", "soon", "mem:1M"}, 2, []string{"plain seconds", "see 'rbd-nbd-graph map -h'"}, nil},
		{"mem:1.5G is one size grammar", []string{"map", "--foreground", "mem:1.5G"}, parsed, []string{noNBD}, nil},
		{"unknown flag once with the hint", []string{"list", "--bogus"}, 2,
			[]string{"unknown flag: --bogus", "see 'rbd-nbd-graph list -h'"}, []string{"usage: rbd-nbd-graph list"}},
		{"missing TARGET once with the hint", []string{"export", "--socket", "S"}, 2,
			[]string{"want exactly one TARGET", "see 'rbd-nbd-graph export -h'"}, []string{"usage: rbd-nbd-graph export", "flags:"}},
		{"--version", []string{"--version"}, 0, []string{"rbd-nbd-graph ", "commit:", "go:      go1.", "go-ceph: v0.", "librbd:  1."}, nil},
		{"version", []string{"version"}, 0, []string{"rbd-nbd-graph ", "commit:", "go:      go1.", "go-ceph: v0.", "librbd:  1."}, nil},
		{"help COMMAND", []string{"help", "detach"}, 0, []string{"usage: rbd-nbd-graph detach"}, nil},
		{"unknown command", []string{"mapp"}, 2, []string{`unknown command "mapp"`, "rbd-nbd-graph -h"}, nil},
		{"completion bash", []string{"completion", "bash"}, 0, []string{"complete -F _rbd_nbd_graph rbd-nbd-graph", "detach", "--io-timeout", "-c"}, []string{"ready-fd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCLI(t, tc.args...)
			text := errs
			if tc.code == 0 {
				text = out + errs // help goes to stderr
			}
			if code != tc.code {
				t.Fatalf("%v: exit %d, want %d\nstdout %q\nstderr %q", tc.args, code, tc.code, out, errs)
			}
			for _, w := range tc.want {
				if strings.Count(text, w) == 0 {
					t.Errorf("%v: output lacks %q:\n%s", tc.args, w, text)
				}
			}
			if tc.code == 2 && strings.Count(errs, "\n") != 1 {
				t.Errorf("%v: want the error on one line, once: %q", tc.args, errs)
			}
			for _, n := range tc.not {
				if strings.Contains(text, n) {
					t.Errorf("%v: output has %q:\n%s", tc.args, n, text)
				}
			}
		})
	}

	// export: flags after TARGET, GNU and single-dash spellings.
	for _, args := range [][]string{
		{"export", "--socket", sock(), "mem:1M", "--read-only"},
		{"export", "-socket", sock(), "-read-only", "mem:1M"},
	} {
		if code, errs := runSelf(t, nil, args...); code != 0 || !strings.Contains(errs, "read_only=true") {
			t.Errorf("%v: exit %d, stderr %q; want 0 and a read-only export", args, code, errs)
		}
	}

	var v versionInfo
	code, out, errs := runCLI(t, "version", "--format", "json")
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.Go == "" || v.GoCeph != "v0.34.0" || !strings.HasPrefix(v.Librbd, "1.") || v.Commit == "" {
		t.Errorf("version --format json: exit %d, %+v, %v, stderr %q", code, v, err, errs)
	}
}

// Every command's -h: its usage line, a description, its flags, the
// log flags; exit 0; no hidden flag, not Go's bare "Usage of".
func TestEveryCommandHelp(t *testing.T) {
	for _, c := range commands() {
		for _, h := range []string{"-h", "--help"} {
			code, out, errs := runCLI(t, c.name, h)
			if code != 0 || out != "" {
				t.Errorf("%s %s: exit %d, stdout %q", c.name, h, code, out)
			}
			for _, w := range []string{"usage: rbd-nbd-graph " + c.name, "--log-level"} {
				if !strings.Contains(errs, w) {
					t.Errorf("%s %s lacks %q:\n%s", c.name, h, w, errs)
				}
			}
			if c.name != "completion" && !strings.Contains(errs, "\nflags:\n      --") && !strings.Contains(errs, "\nflags:\n  -") {
				t.Errorf("%s %s lists no flags:\n%s", c.name, h, errs)
			}
			lines := strings.Split(errs, "\n")
			if len(lines) < 3 || lines[1] != "" || lines[2] == "" || strings.HasPrefix(lines[2], "flags:") {
				t.Errorf("%s %s: no description after the usage line:\n%s", c.name, h, errs)
			}
			for _, n := range []string{"ready-fd", "Usage of", "[=true|false]"} {
				if strings.Contains(errs, n) {
					t.Errorf("%s %s shows %q:\n%s", c.name, h, n, errs)
				}
			}
		}
	}
	// The hidden flag still works for the background child.
	f, _, err := parseMapFlags("map", &environment{stderr: &bytes.Buffer{}}, []string{"--ready-fd=3", "mem:1M"})
	if err != nil || f.readyFD != 3 {
		t.Errorf("--ready-fd=3: %v", err)
	}
}

// Short forms, the conf alias and plain seconds reach the values.
func TestCLIFlagValues(t *testing.T) {
	env := &environment{stderr: &bytes.Buffer{}}
	f, target, err := parseMapFlags("map", env, []string{"mem:1M", "-c", "/a.conf", "-k", "/k", "--io-timeout", "30",
		"--dead-conn-timeout=2m", "--osd-timeout", "7", "--read-only"})
	if err != nil || target != "mem:1M" || f.ceph.conf != "/a.conf" || f.ceph.keyring != "/k" || f.ioTimeout != 30*time.Second ||
		f.deadConnTimeout != 2*time.Minute || f.ceph.osdTimeout != 7*time.Second || !f.readOnly {
		t.Errorf("map flags: %+v, %q, %v", f, target, err)
	}
	if f, _, err := parseMapFlags("map", env, []string{"--conf", "/b.conf", "--io-timeout", "30s", "x/y"}); err != nil || f.ceph.conf != "/b.conf" || f.ioTimeout != 30*time.Second {
		t.Errorf("--conf /b.conf --io-timeout 30s: %+v, %v", f, err)
	}
	// "--" ends the flags: a target may then start with a dash.
	if _, target, err := parseMapFlags("map", env, []string{"--read-only", "--", "-pool/img"}); err != nil || target != "-pool/img" {
		t.Errorf("-- then -pool/img: %q, %v", target, err)
	}
}

// One size grammar: the same inputs give the same bytes (or are refused)
// in a mem: target, a bench flag and a driver option.
func TestOneSizeGrammar(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // -1: refused
	}{
		{"4096", 4096}, {"4k", 4096}, {"4KiB", 4096}, {"512M", 512 << 20}, {"1.5G", 3 << 29}, {"1.5g", 3 << 29},
		{"1 GiB", 1 << 30}, {"2T", 2 << 40}, {"1.5k", 1536}, {"G", -1}, {"-1G", -1}, {"1x", -1}, {"", -1},
	} {
		target, terr := parseSize(tc.in) // mem:SIZE and --max-inflight-bytes
		env := &environment{stderr: &bytes.Buffer{}}
		bf, berr := parseBenchFlags(env, []string{"--total", tc.in}, false)
		var bench int64
		if berr == nil {
			bench = bf.opts.TotalBytes
		}
		o, oerr := parseBackendOptions([]string{"rbd.basesize=" + tc.in})
		base := o.layers.BaseSize
		if oerr != nil && strings.Contains(oerr.Error(), "below the minimum") {
			oerr = nil // parsed, then refused as too small for a filesystem
		}
		if tc.want < 0 {
			if terr == nil || berr == nil || oerr == nil {
				t.Errorf("%q accepted: target %d %v, bench %d %v, rbd.basesize %d %v", tc.in, target, terr, bench, berr, base, oerr)
			}
			continue
		}
		if terr != nil || berr != nil || oerr != nil || target != tc.want || bench != tc.want || base != tc.want {
			t.Errorf("%q: target %d %v, bench --total %d %v, rbd.basesize %d %v; want %d everywhere",
				tc.in, target, terr, bench, berr, base, oerr, tc.want)
		}
	}
}

// list --format json carries rbd-nbd's list-mapped fields, with its
// names, beside ours.
func TestListJSONFields(t *testing.T) {
	b, err := json.Marshal(mapping{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m) //nolint:errcheck
	for _, k := range []string{"id", "pool", "namespace", "image", "snap", "device", "cookie", "pid", "target", "size", "read_only", "connected", "backend_id"} {
		if _, ok := m[k]; !ok {
			t.Errorf("list --format json has no %q field: %s", k, b)
		}
	}
	for _, tc := range []struct {
		id                    string
		pool, ns, image, snap string
	}{
		{"rbd-nbd-graph:rbd:p/img", "p", "", "img", ""},
		{"rbd-nbd-graph:rbd:p/ns/img@s1", "p", "ns", "img", "s1"},
		{"rbd-nbd-graph:mem:1G", "", "", "", ""},
		{"rbd-nbd-graph:file:/x/y", "", "", "", ""},
		{nbdattach.LayerID("h", "pool", graph.ImageRef{Image: "lay", Snapshot: "snap"}), "pool", "", "lay", "snap"},
		{"other-tool", "", "", "", ""},
	} {
		id, ours := nbdattach.ParseBackendID(tc.id)
		p, ns, img, snap := rbdFields(id, ours)
		if got := []string{p, ns, img, snap}; !slices.Equal(got, []string{tc.pool, tc.ns, tc.image, tc.snap}) {
			t.Errorf("%s: pool, namespace, image, snap = %q", tc.id, got)
		}
	}
}
