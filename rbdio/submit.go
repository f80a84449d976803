package rbdio

import (
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// SubmitMode says who makes librbd's asynchronous call (rbd_aio_*) for
// a request: the image's submitter thread, or the request's caller.
//
// The thread costs a wake-up (its eventfd, then its own run on a CPU)
// whenever it sleeps, which at low load is every request. Calling
// librbd from the caller saves that, but a cgo call enters the Go
// scheduler's syscall state, and the first one after the process was
// idle wakes the runtime's sysmon, which then polls every 20 us until
// the process is idle again: that costs more than the hand-off saved
// (docs/2026-12-06-qd1-inline-submit.md). With sysmon kept from its deep
// sleep (SysmonAwake) nothing is woken and the call is the cheaper way:
// docs/2026-12-07-inline-submission.md has the measurements.
type SubmitMode string

const (
	// SubmitAuto is SubmitInline when SysmonAwake, else SubmitThread.
	// The default.
	SubmitAuto SubmitMode = "auto"
	// SubmitInline: a request that finds the submitter thread asleep
	// with nothing queued is submitted by its caller; the others still
	// go through the thread, so a caller never waits behind librbd for
	// more than its own request.
	SubmitInline SubmitMode = "inline"
	// SubmitThread: every request goes through the submitter thread, so
	// Go makes no cgo call on the data path.
	SubmitThread SubmitMode = "thread"
)

// SubmitModes lists every mode, the default first.
func SubmitModes() []SubmitMode { return []SubmitMode{SubmitAuto, SubmitInline, SubmitThread} }

// ParseSubmitMode checks a mode name.
func ParseSubmitMode(s string) (SubmitMode, error) {
	if m := SubmitMode(s); slices.Contains(SubmitModes(), m) {
		return m, nil
	}
	return "", fmt.Errorf("%w: submit mode %q: use %s, %s or %s", ErrInvalid, s, SubmitAuto, SubmitInline, SubmitThread)
}

// Resolved is the mode m stands for in this process: SubmitAuto
// becomes SubmitInline or SubmitThread.
func (m SubmitMode) Resolved() SubmitMode {
	if m == SubmitAuto || m == "" {
		if SysmonAwake() {
			return SubmitInline
		}
		return SubmitThread
	}
	return m
}

// inline resolves m for an image: whether its callers submit.
func (m SubmitMode) inline() bool { return m.Resolved() == SubmitInline }

// SysmonAwake reports whether the Go runtime's sysmon is kept from its
// deep sleep in this process: GODEBUG's schedtrace is above zero, from
// the environment the process started with or linked in as the
// binary's default GODEBUG (-X runtime.godebugDefault=...). The
// command's servers run so (cmd/rbd-nbd-graph/sysmon.go). Sysmon then
// wakes at most every 10 ms while the process idles, instead of
// sleeping until a cgo call wakes it.
func SysmonAwake() bool {
	var linked, set string
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-ldflags" {
				linked = linkedGODEBUG(s.Value)
			}
		}
	}
	set = os.Getenv("GODEBUG")
	return schedtrace(linked+","+set) > 0
}

// linkedGODEBUG finds the value given to runtime.godebugDefault in a
// -ldflags string ("-X runtime.godebugDefault=a=1,b=2" or
// "-X=runtime.godebugDefault=...").
func linkedGODEBUG(ldflags string) string {
	const key = "runtime.godebugDefault="
	v := ""
	for _, f := range strings.Fields(ldflags) {
		if i := strings.Index(f, key); i >= 0 {
			v = strings.Trim(f[i+len(key):], `'"`)
		}
	}
	return v
}

// schedtrace is the last schedtrace=N in a GODEBUG list, as the runtime
// reads it (later settings win), or 0.
func schedtrace(godebug string) int {
	n := 0
	for _, kv := range strings.Split(godebug, ",") {
		if v, ok := strings.CutPrefix(kv, "schedtrace="); ok {
			n, _ = strconv.Atoi(v)
		}
	}
	return n
}
