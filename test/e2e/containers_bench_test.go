//go:build vmtest

package e2e

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// BenchmarkWholeContainers times what users feel, on three storage
// setups in the same VM boot and Ceph cluster, one dockerd each:
//
//	ours      `rbd-nbd-graph serve` (RBD layers attached through our NBD)
//	overlay2  dockerd's overlay2 on ext4 on a loop device (a sparse file)
//	krbd      the seed's way: the same layer store and plugin front end
//	          (test/krbdplugin) mapping each layer with `rbd device map`
//	          (krbd) on Get and unmapping it on the last Put
//	ours-nodelay  (only when E2E_CONTAINERS_SETUPS names it) ours with
//	          rbd.unmountdelay=0: each last Put unmounts at once, as before
//	          the delay, for a same-boot comparison of it
//
// and three workloads on each: `docker run --rm busybox true` (the image
// imported and one run done before timing), a 10-step `docker build`
// (classic builder, --no-cache, a unique value in every step) and
// `docker import` of a tarball of incompressible files (~100 MiB, made
// once, the same for every setup). Each round runs every setup, the order
// rotated from round to round. For the plugin setups it reads the
// plugin's debug log around each workload: the time of each request
// dockerd made (Get, ApplyDiff...) and of each step inside the layer
// store (clone, attach, mount, unmount, detach...), to name the largest
// cost.
//
// It is opt-in (build tag vmtest, and only -test.bench runs it):
// bench/scripts/containers-vm.sh runs it in the VM with
// -test.benchtime 1x. Results: $VM_OUT/containers.jsonl (one line per
// round, setup and workload) and $VM_OUT/containers.md (the tables).
//
// Environment: E2E_CONTAINERS_ROUNDS (3), E2E_CONTAINERS_SETUPS ("ours
// overlay2 krbd"), E2E_CONTAINERS_IMPORT_MIB (100), E2E_KRBD_PLUGIN_BIN
// (go build ./test/krbdplugin; the krbd setup needs it).
func BenchmarkWholeContainers(b *testing.B) {
	rounds := envInt(b, "E2E_CONTAINERS_ROUNDS", 3)
	importMiB := envInt(b, "E2E_CONTAINERS_IMPORT_MIB", 100)
	names := strings.Fields(os.Getenv("E2E_CONTAINERS_SETUPS"))
	if len(names) == 0 {
		names = []string{"ours", "overlay2", "krbd"}
	}
	// The classic builder: it drives the graph driver (BuildKit in
	// dockerd 20.10 does not use graph driver plugins the same way).
	os.Setenv("DOCKER_BUILDKIT", "0")
	testkit.Must(b, time.Minute, "modprobe", "rbd")

	var setups []*benchSetup
	for _, n := range names {
		setups = append(setups, newBenchSetup(b, n))
	}
	work := workDir(b)
	tarball := importTarball(b, work, importMiB)
	ctxDir := filepath.Join(work, "build")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		b.Fatal(err)
	}

	var recs []benchRecord
	out := os.Getenv("VM_OUT")
	var jsonl *os.File
	if out != "" {
		f, err := os.Create(filepath.Join(out, "containers.jsonl"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		jsonl = f
	}
	b.ResetTimer()
	for r := 1; r <= rounds; r++ {
		for k := range setups {
			s := setups[(k+r-1)%len(setups)]
			for _, w := range containerWorkloads {
				tag := fmt.Sprintf("r%d-%s", r, s.name)
				writeDockerfile(b, ctxDir, tag)
				rec := s.measure(w, func() error { return w.run(s.env, tag, tarball, ctxDir) })
				rec.Round = r
				recs = append(recs, rec)
				b.Logf("round %d %-8s %-6s %7.2f s %s", r, s.name, w.name, rec.Seconds, rec.Error)
				if jsonl != nil {
					line, _ := json.Marshal(rec)
					jsonl.Write(append(line, '\n'))
				}
			}
			// Untimed: drop what the round made, so the cluster (RAM)
			// and the loop file do not fill.
			s.env.docker(10*time.Minute, "rmi", "ctrbench-build:r"+strconv.Itoa(r), "ctrbench-import:r"+strconv.Itoa(r))
		}
	}
	b.StopTimer()
	report := containersReport(recs, names, rounds, importMiB)
	b.Log("\n" + report)
	if out != "" {
		if err := os.WriteFile(filepath.Join(out, "containers.md"), []byte(report), 0o644); err != nil {
			b.Error(err)
		}
	}
	for _, w := range containerWorkloads {
		for _, n := range names {
			if m, ok := median(secondsOf(recs, n, w.name)); ok {
				b.ReportMetric(m, w.name+"-"+n+"-s")
			}
		}
	}
}

// containerWorkload is one timed docker command (tag: unique per round
// and setup; the build's Dockerfile is written before the clock starts).
type containerWorkload struct {
	name string
	run  func(e *dockerEnv, tag, tarball, ctxDir string) error
}

var containerWorkloads = []containerWorkload{
	{"run", func(e *dockerEnv, _, _, _ string) error {
		return dockerErr(e.docker(5*time.Minute, "run", "--rm", "busybox:e2e", "true"))
	}},
	{"build", func(e *dockerEnv, tag, _, ctxDir string) error {
		round := strings.SplitN(tag, "-", 2)[0]
		return dockerErr(e.docker(30*time.Minute, "build", "--no-cache", "--network", "none", "-q",
			"-t", "ctrbench-build:"+round, "-f", filepath.Join(ctxDir, "Dockerfile."+tag), ctxDir))
	}},
	{"import", func(e *dockerEnv, tag, tarball, _ string) error {
		round := strings.SplitN(tag, "-", 2)[0]
		return dockerErr(e.docker(30*time.Minute, "import", tarball, "ctrbench-import:"+round))
	}},
}

func dockerErr(out string, err error) error {
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(tail([]byte(out), 400))))
	}
	return nil
}

