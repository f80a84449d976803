// Command rbd-nbd-graph is one binary with subcommands: export (serve a
// block backend over the NBD protocol), map/attach/detach/unmap/list (the
// kernel NBD path), serve (the Docker graph driver plugin), snapshotter
// (the containerd proxy snapshotter), bench (the IO tuning tool),
// version and completion. Run it with no arguments for the list; the
// command line's conventions are in cli.go.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// command is one subcommand. run gets its own arguments (after the name)
// and a context cancelled on SIGINT or SIGTERM.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *environment, args []string) error
	// servesIO: the command runs an IO path for long, so it runs with
	// the runtime's sysmon kept awake (sysmon.go).
	servesIO bool
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
	// onFlagSet, when set, is given every flag set a command makes
	// (the completion script is made from them).
	onFlagSet func(*pflag.FlagSet)
}

func commands() []command {
	return []command{
		{"export", "serve a block backend over the NBD protocol (unix socket or loopback TCP)", runExport, true},
		{"map", "attach a backend to a kernel NBD device and serve it", runMap, true},
		{"attach", "re-serve a mapped device whose server died or was detached (map --reattach)", runAttach, true},
		{"detach", "stop serving a mapped device but keep it, for a later attach (as rbd-nbd detach)", runDetach, false},
		{"unmap", "disconnect a kernel NBD device and stop its server", runUnmap, false},
		{"list", "list kernel NBD devices served by rbd-nbd-graph", runList, false},
		{"serve", "run the Docker graph driver plugin", runServe, true},
		{"snapshotter", "run the containerd proxy snapshotter", runSnapshotter, true},
		{"bench", "measure the IO path (raw backend, NBD export, kernel device)", runBench, true},
		{"version", "print the version, commit, Go, go-ceph and librbd versions", runVersion, false},
		{"completion", "print a shell completion script (bash)", runCompletion, false},
	}
}

// errUsage marks an error caused by bad command-line input: exit status 2.
var errUsage = errors.New("usage")

func main() {
	if envv, ok := sysmonEnv(commands(), os.Args[1:], os.Environ()); ok {
		// The same binary, arguments, PID and descriptors, with sysmon
		// kept awake (sysmon.go). If exec fails the process goes on as
		// it is, and --rbd-submit auto picks the submitter thread.
		syscall.Exec("/proc/self/exe", os.Args, envv)
	}
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
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || (args[0] == "help" && len(args) == 1) {
		usage(env.stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "--version", "-version", "-V":
		args = append([]string{"version"}, args[1:]...)
	case "help": // help COMMAND is COMMAND -h
		args = []string{args[1], "-h"}
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
		case errors.Is(err, pflag.ErrHelp):
			return 0 // the flag set printed the help
		case errors.Is(err, errUsage):
			msg := err.Error()
			if !strings.Contains(msg, " -h'") {
				msg += fmt.Sprintf(" (see 'rbd-nbd-graph %s -h')", c.name)
			}
			fmt.Fprintf(env.stderr, "rbd-nbd-graph %s: %s\n", c.name, msg)
			return 2
		default:
			fmt.Fprintf(env.stderr, "rbd-nbd-graph %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(env.stderr, "rbd-nbd-graph: unknown command %q (run 'rbd-nbd-graph -h' for the list)\n", args[0])
	return 2
}

func usage(w io.Writer, cmds []command) {
	fmt.Fprintln(w, "usage: rbd-nbd-graph COMMAND [flags] [args]\n\ncommands:")
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\n%s\n", logFlagsHelp)
	fmt.Fprintln(w, "  --version                           print the version (as the version command)")
	fmt.Fprintln(w, "\nFlags go anywhere on the line (GNU style); -flag is read as --flag.\nRun 'rbd-nbd-graph COMMAND -h' for a command's flags. See README.md.")
}
