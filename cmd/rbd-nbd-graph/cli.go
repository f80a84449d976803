package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/spf13/pflag"
)

// The command line is GNU style (spf13/pflag): flags anywhere on the
// line, before or after the arguments, "--" ends them, -h/--help prints
// the command's help. Flags are long (--read-only) with a few one-letter
// forms where rbd-nbd has them (-c ceph.conf). The single-dash long form
// of Go's flag package (-read-only, -socket S), which scripts written for
// earlier versions use, is still accepted: see gnuArgs.

// newFlagSet makes a subcommand's flag set. synopsis follows
// "rbd-nbd-graph " on the usage line; about is the description printed
// between the usage line and the flags. Errors are returned, never
// printed here: run prints each one once, with the way to see the help.
func newFlagSet(env *environment, name, synopsis, about string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.SortFlags = false
	fs.SetNormalizeFunc(normalizeFlag)
	fs.Usage = func() { printHelp(env, fs, synopsis, about) }
	if env.onFlagSet != nil {
		env.onFlagSet(fs)
	}
	return fs
}

// printHelp is a subcommand's -h: usage line, description, its flags
// (hidden ones left out by pflag) and the flags every command takes.
func printHelp(env *environment, fs *pflag.FlagSet, synopsis, about string) {
	w := env.stderr
	fmt.Fprintf(w, "usage: rbd-nbd-graph %s\n\n", synopsis)
	if about != "" {
		fmt.Fprintf(w, "%s\n\n", strings.TrimRight(about, "\n"))
	}
	// pflag writes a boolean flag as --read-only[=true|false]; the bare
	// flag is the way to set it (same width: the columns stay aligned).
	u := strings.ReplaceAll(fs.FlagUsagesWrapped(100), "[=true|false]", "             ")
	if u != "" {
		fmt.Fprintf(w, "flags:\n%s\n", u)
	}
	fmt.Fprintln(w, logFlagsHelp)
}

// normalizeFlag maps the spellings Ceph's tools use onto ours: rbd-nbd
// and rbd take --conf for the ceph.conf path.
func normalizeFlag(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	switch name {
	case "conf":
		return "ceph-conf"
	}
	return pflag.NormalizedName(name)
}

// parseFlags parses a subcommand's flags: -h comes back as pflag.ErrHelp
// (the help is printed; exit 0), anything else wrong as errUsage with the
// hint where to look (exit 2).
func parseFlags(fs *pflag.FlagSet, args []string) error {
	err := fs.Parse(gnuArgs(fs, args))
	if err == nil || errors.Is(err, pflag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v (see 'rbd-nbd-graph %s -h')", errUsage, err, fs.Name())
}

// gnuArgs rewrites the single-dash long flags of Go's flag package
// (-read-only, -socket=S) that fs knows into their GNU form
// (--read-only), so scripts written for earlier versions keep working;
// one-letter flags and their clusters (-c FILE, -h) are left alone.
func gnuArgs(fs *pflag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if len(name) > 1 && (fs.Lookup(name) != nil || name == "help") {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}

// durationValue is every duration flag: a Go duration (30s, 2m) or
// plain seconds (30), as rbd-nbd's --io-timeout and the driver options
// (graph.ParseDurationOption) take them.
type durationValue time.Duration

func (d *durationValue) Set(s string) error {
	v, err := graph.ParseDurationOption(s)
	if err != nil {
		return err
	}
	*d = durationValue(v)
	return nil
}

func (d *durationValue) String() string { return time.Duration(*d).String() }
func (d *durationValue) Type() string   { return "duration" }

// durationVar defines a duration flag with default def.
func durationVar(fs *pflag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var((*durationValue)(p), name, usage)
	if def == 0 {
		fs.Lookup(name).DefValue = "0" // what pflag takes for "no default to show"
	}
}

// hide registers nothing new: it keeps an internal flag out of -h and of
// the shell completion.
func hide(fs *pflag.FlagSet, names ...string) {
	for _, n := range names {
		if err := fs.MarkHidden(n); err != nil {
			panic(err) // a typo in a flag name: a programming error
		}
	}
}
