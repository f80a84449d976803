package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// daemonize re-runs this command in the foreground in a new session, with
// its output going to the log file, and waits for it to report the device
// (or its failure) over a pipe. The command line's own flags are kept;
// flags after TARGET are not possible, so ours go first.
func daemonize(ctx context.Context, env *environment, name string, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cannot find my own executable to start the background server: %w", err)
	}
	f, _, _ := parseMapFlags(name, env, args) // already validated
	var logOut io.Writer
	if f.logFile != "" {
		if err := os.MkdirAll(filepath.Dir(f.logFile), 0o755); err != nil {
			return fmt.Errorf("log file: %w", err)
		}
		lf, err := os.OpenFile(f.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("log file (choose another with --log-file): %w", err)
		}
		defer lf.Close()
		logOut = lf
	}
	readR, readW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer readR.Close()
	// The log flags were taken out of args (run): hand them on.
	childArgs := append([]string{name, "--foreground", "--ready-fd=3"}, env.logArgs...)
	cmd := exec.Command(self, append(childArgs, args...)...)
	cmd.Stdin = nil
	cmd.Stdout = logOut
	cmd.Stderr = logOut
	cmd.ExtraFiles = []*os.File{readW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readW.Close() // only the child holds the write end now: EOF when it dies
	if err != nil {
		return fmt.Errorf("starting the background server: %w", err)
	}
	go func() {
		<-ctx.Done()
		readR.SetReadDeadline(time.Unix(1, 0))
	}()
	line, rerr := bufio.NewReader(readR).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "ready "):
		cmd.Process.Release()
		fmt.Fprintln(env.stdout, strings.TrimPrefix(line, "ready "))
		return nil
	case strings.HasPrefix(line, "error "):
		cmd.Wait()
		return errors.New(strings.TrimPrefix(line, "error "))
	}
	// No message: the child died before it could say anything, or we
	// were interrupted.
	if ctx.Err() != nil {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		return ctx.Err()
	}
	werr := cmd.Wait()
	where := ""
	if f.logFile != "" {
		where = "; see " + f.logFile
	}
	return fmt.Errorf("the background server exited before the device was ready (%v, %v)%s", werr, rerr, where)
}
