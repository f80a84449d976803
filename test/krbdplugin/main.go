// Command krbdplugin is a test-only Docker graph driver plugin: the
// product's layer store (graph, graph/rbdstore) and plugin front end
// (graph/dockerplugin) with the krbd graph driver's (the seed's) attach
// path instead of ours: every Get runs `rbd device map` (the kernel's RBD
// client), every last Put `rbd device unmap`, each a CLI process as the
// seed did. Only the attach path differs from `rbd-nbd-graph serve`, so
// the whole-containers benchmark (test/e2e/containers_bench_test.go,
// bench/scripts/containers-vm.sh) can compare the two on the same layer
// logic. It is not part of the product and has no crash recovery: it
// adopts no devices at start.
//
//	krbdplugin --name NAME [--socket PATH] [-o key=value]...
//
// The options are the store's and the layer store's (rbd.*, the layer
// keys of `rbd-nbd-graph serve`). Set RBD_NBD_GRAPH_LOG=debug for the
// per-step timings (attach, mount, clone...) in the log.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/pkg/reexec"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/rbdstore"
)

// ApplyDiff unpacks in a re-executed copy of this binary (docker's
// chrootarchive), as in rbd-nbd-graph's main.
func init() {
	if reexec.Init() {
		os.Exit(0)
	}
}

type optionList []string

func (o *optionList) String() string     { return strings.Join(*o, " ") }
func (o *optionList) Set(v string) error { *o = append(*o, v); return nil }

func main() {
	name := flag.String("name", "rbd-krbd", "plugin name (dockerd --experimental -s NAME)")
	socket := flag.String("socket", "", "unix socket (default "+dockerplugin.SocketDir+"/NAME.sock)")
	var opts optionList
	flag.Var(&opts, "o", "driver option key=value (repeatable)")
	flag.Parse()
	level := slog.LevelInfo
	if os.Getenv("RBD_NBD_GRAPH_LOG") == "debug" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(*name, *socket, opts, log); err != nil {
		log.Error("krbdplugin", "err", err)
		os.Exit(1)
	}
}

func run(name, socket string, opts []string, log *slog.Logger) error {
	if _, err := parse(opts); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if socket == "" {
		socket = dockerplugin.SocketPath(name)
	}
	ln, err := dockerplugin.Listen(socket)
	if err != nil {
		return err
	}
	p := dockerplugin.New(dockerplugin.Config{
		Name:    name,
		Options: opts,
		Parse: func(kvs []string) (graph.Options, dockerplugin.Opener, error) {
			o, err := parse(kvs)
			return o.layers, func(ctx context.Context) (dockerplugin.Backend, error) {
				conn, err := rbdstore.Connect(ctx, o.store)
				if err != nil {
					return dockerplugin.Backend{}, err
				}
				store := rbdstore.New(ctx, conn, o.store, log)
				att := &krbdAttacher{where: store.Where(), conf: o.store.ConfigFile, client: o.store.Client, log: log}
				return dockerplugin.Backend{Store: store, Attacher: att, Close: store.Close}, nil
			}, err
		},
		Logger:       log,
		DetachOnExit: true,
	})
	log.Info("serving the krbd graph driver plugin", "socket", socket)
	return dockerplugin.Serve(ctx, ln, p, 30*time.Second)
}

type options struct {
	layers graph.Options
	store  rbdstore.Options
}

func parse(kvs []string) (options, error) {
	o := options{layers: graph.DefaultOptions(), store: rbdstore.DefaultOptions()}
	return o, graph.ParseOptionSets(kvs, &o.layers, &o.store)
}

// krbdAttacher maps images with the kernel's RBD client through the rbd
// CLI, one process per map and unmap, as the seed driver did.
type krbdAttacher struct {
	where  string // pool or pool/namespace
	conf   string // ceph.conf ("" for the CLI's default)
	client string // cephx id
	log    *slog.Logger
}

// rbd runs the rbd CLI; -o noudev: the VM guest runs no udevd and rbd
// would wait for its events.
func (a *krbdAttacher) rbd(ctx context.Context, args ...string) (string, error) {
	var pre []string
	if a.conf != "" {
		pre = append(pre, "--conf", a.conf)
	}
	if a.client != "" {
		pre = append(pre, "--id", a.client)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rbd", append(pre, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("rbd %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// Attach implements graph.Attacher: `rbd device map`.
func (a *krbdAttacher) Attach(ctx context.Context, req graph.AttachRequest) (graph.Device, error) {
	spec := a.where + "/" + req.Image
	if req.Snapshot != "" {
		spec += "@" + req.Snapshot
	}
	args := []string{"device", "map", "-o", "noudev"}
	if req.ReadOnly || req.Snapshot != "" {
		args = append(args, "--read-only")
	}
	out, err := a.rbd(ctx, append(args, spec)...)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(out, "\n")
	path := strings.TrimSpace(lines[len(lines)-1])
	if !strings.HasPrefix(path, "/dev/rbd") {
		return nil, fmt.Errorf("rbd device map %s: unexpected output %q", spec, out)
	}
	return &krbdDevice{a: a, path: path}, nil
}

// Stale implements graph.Attacher: the seed adopted nothing.
func (a *krbdAttacher) Stale(context.Context) ([]graph.StaleDevice, error) { return nil, nil }

type krbdDevice struct {
	a    *krbdAttacher
	path string
}

func (d *krbdDevice) Path() string { return d.path }

// Detach implements graph.Device: `rbd device unmap`.
func (d *krbdDevice) Detach(ctx context.Context) error {
	_, err := d.a.rbd(ctx, "device", "unmap", "-o", "noudev", d.path)
	return err
}

// Release implements graph.Device: the kernel keeps serving a krbd
// device without this process, so there is nothing to hand over.
func (d *krbdDevice) Release(context.Context) error { return nil }
