package bench

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalidOption is matched (errors.Is) by every *OptionError: the
// input was wrong, nothing was run.
var ErrInvalidOption = errors.New("invalid bench option")

// OptionError names the option (by its command-line name, without
// dashes), the value given and what to do instead.
type OptionError struct {
	Option string
	Value  string
	Reason string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("--%s %s: %s", e.Option, e.Value, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidOption) true.
func (e *OptionError) Is(target error) bool { return target == ErrInvalidOption }

// MaxIODepth bounds --iodepth: each IO in flight is a goroutine with its
// own buffer and histograms.
const MaxIODepth = 1024

// Options is one run: the workload and how hard and how long to drive it.
type Options struct {
	Workload
	// IODepth is the number of IOs kept in flight in total, spread
	// round-robin over the target's connections (fio's iodepth).
	IODepth int
	// Runtime is how long to measure, after Ramp. With TotalBytes as
	// well, the run ends at whichever comes first.
	Runtime time.Duration
	// TotalBytes ends the run once this many bytes have completed in the
	// measured phase (fio's io_size). 0: no limit.
	TotalBytes int64
	// Ramp is run before measuring and not counted (warms caches,
	// librbd's object map, TCP windows).
	Ramp time.Duration
	// Verify writes a pattern derived from the offset and a per-run
	// nonce, checks every read of a block written in this run, and reads
	// every written block back at the end. Read-only patterns fill the
	// region with the pattern first (not timed). It costs CPU per IO, so
	// do not compare its figures with unverified runs.
	Verify bool
	// Progress, if set, is called about every ProgressInterval (default
	// 1s) from a separate goroutine with the figures of the last interval.
	Progress         func(Progress)
	ProgressInterval time.Duration
}

// Check validates the options on their own, before a target is opened.
func (o *Options) Check() error {
	switch {
	case o.IODepth < 1:
		return &OptionError{Option: "iodepth", Value: fmt.Sprint(o.IODepth),
			Reason: "must be at least 1 (the number of IOs kept in flight)"}
	case o.IODepth > MaxIODepth:
		return &OptionError{Option: "iodepth", Value: fmt.Sprint(o.IODepth),
			Reason: fmt.Sprintf("at most %d", MaxIODepth)}
	case o.Runtime < 0:
		return &OptionError{Option: "runtime", Value: o.Runtime.String(), Reason: "must not be negative"}
	case o.TotalBytes < 0:
		return &OptionError{Option: "total", Value: fmt.Sprint(o.TotalBytes), Reason: "must not be negative"}
	case o.Runtime == 0 && o.TotalBytes == 0:
		return &OptionError{Option: "runtime", Value: "0",
			Reason: "give a runtime (e.g. 10s) or a byte total (--total 1G) to end the run"}
	case o.Ramp < 0:
		return &OptionError{Option: "ramp", Value: o.Ramp.String(), Reason: "must not be negative"}
	}
	return o.Workload.Check()
}

// Validate checks the options against a target of backendSize bytes
// before any IO.
func (o *Options) Validate(backendSize int64) error {
	if err := o.Check(); err != nil {
		return err
	}
	return o.Workload.Validate(backendSize)
}

// Progress is one live sample taken while a run goes on.
type Progress struct {
	Ramping     bool          // still in the ramp phase (not measured)
	Elapsed     time.Duration // since the phase began
	Runtime     time.Duration // the phase's planned length (0: bytes-limited)
	IOPS        float64       // over the last interval
	BytesPerSec float64
}
