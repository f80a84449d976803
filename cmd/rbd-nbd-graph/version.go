package main

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime/debug"

	"github.com/ceph/go-ceph/rbd"
)

// version and commit are set by the Makefile (-ldflags "-X
// main.version=... -X main.commit=..."), from git describe and git
// rev-parse. A plain `go build` leaves them empty: the build info's vcs
// settings stand in (absent under -buildvcs=false, as GOFLAGS here has).
var version, commit string

// versionInfo is what `version` and `--version` print.
type versionInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Dirty   bool   `json:"dirty,omitempty"`
	Go      string `json:"go"`
	GoCeph  string `json:"go_ceph"`
	Librbd  string `json:"librbd"`
}

// buildVersion reads the build info the Go toolchain embeds (vcs.*
// settings, the go-ceph module's version) and asks the librbd this
// process linked against for its version.
func buildVersion() versionInfo {
	v := versionInfo{Version: version, Commit: commit, GoCeph: "unknown"}
	if v.Commit == "" {
		v.Commit = "unknown"
	}
	maj, min, patch := rbd.Version()
	v.Librbd = fmt.Sprintf("%d.%d.%d", maj, min, patch)
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Go = bi.GoVersion
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if commit == "" {
				v.Commit = s.Value
			}
		case "vcs.modified":
			v.Dirty = commit == "" && s.Value == "true"
		}
	}
	for _, d := range bi.Deps {
		if d.Path == "github.com/ceph/go-ceph" {
			v.GoCeph = d.Version
			if d.Replace != nil {
				v.GoCeph = d.Replace.Version
			}
		}
	}
	if v.Version == "" {
		v.Version = bi.Main.Version // "(devel)" for a build from a work tree
	}
	return v
}

// runVersion: version [--format plain|json].
func runVersion(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "version", "version [--format plain|json]",
		"Prints this binary's version, the commit it was built from, the Go toolchain, the go-ceph\n"+
			"module and the librbd library it runs with (rbd_version()). Also: rbd-nbd-graph --version.")
	format := fs.String("format", "plain", "output format: plain or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: version takes no arguments, got %q", errUsage, fs.Args())
	}
	v := buildVersion()
	switch *format {
	case "json":
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "plain":
		commit := v.Commit
		if v.Dirty {
			commit += " (modified)"
		}
		fmt.Fprintf(env.stdout, "rbd-nbd-graph %s\ncommit:  %s\ngo:      %s\ngo-ceph: %s\nlibrbd:  %s\n",
			v.Version, commit, v.Go, v.GoCeph, v.Librbd)
		return nil
	}
	return fmt.Errorf("%w: --format %q: want plain or json", errUsage, *format)
}
