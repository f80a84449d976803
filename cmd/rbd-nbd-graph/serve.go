package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/pkg/reexec"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/dockerplugin"
	"github.com/spf13/pflag"
)

// ApplyDiff unpacks layers in a re-executed copy of this binary (docker's
// chrootarchive registers "docker-applyLayer" and friends); such a child
// must run the registered function, not main. An init function runs before
// main and after chrootarchive's own init has registered them.
func init() {
	if reexec.Init() {
		os.Exit(0)
	}
}

// optionList is a repeatable -o key=value flag.
type optionList []string

func (o *optionList) String() string     { return strings.Join(*o, " ") }
func (o *optionList) Set(v string) error { *o = append(*o, v); return nil }
func (o *optionList) Type() string       { return "key=value" }

// runServe runs the Docker graph driver plugin until SIGTERM or SIGINT.
func runServe(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "serve", "serve [flags]", fmt.Sprintf(
		"Serves the Docker graph driver plugin: every image and container layer is\n"+
			"an RBD image, attached through in-process NBD. Start it before dockerd.\n\n"+
			"Driver options (in the config file, with -o, or dockerd --storage-opt):\n  %s",
		strings.Join(backendOptionKeys(), "\n  ")))
	name := fs.String("name", "rbd-nbd", "plugin name: dockerd uses the plugin with dockerd --experimental -s NAME")
	socket := fs.String("socket", "", "unix socket to listen on (default "+dockerplugin.SocketDir+"/NAME.sock)")
	config := fs.String("config", "", "file of driver options, one key=value per line (# comments)")
	var opts optionList
	fs.VarP(&opts, "option", "o", "driver option key=value (repeatable); dockerd's --storage-opt values override these")
	var ceph cephFlags
	ceph.register(fs)
	state := fs.String("state", "", "where to record dockerd's Init so a restarted plugin resumes at once (default /run/rbd-nbd-graph/NAME.init.json; keep it on a tmpfs)")
	var grace, shutdownTimeout time.Duration
	durationVar(fs, &grace, "grace", 30*time.Second, "on SIGTERM, how long to wait for plugin requests in flight")
	durationVar(fs, &shutdownTimeout, "shutdown-timeout", 30*time.Second,
		"on SIGTERM, how long to wait for IO in flight on the devices, or for an Init the cluster holds, before exiting anyway")
	detachOnExit := fs.Bool("detach-on-exit", false,
		"on SIGTERM unmount and detach every layer (default: leave them mounted for the next plugin process, as a restart or upgrade needs)")
	mflags := registerMetricsFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if err := graph.ValidateID(*name); err != nil {
		return fmt.Errorf("%w: --name: %v", errUsage, err)
	}
	logIOFlusher(env.log)

	kvs, err := commandLineOptions(*config, &ceph, fs, opts)
	if err != nil {
		return err
	}
	if _, err := parseBackendOptions(kvs); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	reg, stopMetrics, err := startMetrics(ctx, env, mflags)
	if err != nil {
		return err
	}
	defer stopMetrics()
	declareLayerConnections(reg)
	path := *socket
	if path == "" {
		path = dockerplugin.SocketPath(*name)
	}
	ln, err := dockerplugin.Listen(path)
	if err != nil {
		return err
	}
	if *state == "" {
		*state = filepath.Join("/run/rbd-nbd-graph", *name+".init.json")
	}
	p := dockerplugin.New(dockerplugin.Config{
		Name:      *name,
		Options:   kvs,
		StateFile: *state,
		Parse: func(kvs []string) (graph.Options, dockerplugin.Opener, error) {
			o, err := parseBackendOptions(kvs)
			return o.layers, func(ctx context.Context) (dockerplugin.Backend, error) {
				b, err := openRBDBackend(ctx, o, env.log)
				return observeBackend(reg, b), err
			}, err
		},
		Logger:          env.log,
		DetachOnExit:    *detachOnExit,
		ShutdownTimeout: shutdownTimeout,
		Observer:        layerObserver(reg),
	})
	env.log.Info("serving the graph driver plugin; start dockerd with --experimental -s "+*name, "socket", path)
	// The socket listens (dockerd's connections queue until Serve takes
	// them): a Type=notify unit ordered before docker.service may let
	// dockerd start now.
	defer notifySystemd(ctx, env.log, "serving "+path)()
	return dockerplugin.Serve(ctx, ln, p, grace)
}

// commandLineOptions gathers a front end's driver options in order of
// precedence, lowest first (later ones win): the config file, the
// --ceph-conf flags and their friends, then -o.
func commandLineOptions(config string, ceph *cephFlags, fs *pflag.FlagSet, opts []string) ([]string, error) {
	var kvs []string
	if config != "" {
		fileOpts, err := readOptionFile(config)
		if err != nil {
			return nil, err
		}
		kvs = append(kvs, fileOpts...)
	}
	kvs = append(kvs, ceph.driverOptions(fs)...)
	return append(kvs, opts...), nil
}

// readOptionFile reads key=value lines; blank lines and # comments are
// skipped.
func readOptionFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.Contains(line, "=") {
			return nil, fmt.Errorf("%s:%d: %q: want key=value", path, n, line)
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

// driverOptions are the driver options (rbd.*) that the Ceph flags set
// on fs's command line stand for, so that they reach the driver with
// the precedence of flags.
func (c *cephFlags) driverOptions(fs *pflag.FlagSet) []string {
	var kvs []string
	fs.Visit(func(f *pflag.Flag) {
		switch f.Name {
		case "ceph-conf":
			kvs = append(kvs, "rbd.configfile="+c.conf)
		case "keyring":
			kvs = append(kvs, "rbd.keyring="+c.keyring)
		case "id":
			kvs = append(kvs, "rbd.client="+c.id)
		case "rbd-cache-policy":
			kvs = append(kvs, "rbd.cachepolicy="+string(c.cachePolicy))
		case "osd-timeout":
			kvs = append(kvs, "rbd.osdtimeout="+c.osdTimeout.String())
		case "connect-timeout":
			kvs = append(kvs, "rbd.connecttimeout="+c.connTimeout.String())
		case "abort-on-full":
			kvs = append(kvs, "rbd.abortonfull="+strconv.FormatBool(c.abortOnFull))
		case "rbd-submit":
			kvs = append(kvs, "rbd.submit="+string(c.submit))
		}
	})
	return kvs
}
