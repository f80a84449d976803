// Command rbd-nbd-graph is one binary with subcommands: export (serve a
// block backend over the NBD protocol), map/unmap/list (the kernel NBD
// path), serve (the Docker graph driver plugin), snapshotter (the
// containerd proxy snapshotter) and bench (the IO tuning
// tool). Run it with no arguments for the list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// command is one subcommand. run gets its own arguments (after the name)
// and a context cancelled on SIGINT or SIGTERM.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *environment, args []string) error
}

// environment is what every subcommand shares: where to write and log.
type environment struct {
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
	// logLevelEnv is $RBD_NBD_GRAPH_LOG (main reads it; tests leave it empty).
	logLevelEnv string
	// logSet says --log-level, --log-format or the environment chose
	// the logging; logArgs are those flags, for a re-executed child.
	logSet  bool
	logArgs []string
}

func commands() []command {
	return []command{
		{"export", "serve a block backend over the NBD protocol (unix socket or loopback TCP)", runExport},
		{"map", "attach a backend to a kernel NBD device and serve it", runMap},
		{"attach", "re-serve a mapped device whose server died (map --reattach)", runAttach},
		{"unmap", "detach a kernel NBD device", runUnmap},
		{"list", "list kernel NBD devices served by rbd-nbd-graph", runList},
		{"serve", "run the Docker graph driver plugin", runServe},
		{"snapshotter", "run the containerd proxy snapshotter", runSnapshotter},
		{"bench", "measure the IO path (raw backend, NBD export, kernel device)", runBench},
	}
}

// errUsage marks an error caused by bad command-line input: exit status 2.
var errUsage = errors.New("usage")

func main() {
	env := &environment{
		stdout:      os.Stdout,
		stderr:      os.Stderr,
		log:         slog.New(slog.NewTextHandler(os.Stderr, nil)),
		logLevelEnv: os.Getenv(logEnv),
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, env, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, env *environment, args []string) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range cmds {
		if c.name != args[0] {
			continue
		}
		lo, rest, err := parseLogFlags(args[1:], env.logLevelEnv)
		if err == nil {
			if lo.given {
				env.log = lo.logger(env.stderr)
			}
			env.logSet, env.logArgs = lo.given, lo.args
			err = c.run(ctx, env, rest)
		}
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			fmt.Fprintf(env.stderr, "\n%s\n", logFlagsHelp)
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(env.stderr, "rbd-nbd-graph %s: %v\n", c.name, err)
			return 2
		default:
			fmt.Fprintf(env.stderr, "rbd-nbd-graph %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(env.stderr, "rbd-nbd-graph: unknown command %q\n\n", args[0])
	usage(env.stderr, cmds)
	return 2
}

func usage(w io.Writer, cmds []command) {
	fmt.Fprintln(w, "usage: rbd-nbd-graph COMMAND [flags] [args]\n\ncommands:")
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\n%s\n", logFlagsHelp)
	fmt.Fprintln(w, "\nRun 'rbd-nbd-graph COMMAND -h' for a command's flags. See README.md.")
}

// parseFlags parses a subcommand's flags: -h comes back as flag.ErrHelp
// (exit 0), anything else wrong as errUsage (exit 2).
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v", errUsage, err)
}
