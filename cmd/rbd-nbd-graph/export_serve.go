package main

import (
	"context"
	"fmt"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// runExport serves TARGET until SIGINT or SIGTERM, then drains the
// requests in flight for at most --shutdown-timeout.
func runExport(ctx context.Context, env *environment, args []string) (err error) {
	f, target, err := parseExportFlags(env, args)
	if err != nil {
		return err
	}
	// Check the address before opening the target, which may be slow.
	if f.listen != "" {
		exposure, err := checkListenAddr(f.listen, f.allowRemote)
		if err != nil {
			return err
		}
		if exposure != "" {
			env.log.Warn("export: NBD has no authentication: anyone who can reach this address can read and write the export",
				"listen", f.listen, "exposure", exposure)
		}
	}
	tlsConf, err := loadTLS(f)
	if err != nil {
		return err
	}
	reg, stopMetrics, err := startMetrics(ctx, env, f.metrics)
	if err != nil {
		return err
	}
	defer stopMetrics()
	f.ceph.log = env.log
	b, closeTarget, err := openTarget(ctx, target, f.ceph, f.readOnly)
	if err != nil {
		return err
	}
	// Closing an rbd: target waits for the cluster (releasing the
	// exclusive lock is an OSD request): give it what is left of the
	// shutdown deadline, then leave it to the process's exit.
	var deadline time.Time // set when the shutdown begins
	abandoned := false     // requests still in flight: do not close
	defer func() {
		if abandoned {
			return
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(f.shutdownTimeout)
		}
		if cerr := boundedWait(closeTarget, deadline); cerr != nil && err == nil {
			err = fmt.Errorf("closing %s: %w", target, cerr)
		}
	}()
	bs := uint32(f.blockSize)
	if bs == 0 {
		bs = 512
		if b.Size()%512 != 0 {
			bs = 1
		}
	}
	desc := f.description
	if desc == "" {
		desc = target
	}
	topts := nbd.TransmissionOptions{ReadOnly: f.readOnly, QueueDepth: f.queueDepth, BlockSize: bs, Logger: env.log}
	// The export's label: its name, or TARGET for the unnamed default.
	label := f.name
	if label == "" {
		label = target
	}
	if obs := observeTarget(reg, label, b); obs != nil {
		topts.Observer = obs
	}
	srv, err := nbd.NewServer([]nbd.Export{{
		Name:        f.name,
		Description: desc,
		Backend:     b,
		Options:     topts,
		MultiConn:   f.multiConn,
	}}, nbd.ServerOptions{Logger: env.log, MaxConnections: f.maxConns, MaxInFlightBytes: f.maxInLimit,
		TLS: tlsConf, TLSRequired: f.tlsMode == "require"})
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	ln, uri, err := listen(f)
	if err != nil {
		return err
	}
	env.log.Info("export: serving", "target", target, "size", b.Size(), "uri", uri, "read_only", f.readOnly, "tls", f.tlsMode)
	// The URI on stdout tells scripts (and tests) the export is ready.
	fmt.Fprintln(env.stdout, uri)
	defer notifySystemd(ctx, env.log, "serving "+uri)()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Serve stops reading requests and waits for those in flight, which
	// wait for the cluster: a paused or unreachable cluster (with
	// --osd-timeout 0) would keep them, and this process, for ever.
	deadline = time.Now().Add(f.shutdownTimeout)
	env.log.Info("export: stopping; waiting for requests in flight", "deadline", f.shutdownTimeout)
	timer := time.NewTimer(f.shutdownTimeout)
	defer timer.Stop()
	select {
	case err := <-served:
		if err != nil {
			return err
		}
		env.log.Info("export: stopped; requests in flight were completed")
		return nil
	case <-timer.C:
		// Not calling into librbd again (its close waits for the same
		// requests): the process exits and the cluster sees the client
		// go; its lock is broken by the next opener as after a crash.
		abandoned = true
		env.log.Error("export: requests in flight did not complete by the shutdown deadline; exiting without them (their clients get no reply; writes not acknowledged may or may not have reached the cluster)",
			"deadline", f.shutdownTimeout, "target", target)
		return fmt.Errorf("%w (--shutdown-timeout %v): the cluster did not complete the requests in flight; check 'ceph -s' (paused or full OSDs?)", errShutdownDeadline, f.shutdownTimeout)
	}
}

// boundedWait runs f and waits for it until deadline; past it, f is left
// running (it ends with the process) and an errShutdownDeadline returned.
func boundedWait(f func() error, deadline time.Time) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(max(time.Until(deadline), 0))
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return fmt.Errorf("%w: still waiting for the cluster; exiting without it", errShutdownDeadline)
	}
}
