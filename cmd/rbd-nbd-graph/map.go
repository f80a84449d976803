package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
	"github.com/spf13/pflag"
)

// mapFlags are map's (and attach's) command line.
type mapFlags struct {
	ceph            cephFlags
	readOnly        bool
	connections     int
	queueDepth      int
	blockSize       uint
	maxSectorsKB    int
	ioTimeout       time.Duration
	deadConnTimeout time.Duration
	shutdownTimeout time.Duration
	detachOnExit    bool
	force           bool
	blockSizeSet    bool
	foreground      bool
	reattach        bool
	device          string
	nbdsMax         int
	maxPart         int
	logFile         string
	readyFD         int // internal: the pipe to the parent that daemonised us
	metrics         *metricsFlags
}

const mapAbout = `Attaches TARGET to a kernel NBD device (/dev/nbdN) and serves it from a background
process (--foreground: this one); prints the device once it is ready.
TARGET: rbd:POOL[/NAMESPACE]/IMAGE[@SNAP] (or just POOL/IMAGE[@SNAP]), file:PATH, mem:SIZE.
Durations take Go's form (30s, 2m) or plain seconds (30); sizes 4k, 512M, 1.5G.`

const attachAbout = `Serves again a device still mapped to TARGET whose server died or was detached
('rbd-nbd-graph detach'): the kernel kept the device and its queued IO.
Takes map's flags; --device picks the device when several carry TARGET.`

// register defines map's (and attach's) flags on fs.
func (f *mapFlags) register(fs *pflag.FlagSet) {
	f.ceph.register(fs)
	fs.BoolVar(&f.readOnly, "read-only", false, "map read-only: the kernel refuses writes")
	fs.IntVar(&f.connections, "connections", 1, "sockets between the kernel and this process (>1: multi-connection)")
	fs.IntVar(&f.queueDepth, "queue-depth", 0, "requests served at once per connection (0: default)")
	fs.UintVar(&f.blockSize, "block-size", 4096, "logical block size of the device: 512, 1024, 2048 or 4096")
	fs.IntVar(&f.maxSectorsKB, "max-sectors-kb", 0, fmt.Sprintf("largest request the kernel sends, in KiB, 4 to 32768 (0: %d, or on attach the device's; -1: the device's)", nbd.DefaultMaxSectorsKB))
	durationVar(fs, &f.ioTimeout, "io-timeout", 0, "fail (EIO) a request the backend has not answered in this time, e.g. 30 or 30s; the device stays up (0: wait as long as the cluster needs)")
	durationVar(fs, &f.deadConnTimeout, "dead-conn-timeout", 60*time.Second,
		"after the serving process exits, dies or is detached, how long the kernel holds IO waiting for 'attach' (0: fail IO at once); rbd-nbd's --reattach-timeout")
	durationVar(fs, &f.shutdownTimeout, "shutdown-timeout", 30*time.Second,
		"on SIGTERM/SIGINT, how long to wait for requests in flight before exiting anyway")
	fs.BoolVar(&f.detachOnExit, "detach-on-exit", false,
		"on SIGTERM/SIGINT disconnect the device (default: leave it to the kernel for 'attach', as a restart or upgrade needs)")
	fs.BoolVar(&f.force, "force", false, "attach: serve the device even if that changes it between read-only and read-write")
	fs.BoolVar(&f.foreground, "foreground", false, "serve in this process until SIGINT/SIGTERM, unmap or detach (default: in a background process)")
	fs.BoolVar(&f.reattach, "reattach", false, "re-serve a device still mapped to TARGET whose serving process died (as the attach command)")
	fs.StringVar(&f.device, "device", "", "use this device (/dev/nbdN); default: any free one, or for --reattach the one mapped to TARGET")
	fs.IntVar(&f.nbdsMax, "nbds-max", 0, "nbds_max parameter if the nbd module has to be loaded (0: module default)")
	fs.IntVar(&f.maxPart, "max-part", 0, "max_part parameter if the nbd module has to be loaded (0: module default)")
	fs.StringVar(&f.logFile, "log-file", "/var/log/rbd-nbd-graph.log", "where the background process logs ('' for nowhere)")
	fs.IntVar(&f.readyFD, "ready-fd", -1, "internal: report readiness on this descriptor")
	hide(fs, "ready-fd")
	f.metrics = registerMetricsFlags(fs)
}

