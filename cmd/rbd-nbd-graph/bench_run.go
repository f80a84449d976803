package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/bench"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// runBench: `bench` and `bench sweep`.
func runBench(ctx context.Context, env *environment, args []string) error {
	sweep := len(args) > 0 && args[0] == "sweep"
	if sweep {
		args = args[1:]
	}
	f, err := parseBenchFlags(env, args, sweep)
	if err != nil {
		return err
	}
	// Check the targets (a device target on a kernel without NBD, raw
	// with connections) before the backend is even opened.
	log := benchLogger(env)
	for _, name := range f.targets {
		t := makeBenchTarget(name, nil, f, log)
		for _, c := range f.connections {
			if err := t.Check(ctx, bench.Setup{Connections: c, QueueDepth: f.queueDepth}); err != nil {
				if errors.Is(err, bench.ErrInvalidOption) {
					return fmt.Errorf("%w: %w", errUsage, err)
				}
				return err
			}
		}
	}
	readOnly := !f.opts.Pattern.Writes() && !f.opts.Verify
	f.ceph.log = log
	backend, closeBackend, err := openTarget(ctx, f.backend, f.ceph, readOnly)
	if err != nil {
		return fmt.Errorf("--backend %s: %w", f.backend, err)
	}
	defer func() {
		if cerr := closeBackend(); cerr != nil {
			env.log.Warn("closing the backend", "backend", f.backend, "err", cerr)
		}
	}()
	// Against the backend's size, still before any IO.
	for _, bsz := range f.blockSizes {
		o := f.opts
		o.BlockSize, o.IODepth = bsz, f.iodepths[0]
		if o.Size == 0 {
			o.Size = backend.Size() - o.Offset
		}
		if err := o.Validate(backend.Size()); err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
	}
	if sweep {
		return runSweep(ctx, env, f, makeBenchTarget(f.targets[0], backend, f, log))
	}
	return runBenchOnce(ctx, env, f, backend, log)
}

// benchLogger keeps the server's and device's routine logs out of the
// figures unless --log-level, --log-format or RBD_NBD_GRAPH_LOG ask for them.
func benchLogger(env *environment) *slog.Logger {
	if env.logSet {
		return env.log
	}
	return slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func makeBenchTarget(name string, b nbd.Backend, f *benchFlags, log *slog.Logger) bench.Target {
	switch name {
	case "export":
		return bench.Export{Backend: b, Spec: f.backend, Logger: log}
	case "device":
		return bench.Device{Backend: b, Spec: f.backend, Logger: log, IOSize: f.blockSizes[0],
			ReadOnly: !f.opts.Pattern.Writes() && !f.opts.Verify}
	}
	return bench.Raw{Backend: b, Spec: f.backend}
}

func runBenchOnce(ctx context.Context, env *environment, f *benchFlags, b nbd.Backend, log *slog.Logger) error {
	opts := f.opts
	opts.BlockSize, opts.IODepth = f.blockSizes[0], f.iodepths[0]
	conns := f.connections[0]
	qd := f.queueDepth
	if qd == 0 {
		qd = (opts.IODepth + conns - 1) / conns
	}
	live := bench.NewLiveLine(env.stdout, !f.jsonOut)
	report := &bench.Report{Schema: bench.Schema}
	var runErr error
	for _, name := range f.targets {
		t := makeBenchTarget(name, b, f, log)
		sess, err := t.Open(ctx, bench.Setup{Connections: conns, QueueDepth: qd})
		if err != nil {
			runErr = fmt.Errorf("%s target: %w", name, err)
			break
		}
		opts.Progress = live.Progress(name)
		res, err := bench.Run(ctx, sess, opts)
		live.Clear()
		if cerr := sess.Close(); cerr != nil {
			env.log.Warn("closing the target", "target", name, "err", cerr)
		}
		if res != nil {
			report.Results = append(report.Results, res)
			if !f.jsonOut {
				res.WriteTable(env.stdout)
				fmt.Fprintln(env.stdout)
			}
		}
		if err != nil {
			runErr = fmt.Errorf("%s target: %w", name, err)
			break
		}
	}
	if f.jsonOut {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return err
		}
	} else if len(report.Results) > 1 {
		bench.WriteComparison(env.stdout, report.Results)
	}
	return runErr
}

func runSweep(ctx context.Context, env *environment, f *benchFlags, t bench.Target) error {
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return fmt.Errorf("--out %s: %w", f.out, err)
	}
	live := bench.NewLiveLine(env.stdout, !f.jsonOut)
	so := bench.SweepOptions{
		Base: f.opts, IODepths: f.iodepths, Connections: f.connections, BlockSizes: f.blockSizes,
		QueueDepth: f.queueDepth, P99Budget: f.p99Budget,
	}
	so.OnPoint = func(i, n int, p bench.SweepPoint) func(bench.Progress) {
		return live.Progress(fmt.Sprintf("point %d/%d: bs %s, iodepth %d, %d connection(s)", i+1, n,
			bench.FormatBytes(int64(p.BlockSize)), p.IODepth, p.Connections))
	}
	rep, err := bench.Sweep(ctx, t, so)
	live.Clear()
	if rep == nil {
		return err
	}
	rep.Backend = f.backend
	// Partial results are saved, but no chart or advice.
	jsonPath, svgPath, serr := rep.Save(f.out, err == nil)
	if serr != nil {
		return serr
	}
	if err != nil {
		return fmt.Errorf("%w (the points measured so far are in %s)", err, jsonPath)
	}
	if f.jsonOut {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	rep.WriteSweepTable(env.stdout)
	fmt.Fprintln(env.stdout)
	rep.WriteRecommendations(env.stdout)
	fmt.Fprintf(env.stdout, "\nchart: %s\nresults: %s\n", svgPath, jsonPath)
	return nil
}
