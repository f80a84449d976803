package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/bench"
	"github.com/spf13/pflag"
)

// benchFlags is the command line of `bench` and `bench sweep`. The
// depth, connection and block size flags take comma lists in a sweep.
type benchFlags struct {
	ceph        cephFlags
	targets     []string
	backend     string
	opts        bench.Options
	iodepths    []int
	connections []int
	blockSizes  []int
	queueDepth  int
	jsonOut     bool
	// sweep only
	out       string
	p99Budget time.Duration
}

// Sweep defaults: depths from 1 to 64 show where a line flattens out;
// three connection counts show whether more sockets help at all.
var (
	sweepDepths      = []int{1, 2, 4, 8, 16, 32, 64}
	sweepConnections = []int{1, 2, 4}
)

const benchAbout = `Also: rbd-nbd-graph bench sweep [flags]

Measures the IO path to a backend, as fio would, through a target:
  raw     the backend called directly (for rbd: the librbd ceiling, no NBD)
  export  our NBD server in this process, through a unix socket, driven
          by our NBD client (the protocol and IO-loop cost)
  device  a kernel /dev/nbdN attached by this command, direct IO
          (the whole path; needs root and a kernel with NBD)
--target takes a comma list (raw,export) to run the targets in turn.

sweep runs every --iodepth x --connections x --bs (comma lists), writes
an SVG chart and a JSON file into --out, and recommends the driver
options with the best IOPS within --p99-budget.

Backends: mem:SIZE, file:PATH, rbd:POOL/IMAGE (or POOL/IMAGE).
Sizes take k, m, g, t suffixes (powers of 1024; 1.5g); durations 10s or 10.
See README.md, "bench".`

