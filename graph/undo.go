// Step timing and the undo stack used by Create and the base image.

package graph

import (
	"errors"
	"fmt"
	"time"
)

// phases times the steps of one operation for the debug log, where the
// cost of each (clone, metadata, attach, mount...) can be read off.
type phases struct {
	last  time.Time
	attrs []any
}

func newPhases() *phases { return &phases{last: time.Now()} }

// done records the step that just ended.
func (p *phases) done(step string) {
	now := time.Now()
	p.attrs = append(p.attrs, step, now.Sub(p.last).Round(time.Microsecond))
	p.last = now
}

// undoStack collects the steps that undo an operation done half way.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

// onError runs the undo steps, last first, when *err is set, and joins
// their failures to it.
func (u *undoStack) onError(err *error) {
	if *err == nil {
		return
	}
	var errs []error
	for i := len(*u) - 1; i >= 0; i-- {
		if e := (*u)[i](); e != nil {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		*err = errors.Join(*err, fmt.Errorf("rollback: %w", errors.Join(errs...)))
	}
}