// writeDockerfile: FROM the imported busybox, 10 RUN steps each writing
// a small file holding tag (so no step can come from a cache).
func writeDockerfile(tb testing.TB, ctxDir, tag string) {
	var sb strings.Builder
	sb.WriteString("FROM busybox:e2e\n")
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&sb, "RUN echo %s-step%d > /step%d && echo %d >> /steps\n", tag, i, i, i)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile."+tag), []byte(sb.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// importTarball writes a tar of 4 MiB incompressible files, mib MiB in
// all, and returns its path.
func importTarball(tb testing.TB, dir string, mib int) string {
	p := filepath.Join(dir, "import.tar")
	f, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	now := time.Unix(1700000000, 0)
	tw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now})
	for i := 0; i*4 < mib; i++ {
		data := testkit.RandomBytes(4<<20, uint64(1000+i))
		h := &tar.Header{Name: fmt.Sprintf("data/f%03d", i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), ModTime: now}
		if err := tw.WriteHeader(h); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return p
}

// benchSetup is one storage setup with its dockerd, busybox imported and
// run once.
type benchSetup struct {
	name string
	env  *dockerEnv
	log  string // the plugin's log ("" for overlay2)
	tb   testing.TB
}

func newBenchSetup(b *testing.B, name string) *benchSetup {
	s := &benchSetup{name: name, tb: b}
	switch name {
	case "ours":
		s.env = newDockerEnv(b, "ctrbench-ours")
		s.env.startPlugin()
	case "krbd":
		bin := os.Getenv("E2E_KRBD_PLUGIN_BIN")
		testkit.Require(b, bin != "", "the krbd setup needs E2E_KRBD_PLUGIN_BIN (go build -tags pacific ./test/krbdplugin)")
		s.env = newDockerEnv(b, "ctrbench-krbd")
		s.env.startPluginCmd(bin, append([]string{"--name", s.env.name}, s.env.pluginOptions()...)...)
	case "ours-nodelay":
		s.env = newDockerEnv(b, "ctrbench-ours0")
		s.env.startPlugin("-o", "rbd.unmountdelay=0")
	case "overlay2":
		s.env = newDockerEnv(b, "ctrbench-overlay2")
		s.env.storageDriver = "overlay2"
		s.env.dataRoot = overlayDataRoot(b, s.env)
	default:
		b.Fatalf("E2E_CONTAINERS_SETUPS: unknown setup %q (ours, overlay2, krbd, ours-nodelay)", name)
	}
	if name != "overlay2" {
		s.log = filepath.Join(s.env.dir, "plugin.log")
	}
	s.env.startDockerd()
	s.env.importBusybox("busybox:e2e")
	s.env.mustDocker("run", "--rm", "busybox:e2e", "true") // warm-up
	return s
}

