package testkit

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Run runs a command, killed after timeout, and returns its combined
// output; the command line and its duration go to the test log.
func Run(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	return RunIn(t, "", timeout, name, args...)
}

// RunIn is Run in the folder dir ("": the test's own). Tools that leave
// files where they run (fio's verify state) get a t.TempDir().
func RunIn(t testing.TB, dir string, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	// A child that outlives the command must not keep Run waiting on
	// the output pipe it inherited.
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("$ %s %s  (%.1fs)", name, strings.Join(args, " "), time.Since(start).Seconds())
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, timeout)
	}
	return out.String(), err
}

// Must is Run for a command that has to succeed: any failure fails the
// test with the command's output.
func Must(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	return MustIn(t, "", timeout, name, args...)
}

// MustIn is Must in the folder dir.
func MustIn(t testing.TB, dir string, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := RunIn(t, dir, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// Eventually polls cond every 50 ms until it holds, and fails the test
// if it still does not after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
