package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// runCompletion: completion bash. The script is made from the commands'
// own flag sets (each command is run with --help and its flag set
// collected), so a flag added to a command is completed without
// touching this file; hidden flags are left out.
func runCompletion(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "completion", "completion bash",
		"Prints a bash completion script. Load it in the current shell with\n"+
			"  source <(rbd-nbd-graph completion bash)\n"+
			"or install it as /usr/share/bash-completion/completions/rbd-nbd-graph (the .deb does).")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) != "bash" {
		return fmt.Errorf("%w: want one shell, bash; got %q", errUsage, fs.Args())
	}
	flags := map[string]*pflag.FlagSet{}
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
		if c.name == "completion" {
			continue
		}
		argv := []string{"--help"}
		if c.name == "bench" { // bench sweep's flags are a superset
			argv = []string{"sweep", "--help"}
		}
		var got *pflag.FlagSet
		cenv := &environment{stdout: io.Discard, stderr: io.Discard, log: env.log,
			onFlagSet: func(fs *pflag.FlagSet) { got = fs }}
		c.run(ctx, cenv, argv) //nolint:errcheck // --help: only the flag set is wanted
		if got != nil {
			flags[c.name] = got
		}
	}
	return writeBashCompletion(env.stdout, names, flags)
}

// Flags whose value is a path: completed with file names.
var pathFlags = map[string]bool{"ceph-conf": true, "keyring": true, "config": true, "socket": true, "log-file": true,
	"state": true, "root": true, "out": true, "tls-cert": true, "tls-key": true, "tls-ca": true, "device": true}

// Flags with a fixed set of values.
var valueFlags = map[string]string{
	"format": "plain json", "log-level": "debug info warn error", "log-format": "text json",
	"rbd-cache-policy": "none writethrough writeback writearound", "tls": "off on require",
	"target": "raw export device", "rw": "read write randread randwrite mixed rw",
}

func writeBashCompletion(w io.Writer, names []string, flags map[string]*pflag.FlagSet) error {
	var b strings.Builder
	b.WriteString(`# bash completion for rbd-nbd-graph (made by 'rbd-nbd-graph completion bash')
_rbd_nbd_graph() {
	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd= i flags=
	for ((i = 1; i < COMP_CWORD; i++)); do
		case ${COMP_WORDS[i]} in -*) ;; *) cmd=${COMP_WORDS[i]}; break ;; esac
	done
	if [[ -z $cmd ]]; then
		COMPREPLY=($(compgen -W "` + strings.Join(names, " ") + ` help --version --help" -- "$cur"))
		return
	fi
	case $prev in
`)
	var paths, takesValue []string
	valueCases := map[string][]string{}
	seen := map[string]bool{}
	for _, n := range names {
		fs := flags[n]
		if fs == nil {
			continue
		}
		fs.VisitAll(func(f *pflag.Flag) {
			if f.Hidden || seen[f.Name] || f.NoOptDefVal != "" {
				return
			}
			seen[f.Name] = true
			forms := []string{"--" + f.Name}
			if f.Shorthand != "" {
				forms = append(forms, "-"+f.Shorthand)
			}
			switch {
			case pathFlags[f.Name]:
				paths = append(paths, forms...)
			case valueFlags[f.Name] != "":
				valueCases[valueFlags[f.Name]] = append(valueCases[valueFlags[f.Name]], forms...)
			default:
				takesValue = append(takesValue, forms...)
			}
		})
	}
	valueCases["debug info warn error"] = append(valueCases["debug info warn error"], "--log-level")
	valueCases["text json"] = append(valueCases["text json"], "--log-format")
	if len(paths) > 0 {
		sort.Strings(paths)
		fmt.Fprintf(&b, "\t%s) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n", strings.Join(paths, "|"))
	}
	var vals []string
	for v := range valueCases {
		vals = append(vals, v)
	}
	sort.Strings(vals)
	for _, v := range vals {
		fmt.Fprintf(&b, "\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;\n", strings.Join(valueCases[v], "|"), v)
	}
	if len(takesValue) > 0 {
		sort.Strings(takesValue)
		fmt.Fprintf(&b, "\t%s) return ;;\n", strings.Join(takesValue, "|"))
	}
	b.WriteString("\tesac\n\tcase $cmd in\n")
	for _, n := range names {
		fs := flags[n]
		if fs == nil {
			continue
		}
		forms := []string{"--help", "--log-level", "--log-format"}
		fs.VisitAll(func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			forms = append(forms, "--"+f.Name)
			if f.Shorthand != "" {
				forms = append(forms, "-"+f.Shorthand)
			}
		})
		fmt.Fprintf(&b, "\t%s) flags=%q ;;\n", n, strings.Join(forms, " "))
	}
	b.WriteString(`	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
		return
	fi
	case $cmd in
	unmap|detach) COMPREPLY=($(compgen -W "$(ls /dev/nbd* 2>/dev/null)" -- "$cur")) ;;
	completion) COMPREPLY=($(compgen -W bash -- "$cur")) ;;
	bench) COMPREPLY=($(compgen -W sweep -- "$cur")) ;;
	help) COMPREPLY=($(compgen -W "` + strings.Join(names, " ") + `" -- "$cur")) ;;
	*) COMPREPLY=($(compgen -f -- "$cur")) ;;
	esac
}
complete -F _rbd_nbd_graph rbd-nbd-graph
`)
	_, err := io.WriteString(w, b.String())
	return err
}
