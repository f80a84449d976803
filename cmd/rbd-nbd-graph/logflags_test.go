package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseLogFlags(t *testing.T) {
	for _, c := range []struct {
		args, rest []string
		level      slog.Level
		format     string
	}{
		{[]string{"--socket", "s", "mem:1M"}, []string{"--socket", "s", "mem:1M"}, slog.LevelInfo, "text"},
		{[]string{"--log-level", "debug", "mem:1M", "--log-format=json"}, []string{"mem:1M"}, slog.LevelDebug, "json"},
		{[]string{"-log-level=warn", "mem:1M"}, []string{"mem:1M"}, slog.LevelWarn, "text"},
		{[]string{"mem:1M", "--", "--log-level", "x"}, []string{"mem:1M", "--", "--log-level", "x"}, slog.LevelInfo, "text"},
	} {
		o, rest, err := parseLogFlags(c.args, "")
		if err != nil || !slices.Equal(rest, c.rest) || o.level != c.level || o.format != c.format {
			t.Errorf("parseLogFlags(%q) = %v %q %q, %q, %v", c.args, o.level, o.format, o.args, rest, err)
		}
	}
	if o, _, err := parseLogFlags(nil, "error"); err != nil || o.level != slog.LevelError || !o.given {
		t.Errorf("$%s=error: %+v, %v", logEnv, o, err)
	}
	if o, _, err := parseLogFlags([]string{"--log-level", "info"}, "error"); err != nil || o.level != slog.LevelInfo {
		t.Errorf("--log-level info over $%s=error: %+v, %v", logEnv, o, err)
	}
	for _, bad := range [][]string{{"--log-level", "loud"}, {"--log-format=xml"}, {"--log-format"}} {
		if _, _, err := parseLogFlags(bad, ""); err == nil {
			t.Errorf("parseLogFlags(%q) accepted it", bad)
		}
	}
	if _, _, err := parseLogFlags(nil, "chatty"); err == nil {
		t.Errorf("$%s=chatty accepted", logEnv)
	}
}

// runSelf runs this test binary as the rbd-nbd-graph command (TestMain
// calls main under RBD_NBD_GRAPH_TEST_MAIN=1) with args: an export is
// stopped with SIGTERM once it printed its URI. It returns the exit
// code and stderr.
func runSelf(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(append(os.Environ(), "RBD_NBD_GRAPH_TEST_MAIN=1"), env...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() { // bound every run
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
		}
	}()
	if sc := bufio.NewScanner(out); sc.Scan() && strings.HasPrefix(sc.Text(), "nbd+unix:") {
		cmd.Process.Signal(syscall.SIGTERM)
	}
	cmd.Wait()
	return cmd.ProcessState.ExitCode(), errb.String()
}

// TestLogFlagsRunTheBinary: --log-level and --log-format work anywhere
// on a subcommand's line (after TARGET too), RBD_NBD_GRAPH_LOG is their
// default, and bad values are one clear error.
func TestLogFlagsRunTheBinary(t *testing.T) {
	sock := func() string { return filepath.Join(t.TempDir(), "s") }

	code, errs := runSelf(t, nil, "export", "--socket", sock(), "mem:1M", "--log-format", "json")
	if code != 0 {
		t.Fatalf("export --log-format json: exit %d: %s", code, errs)
	}
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(errs), "\n") {
		var rec struct{ Level, Msg string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Level == "" {
			t.Fatalf("--log-format json: line %q is not a JSON log record: %v", line, err)
		}
		msgs = append(msgs, rec.Msg)
	}
	if !slices.Contains(msgs, "export: serving") {
		t.Errorf("--log-format json: no \"export: serving\" record in %q", msgs)
	}

	code, errs = runSelf(t, nil, "export", "--log-level=warn", "--socket", sock(), "mem:1M")
	if code != 0 || strings.Contains(errs, "export: serving") {
		t.Errorf("--log-level=warn: exit %d, stderr %q; want no INFO lines", code, errs)
	}
	code, errs = runSelf(t, []string{logEnv + "=warn"}, "export", "--socket", sock(), "mem:1M")
	if code != 0 || strings.Contains(errs, "export: serving") {
		t.Errorf("%s=warn: exit %d, stderr %q; want no INFO lines", logEnv, code, errs)
	}
	code, errs = runSelf(t, []string{logEnv + "=warn"}, "export", "--socket", sock(), "--log-level", "info", "mem:1M")
	if code != 0 || !strings.Contains(errs, `level=INFO msg="export: serving"`) {
		t.Errorf("--log-level info over %s=warn: exit %d, stderr %q; want the INFO text line", logEnv, code, errs)
	}

	code, errs = runSelf(t, nil, "list", "--log-format", "xml")
	if code != 2 || strings.Count(errs, "want text or json") != 1 {
		t.Errorf("--log-format xml: exit %d, stderr %q; want 2 and the error once", code, errs)
	}
	code, errs = runSelf(t, nil, "unmap", "-h")
	if code != 0 || !strings.Contains(errs, "--log-format text|json") {
		t.Errorf("unmap -h: exit %d, stderr %q; want the log flags listed", code, errs)
	}
}