func parseBenchFlags(env *environment, args []string, sweep bool) (*benchFlags, error) {
	f := &benchFlags{}
	name := "bench"
	if sweep {
		name = "bench sweep"
	}
	fs := newFlagSet(env, name, name+" [flags]", benchAbout)
	f.ceph.register(fs)
	target := fs.String("target", "raw", "raw, export or device (a comma list runs each in turn)")
	fs.StringVar(&f.backend, "backend", "mem:1G", "what to measure: mem:SIZE, file:PATH or rbd:POOL/IMAGE")
	rw := fs.String("rw", "randread", "read, write, randread, randwrite, mixed (randrw) or rw (sequential mixed)")
	rwmix := fs.Int("rwmix", 50, "mixed patterns: percentage of reads")
	bs := fs.String("bs", "4k", "block size: bytes per IO, a multiple of 512")
	iodepth := fs.String("iodepth", "16", "IOs kept in flight in total, spread over the connections")
	conns := fs.String("connections", "1", "NBD connections (export: client sockets; device: kernel sockets); raw takes 1")
	fs.IntVar(&f.queueDepth, "queue-depth", 0, "requests each connection serves at once (server and kernel side); 0: iodepth/connections")
	durationVar(fs, &f.opts.Runtime, "runtime", 10*time.Second, "how long to measure, after the ramp (0 with --total: until the total is done)")
	total := fs.String("total", "0", "stop after this many bytes (fio's io_size); 0: no limit")
	size := fs.String("size", "0", "bytes of the backend to spread IO over, from --offset (0: to the end)")
	offset := fs.String("offset", "0", "where the IO region starts, a multiple of --bs")
	durationVar(fs, &f.opts.Ramp, "ramp", 0, "run this long before measuring (not counted)")
	fs.Uint64Var(&f.opts.Seed, "seed", 1, "seed of the random offsets: the same seed gives the same offsets")
	fs.BoolVar(&f.opts.Verify, "verify", false, "write a pattern, check every read of it, read back all written blocks at the end")
	fs.BoolVar(&f.jsonOut, "json", false, "print JSON for machines instead of tables (schema: README.md)")
	if sweep {
		fs.StringVar(&f.out, "out", ".", "folder for the chart (SVG) and the results (JSON)")
		durationVar(fs, &f.p99Budget, "p99-budget", 10*time.Millisecond, "the recommendation's p99 latency limit")
		f.opts.Runtime = 3 * time.Second
		fs.Lookup("runtime").DefValue = "3s"
		f.opts.Ramp = time.Second
		fs.Lookup("ramp").DefValue = "1s"
		fs.Lookup("iodepth").DefValue = joinInts(sweepDepths)
		fs.Lookup("connections").DefValue = joinInts(sweepConnections) + " (raw: 1)"
	}
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() != 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q: everything is a flag (see -h)", errUsage, fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(fl *pflag.Flag) { set[fl.Name] = true })

	usage := func(err error) error { return fmt.Errorf("%w: %w", errUsage, err) }
	var err error
	for _, t := range strings.Split(*target, ",") {
		if err := bench.CheckTargetName(t); err != nil {
			return nil, usage(err)
		}
		f.targets = append(f.targets, t)
	}
	if sweep && len(f.targets) != 1 {
		return nil, usage(&bench.OptionError{Option: "target", Value: *target, Reason: "a sweep measures one target; run one sweep per target"})
	}
	if f.opts.Pattern, err = bench.ParsePattern(*rw); err != nil {
		return nil, usage(err)
	}
	f.opts.ReadPercent = *rwmix
	listOf := func(name, val string, parse func(string) (int, error)) ([]int, error) {
		l, err := bench.ParseList(val, parse)
		if err != nil {
			return nil, &bench.OptionError{Option: name, Value: val, Reason: err.Error()}
		}
		if len(l) > 1 && !sweep {
			return nil, &bench.OptionError{Option: name, Value: val, Reason: "a list is for 'bench sweep'; give one value"}
		}
		return l, nil
	}
	atoi := func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, fmt.Errorf("%q is not a whole number", s)
		}
		return n, nil
	}
	sizeInt := func(s string) (int, error) {
		n, err := bench.ParseSize(s)
		if err != nil || n > 1<<40 {
			return 0, fmt.Errorf("%q: want a size such as 4k or 1m", s)
		}
		return int(n), nil
	}
	if f.blockSizes, err = listOf("bs", *bs, sizeInt); err != nil {
		return nil, usage(err)
	}
	if sweep && !set["iodepth"] {
		f.iodepths = sweepDepths
	} else if f.iodepths, err = listOf("iodepth", *iodepth, atoi); err != nil {
		return nil, usage(err)
	}
	switch {
	case sweep && !set["connections"] && f.targets[0] == "raw":
		f.connections = []int{1}
	case sweep && !set["connections"]:
		f.connections = sweepConnections
	default:
		if f.connections, err = listOf("connections", *conns, atoi); err != nil {
			return nil, usage(err)
		}
	}
	for name, v := range map[string]struct {
		s   string
		dst *int64
	}{"total": {*total, &f.opts.TotalBytes}, "size": {*size, &f.opts.Size}, "offset": {*offset, &f.opts.Offset}} {
		n, err := bench.ParseSize(v.s)
		if err != nil {
			return nil, usage(&bench.OptionError{Option: name, Value: v.s, Reason: err.Error()})
		}
		*v.dst = n
	}
	if set["total"] && !set["runtime"] {
		f.opts.Runtime = 0 // --total alone: run until it is done
	}
	// Every value checked now, before the backend is opened.
	for _, bsz := range f.blockSizes {
		for _, qd := range f.iodepths {
			o := f.opts
			o.BlockSize, o.IODepth = bsz, qd
			if err := o.Check(); err != nil {
				return nil, usage(err)
			}
		}
	}
	if f.queueDepth < 0 {
		return nil, usage(&bench.OptionError{Option: "queue-depth", Value: strconv.Itoa(f.queueDepth), Reason: "must not be negative"})
	}
	if sweep && f.p99Budget <= 0 {
		return nil, usage(&bench.OptionError{Option: "p99-budget", Value: f.p99Budget.String(), Reason: "must be positive, e.g. 5ms"})
	}
	return f, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