func parseMapFlags(name string, env *environment, args []string) (*mapFlags, string, error) {
	f := &mapFlags{}
	about := mapAbout
	if name == "attach" {
		about = attachAbout
	}
	fs := newFlagSet(env, name, name+" [flags] TARGET", about)
	f.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return nil, "", err
	}
	f.blockSizeSet = fs.Changed("block-size")
	if fs.NArg() != 1 {
		return nil, "", fmt.Errorf("%w: want exactly one TARGET, got %d arguments %q", errUsage, fs.NArg(), fs.Args())
	}
	if f.connections < 1 || f.connections > 64 {
		return nil, "", fmt.Errorf("%w: --connections %d out of range 1..64", errUsage, f.connections)
	}
	if f.device != "" {
		if _, err := nbd.ParseDevicePath(f.device); err != nil {
			return nil, "", fmt.Errorf("%w: %v", errUsage, err)
		}
	}
	return f, fs.Arg(0), nil
}

// runMap: map TARGET to a kernel NBD device and serve it.
func runMap(ctx context.Context, env *environment, args []string) error {
	return mapCommand(ctx, env, "map", args, false)
}

// runAttach: re-serve a device whose server died (map --reattach).
func runAttach(ctx context.Context, env *environment, args []string) error {
	return mapCommand(ctx, env, "attach", args, true)
}

func mapCommand(ctx context.Context, env *environment, name string, args []string, reattach bool) error {
	f, target, err := parseMapFlags(name, env, args)
	if err != nil {
		return err
	}
	f.reattach = f.reattach || reattach
	if !f.foreground {
		return daemonize(ctx, env, name, args)
	}
	return serveMapped(ctx, env, f, target)
}