// overlayDataRoot mounts an ext4 file system on a loop device over a
// sparse file in e's folder and returns a data root on it.
func overlayDataRoot(b *testing.B, e *dockerEnv) string {
	img, mnt := filepath.Join(e.dir, "overlay2-ext4.img"), filepath.Join(e.dir, "overlay2-mnt")
	testkit.Must(b, time.Minute, "modprobe", "loop") // a module in Debian's kernel
	testkit.Must(b, time.Minute, "truncate", "-s", "4G", img)
	testkit.Must(b, 5*time.Minute, "mkfs.ext4", "-F", "-q", img)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		b.Fatal(err)
	}
	dev := strings.TrimSpace(testkit.Must(b, time.Minute, "losetup", "-f", "--show", img))
	testkit.Must(b, time.Minute, "mount", "-t", "ext4", dev, mnt)
	b.Cleanup(func() {
		e.stopDockerd() // before the unmount (idempotent)
		testkit.Run(b, time.Minute, "umount", mnt)
		testkit.Run(b, time.Minute, "losetup", "-d", dev)
	})
	b.Logf("overlay2 data root on ext4 on %s", dev)
	return filepath.Join(mnt, "docker")
}

// benchRecord is one timed workload, with the plugin's step timings.
type benchRecord struct {
	Round    int                `json:"round"`
	Setup    string             `json:"setup"`
	Workload string             `json:"workload"`
	Seconds  float64            `json:"seconds"`
	Error    string             `json:"error,omitempty"`
	Requests map[string]opTotal `json:"requests,omitempty"` // by plugin method
	Steps    map[string]opTotal `json:"steps,omitempty"`    // op.step inside the layer store
}

type opTotal struct {
	N       int     `json:"n"`
	Seconds float64 `json:"seconds"`
}

func (s *benchSetup) measure(w containerWorkload, run func() error) benchRecord {
	rec := benchRecord{Setup: s.name, Workload: w.name}
	var off int64
	if s.log != "" {
		if st, err := os.Stat(s.log); err == nil {
			off = st.Size()
		}
	}
	start := time.Now()
	err := run()
	rec.Seconds = time.Since(start).Seconds()
	if err != nil {
		rec.Error = err.Error()
		s.tb.Errorf("%s %s: %v", s.name, w.name, err)
	}
	if s.log != "" {
		rec.Requests, rec.Steps = pluginTimings(s.tb, s.log, off)
	}
	return rec
}

