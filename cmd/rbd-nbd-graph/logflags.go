package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// logEnv is the environment variable that sets the log level when
// --log-level is not given (debug, info, warn or error).
const logEnv = "RBD_NBD_GRAPH_LOG"

// logOptions are --log-level and --log-format, which every subcommand
// takes anywhere on its command line (run takes them out before the
// subcommand parses the rest).
type logOptions struct {
	level  slog.Level
	format string // "text" or "json"
	given  bool   // a flag or the environment variable set something
	args   []string
}

const logFlagsHelp = `Every command also takes:
  --log-level debug|info|warn|error   what to log (default: $` + logEnv + `, else info)
  --log-format text|json              log lines as key=value text (default) or JSON objects`

// parseLogFlags takes --log-level and --log-format (one or two dashes,
// "=VALUE" or a separate VALUE) out of args, up to a "--", and returns
// the rest. envLevel is $RBD_NBD_GRAPH_LOG.
func parseLogFlags(args []string, envLevel string) (logOptions, []string, error) {
	o := logOptions{level: slog.LevelInfo, format: "text"}
	if envLevel != "" {
		if err := o.level.UnmarshalText([]byte(envLevel)); err != nil {
			return o, nil, fmt.Errorf("%w: %s=%q: want debug, info, warn or error", errUsage, logEnv, envLevel)
		}
		o.given = true
	}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || (name != "log-level" && name != "log-format") {
			rest = append(rest, a)
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return o, nil, fmt.Errorf("%w: --%s needs a value", errUsage, name)
			}
			i++
			val = args[i]
		}
		switch name {
		case "log-level":
			if err := o.level.UnmarshalText([]byte(val)); err != nil {
				return o, nil, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, val)
			}
		case "log-format":
			if val != "text" && val != "json" {
				return o, nil, fmt.Errorf("%w: --log-format %q: want text or json", errUsage, val)
			}
			o.format = val
		}
		o.given = true
		o.args = append(o.args, "--"+name+"="+val)
	}
	return o, rest, nil
}

// logger makes the logger these options ask for, writing to w.
func (o logOptions) logger(w io.Writer) *slog.Logger {
	h := &slog.HandlerOptions{Level: o.level}
	if o.format == "json" {
		return slog.New(slog.NewJSONHandler(w, h))
	}
	return slog.New(slog.NewTextHandler(w, h))
}
