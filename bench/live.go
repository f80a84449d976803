package bench

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// LiveLine is the one-line progress display, drawn only when stdout is
// a terminal (and not with --json).
type LiveLine struct {
	w  io.Writer
	on bool
}

// NewLiveLine draws on w if wanted and w is a terminal.
func NewLiveLine(w io.Writer, wanted bool) *LiveLine {
	f, ok := w.(*os.File)
	return &LiveLine{w: w, on: wanted && ok && isTerminal(f)}
}

// Progress is a Progress callback that draws label and the figures so
// far, or nil when nothing is drawn.
func (l *LiveLine) Progress(label string) func(Progress) {
	if !l.on {
		return nil
	}
	return func(p Progress) {
		phase := "run"
		if p.Ramping {
			phase = "ramp"
		}
		of := ""
		if p.Runtime > 0 {
			of = "/" + p.Runtime.Round(100*time.Millisecond).String()
		}
		fmt.Fprintf(l.w, "\r\033[K%s: %s %s%s  %s IOPS  %.1f MiB/s", label, phase,
			p.Elapsed.Round(100*time.Millisecond), of, FormatCount(p.IOPS), p.BytesPerSec/(1<<20))
	}
}

// Clear erases the line.
func (l *LiveLine) Clear() {
	if l.on {
		fmt.Fprint(l.w, "\r\033[K")
	}
}

// isTerminal asks the tty driver (TCGETS succeeds only on a terminal).
func isTerminal(f *os.File) bool {
	var t syscall.Termios
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCGETS, uintptr(unsafe.Pointer(&t)))
	return errno == 0
}