// pluginTimings reads the plugin's debug log from offset off: the time
// of each request by method ("request" lines) and of each step of the
// layer store ("layer created", "layer mounted", "layer released",
// "layer removed", "layer images deleted" lines, whose other durations
// are steps).
func pluginTimings(tb testing.TB, path string, off int64) (map[string]opTotal, map[string]opTotal) {
	f, err := os.Open(path)
	if err != nil {
		tb.Error(err)
		return nil, nil
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		tb.Error(err)
		return nil, nil
	}
	ops := map[string]string{"layer created": "create", "layer mounted": "mount", "layer released": "unmount", "layer removed": "remove",
		// Remove's reply, and the deletion after it (graph/reap.go: off
		// dockerd's path, overlapping whatever comes next).
		"layer removed; deleting its images in the background": "remove", "layer images deleted": "delete"}
	reqs, steps := map[string]opTotal{}, map[string]opTotal{}
	add := func(m map[string]opTotal, k string, d time.Duration) {
		t := m[k]
		t.N++
		t.Seconds += d.Seconds()
		m[k] = t
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		kv := logFields(sc.Text())
		if kv["msg"] == "request" {
			if d, err := time.ParseDuration(kv["took"]); err == nil {
				add(reqs, strings.TrimPrefix(kv["method"], "/GraphDriver."), d)
			}
			continue
		}
		op, ok := ops[kv["msg"]]
		if !ok {
			continue
		}
		for k, v := range kv {
			if k == "time" || k == "level" || k == "msg" || k == "layer" || k == "parent" || k == "image" || k == "device" || k == "depth" || k == "read_only" {
				continue
			}
			if d, err := time.ParseDuration(v); err == nil {
				add(steps, op+"."+k, d)
			}
		}
	}
	return reqs, steps
}

// logFields splits a log/slog text line into its key=value pairs
// (values may be quoted).
func logFields(line string) map[string]string {
	kv := map[string]string{}
	for line != "" {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			break
		}
		key, rest := line[:eq], line[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			if q, err := strconv.QuotedPrefix(rest); err == nil {
				val, _ = strconv.Unquote(q)
				rest = rest[len(q):]
			} else {
				val, rest = rest, ""
			}
		} else if sp := strings.IndexByte(rest, ' '); sp >= 0 {
			val, rest = rest[:sp], rest[sp:]
		} else {
			val, rest = rest, ""
		}
		kv[key] = val
		line = rest
	}
	return kv
}

func envInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive whole number", name, v)
	}
	return n
}

func secondsOf(recs []benchRecord, setup, workload string) []float64 {
	var xs []float64
	for _, r := range recs {
		if r.Setup == setup && r.Workload == workload && r.Error == "" {
			xs = append(xs, r.Seconds)
		}
	}
	return xs
}

