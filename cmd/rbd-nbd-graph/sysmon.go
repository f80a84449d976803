package main

import (
	"slices"
	"strings"
)

// sysmonGODEBUG keeps the Go runtime's sysmon from its deep sleep: a
// schedtrace period of 2147483647 ms (24.8 days, the largest), long
// enough that it prints next to nothing (one SCHED line on stderr at
// start on a host up longer than that, then one per period). With
// sysmon awake a cgo call does not have to wake it, which is what makes
// submitting to librbd from the request's goroutine the cheaper way
// (rbdio/submit.go, --rbd-submit auto). It costs an idle process about
// 100 wake-ups a second (docs/2026-12-07-inline-submission.md).
const sysmonGODEBUG = "schedtrace=2147483647"

// sysmonEnv returns the environment to run this process again with, so
// that its sysmon stays awake; false when there is nothing to do: args
// name no command of cmds that serves IO, or GODEBUG already names
// schedtrace (the operator's choice: schedtrace=0 keeps sysmon's deep
// sleep, and auto then submits through the thread). GODEBUG is read once, at start, so
// the process has to be executed again to change it; main does that
// before anything else runs.
func sysmonEnv(cmds []command, args, environ []string) ([]string, bool) {
	if len(args) == 0 || !slices.ContainsFunc(cmds, func(c command) bool { return c.servesIO && c.name == args[0] }) {
		return nil, false
	}
	godebug, at := "", -1
	for i, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug, at = v, i
		}
	}
	for _, kv := range strings.Split(godebug, ",") {
		if strings.HasPrefix(kv, "schedtrace=") {
			return nil, false
		}
	}
	env := append([]string(nil), environ...)
	if at < 0 {
		return append(env, "GODEBUG="+sysmonGODEBUG), true
	}
	if godebug != "" {
		godebug += ","
	}
	env[at] = "GODEBUG=" + godebug + sysmonGODEBUG
	return env, true
}