// serveMapped opens the target, attaches (or reattaches) it and serves
// until the device goes away or a signal arrives.
func serveMapped(ctx context.Context, env *environment, f *mapFlags, target string) (err error) {
	logIOFlusher(env.log)
	// detachSignal ('rbd-nbd-graph detach') always hands the device
	// over, whatever --detach-on-exit says. Caught from the start: its
	// default action would kill the process before the cleanup below.
	detach := make(chan os.Signal, 1)
	signal.Notify(detach, detachSignal)
	defer signal.Stop(detach)
	var ready *os.File
	if f.readyFD >= 0 {
		ready = os.NewFile(uintptr(f.readyFD), "ready")
		defer func() {
			if ready == nil {
				return // readiness already reported
			}
			if err != nil {
				fmt.Fprintf(ready, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			}
			ready.Close()
		}()
	}
	id, err := backendID(target)
	if err != nil {
		return err
	}
	if f.reattach && strings.HasPrefix(target, "mem:") {
		// A new mem: backend is a blank disk: serving it under a live
		// filesystem would replace its data with zeros.
		return fmt.Errorf("%w: cannot reattach a mem: target: its data died with the process that served it; unmap the device and map it again", errUsage)
	}
	reg, stopMetrics, err := startMetrics(ctx, env, f.metrics)
	if err != nil {
		return err
	}
	defer stopMetrics()
	f.ceph.log = env.log // the blocklist and reopen messages of an rbd: target
	b, closeTarget, err := openTarget(ctx, target, f.ceph, f.readOnly)
	if err != nil {
		return err
	}
	obs := observeTarget(reg, target, b)
	keepOpen := false // requests still in flight in the backend: exit without closing it
	defer func() {
		if keepOpen {
			return
		}
		if cerr := closeTarget(); cerr != nil && err == nil {
			err = fmt.Errorf("closing %s: %w", target, cerr)
		}
	}()
	opts := nbd.AttachOptions{
		Index:           nbd.IndexAny,
		Connections:     f.connections,
		QueueDepth:      f.queueDepth,
		BlockSize:       uint32(f.blockSize),
		MaxSectorsKB:    f.maxSectorsKB,
		ReadOnly:        f.readOnly,
		IOTimeout:       f.ioTimeout,
		DeadConnTimeout: f.deadConnTimeout,
		BackendID:       id,
		Module:          nbd.ModuleOptions{NBDsMax: f.nbdsMax, MaxPart: f.maxPart},
		Logger:          env.log,
		ForceMode:       f.force,
	}
	if obs != nil {
		opts.Observer = obs
	}
	if f.device != "" {
		opts.Index, _ = nbd.ParseDevicePath(f.device)
	}
	// The device ends by our decision below, not by the signal context
	// (which would detach it).
	serveCtx := context.WithoutCancel(ctx)
	var dev *nbd.Device
	if f.reattach {
		index := opts.Index
		if index < 0 {
			index, err = nbdattach.FindMapped(ctx, id)
			if err != nil {
				return err
			}
		}
		if !f.blockSizeSet {
			opts.BlockSize = 0 // keep the device's
		}
		dev, err = nbd.Reattach(serveCtx, index, b, opts)
	} else {
		if opts.Index == nbd.IndexAny && !f.readOnly {
			if err := nbdattach.RefuseDoubleMap(ctx, id); err != nil {
				return err
			}
		}
		dev, err = nbd.Attach(serveCtx, b, opts)
	}
	if err != nil {
		return err
	}
	// The kernel's sysfs pid names the process that sent CONNECT, which
	// after a reattach is dead; record who serves the device now.
	if perr := nbdattach.WriteServerPID(dev.Index()); perr != nil {
		env.log.Warn("cannot record the serving pid", "err", perr)
	}
	defer nbdattach.RemoveServerPID(dev.Index())
	if obs != nil {
		obs.SetPath(dev.Path())
	}
	if ready != nil {
		fmt.Fprintf(ready, "ready %s\n", dev.Path())
		ready.Close()
		ready = nil
		// The parent has printed the device; from now on this process
		// has no terminal and logs only.
	} else {
		fmt.Fprintln(env.stdout, dev.Path())
	}
	stopState := nbdattach.FollowConnections(dev, env.log)
	defer stopState()
	// Serve until the device ends (an unmap from another process
	// disconnects it) or a signal comes: then hand the device over to
	// the kernel for the next server, or detach it if asked to.
	detached := false
	select {
	case <-dev.Done():
		return dev.Wait()
	case <-ctx.Done():
	case <-detach:
		detached = true
	}
	sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancel()
	if f.detachOnExit && !detached {
		env.log.Info("signal: detaching the device", "device", dev.Path())
		err = dev.Detach(sctx)
	} else {
		env.log.Info("signal: handing the device over; 'attach' serves it again", "device", dev.Path(), "detach", detached,
			"dead_conn_timeout", f.deadConnTimeout)
		err = dev.Release(sctx)
	}
	if errors.Is(err, nbd.ErrInFlight) {
		keepOpen = true
		env.log.Error("exiting with requests still in flight in the backend; the kernel re-sends them to the next server", "err", err)
		return nil
	}
	return err
}

// detachSignal asks a map or attach server to stop serving and leave
// its device to the kernel (the detach command sends it).
const detachSignal = syscall.SIGUSR1

// backendID is the identifier recorded in the kernel for target.
func backendID(target string) (string, error) {
	id, err := nbdattach.TargetID(target)
	if errors.Is(err, nbdattach.ErrEmptyTarget) {
		return "", fmt.Errorf("%w: %v", errUsage, err)
	}
	return id, err
}