func median(xs []float64) (float64, bool) {
	if len(xs) == 0 {
		return 0, false
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

// containersReport is the markdown of the run: per-round seconds,
// medians, ratios, and for each plugin setup and workload the median
// time per request method and per layer-store step.
func containersReport(recs []benchRecord, setups []string, rounds, importMiB int) string {
	var sb strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	p("# Whole containers: ours vs overlay2 vs krbd (same VM boot, %d rounds, order rotated)\n\n", rounds)
	p("Seconds per operation (wall time of the docker command). Ratio = ours' time / the other's time: > 1 means ours is slower.\n")
	p("Workloads: run = `docker run --rm busybox true`; build = 10-step `docker build --no-cache` (classic builder); import = `docker import` of a %d MiB tarball of incompressible files.\n\n", importMiB)
	p("| workload | round |")
	for _, s := range setups {
		p(" %s |", s)
	}
	p("\n| --- | ---: |%s\n", strings.Repeat(" ---: |", len(setups)))
	for _, w := range containerWorkloads {
		for r := 1; r <= rounds; r++ {
			p("| %s | %d |", w.name, r)
			for _, s := range setups {
				cell := "-"
				for _, rec := range recs {
					if rec.Round == r && rec.Setup == s && rec.Workload == w.name {
						if rec.Error != "" {
							cell = "failed"
						} else {
							cell = fmt.Sprintf("%.2f", rec.Seconds)
						}
					}
				}
				p(" %s |", cell)
			}
			p("\n")
		}
	}
	p("\n| workload | ours (median) | overlay2 (median) | krbd (median) | ours/overlay2 | ours/krbd |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	cell := func(x float64, ok bool) string {
		if !ok {
			return "-"
		}
		return fmt.Sprintf("%.2f", x)
	}
	ratio := func(a float64, okA bool, b float64, okB bool) string {
		if !okA || !okB || b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	for _, w := range containerWorkloads {
		o, okO := median(secondsOf(recs, "ours", w.name))
		v, okV := median(secondsOf(recs, "overlay2", w.name))
		k, okK := median(secondsOf(recs, "krbd", w.name))
		p("| %s | %s | %s | %s | %s | %s |\n", w.name, cell(o, okO), cell(v, okV), cell(k, okK), ratio(o, okO, v, okV), ratio(o, okO, k, okK))
	}
	if slices.Contains(setups, "ours-nodelay") {
		p("\n| workload | ours (median) | ours-nodelay (median) | ours/ours-nodelay | ours-nodelay/overlay2 |\n")
		p("| --- | ---: | ---: | ---: | ---: |\n")
		for _, w := range containerWorkloads {
			o, okO := median(secondsOf(recs, "ours", w.name))
			z, okZ := median(secondsOf(recs, "ours-nodelay", w.name))
			v, okV := median(secondsOf(recs, "overlay2", w.name))
			p("| %s | %s | %s | %s | %s |\n", w.name, cell(o, okO), cell(z, okZ), ratio(o, okO, z, okZ), ratio(z, okZ, v, okV))
		}
	}
	for _, s := range []string{"ours", "ours-nodelay", "krbd"} {
		if !slices.Contains(setups, s) {
			continue
		}
		p("\n## Driver step timings: %s (median over rounds of each round's total, seconds)\n", s)
		for _, w := range containerWorkloads {
			var mine []benchRecord
			for _, r := range recs {
				if r.Setup == s && r.Workload == w.name && r.Error == "" {
					mine = append(mine, r)
				}
			}
			if len(mine) == 0 {
				continue
			}
			wall, _ := median(secondsOf(recs, s, w.name))
			reqs := medianTotals(mine, func(r benchRecord) map[string]opTotal { return r.Requests })
			steps := medianTotals(mine, func(r benchRecord) map[string]opTotal { return r.Steps })
			var inDriver float64
			for _, t := range reqs {
				inDriver += t.Seconds
			}
			p("\n### %s: %.2f s wall, %.2f s in plugin requests (%.0f %%)\n\n", w.name, wall, inDriver, 100*inDriver/wall)
			p("- requests: %s\n", formatTotals(reqs))
			p("- layer-store steps: %s\n", formatTotals(steps))
			if k, ok := largest(reqs); ok {
				p("- largest request: %s (%.2f s, %.0f %% of the wall time)", k, reqs[k].Seconds, 100*reqs[k].Seconds/wall)
				if sk, ok := largest(steps); ok {
					p("; largest step: %s (%.2f s, %d calls)", sk, steps[sk].Seconds, steps[sk].N)
				}
				p("\n")
			}
		}
	}
	return sb.String()
}

// medianTotals is, per key, the median over records of its total (and
// of its count).
func medianTotals(recs []benchRecord, get func(benchRecord) map[string]opTotal) map[string]opTotal {
	keys := map[string]bool{}
	for _, r := range recs {
		for k := range get(r) {
			keys[k] = true
		}
	}
	out := map[string]opTotal{}
	for k := range keys {
		var secs, ns []float64
		for _, r := range recs {
			t := get(r)[k]
			secs = append(secs, t.Seconds)
			ns = append(ns, float64(t.N))
		}
		s, _ := median(secs)
		n, _ := median(ns)
		out[k] = opTotal{N: int(n + 0.5), Seconds: s}
	}
	return out
}

func largest(m map[string]opTotal) (string, bool) {
	best, ok := "", false
	for k, t := range m {
		if !ok || t.Seconds > m[best].Seconds || (t.Seconds == m[best].Seconds && k < best) {
			best, ok = k, true
		}
	}
	return best, ok
}

// formatTotals lists the totals, largest first: "Get 12x 3.40 s, ...".
func formatTotals(m map[string]opTotal) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]].Seconds != m[keys[j]].Seconds {
			return m[keys[i]].Seconds > m[keys[j]].Seconds
		}
		return keys[i] < keys[j]
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %dx %.2f s", k, m[k].N, m[k].Seconds))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
