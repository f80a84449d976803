package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph/nbdattach"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// mapping is one line of 'list'. The JSON carries rbd-nbd's
// `list-mapped --format json` fields too (id, pool, namespace, image,
// snap, device, cookie, with its names), so a script written for rbd-nbd
// reads ours; for a target that is not an RBD image pool and image are
// empty.
type mapping struct {
	// rbd-nbd's fields: id is the serving process (0: none), cookie the
	// kernel's backend identifier.
	ID        int    `json:"id"`
	Pool      string `json:"pool"`
	Namespace string `json:"namespace"`
	Image     string `json:"image"`
	Snap      string `json:"snap"`
	Cookie    string `json:"cookie"`
	Device    string `json:"device"`
	Index     int    `json:"index"`
	Target    string `json:"target"`
	PID       int    `json:"pid"` // the live serving process, 0 if none
	Size      int64  `json:"size"`
	ReadOnly  bool   `json:"read_only"`
	Connected bool   `json:"connected"`
	BackendID string `json:"backend_id"`
	// From the serving process (0 when none records them): the
	// connections it was configured with, those the kernel uses now,
	// and how many it replaced after the kernel dropped them.
	Connections         int   `json:"connections,omitempty"`
	ConnectionsLive     int   `json:"connections_live"`
	ConnectionsReplaced int64 `json:"connections_replaced"`
}

// runList: list [--format plain|json] [--all].
func runList(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "list", "list [--format plain|json] [--all]",
		"Lists the kernel NBD devices rbd-nbd-graph serves (map, attach, and the layers of serve\n"+
			"and snapshotter): device, serving process, size, read-only, target. --format json adds\n"+
			"rbd-nbd's list-mapped fields (id, pool, namespace, image, snap, device, cookie).")
	format := fs.String("format", "plain", "output format: plain or json")
	all := fs.Bool("all", false, "every NBD device, not only the ones rbd-nbd-graph serves")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: list takes no arguments, got %q", errUsage, fs.Args())
	}
	if *format != "plain" && *format != "json" {
		return fmt.Errorf("%w: --format %q: want plain or json", errUsage, *format)
	}
	devs, err := nbd.List(ctx)
	if err != nil {
		return err
	}
	out := []mapping{}
	for _, d := range devs {
		id, ours := nbdattach.ParseBackendID(d.BackendID)
		if !*all && !(d.Connected && ours) {
			continue
		}
		m := mapping{Device: d.Path, Index: d.Index, PID: nbdattach.ServerPID(d), Size: d.Size, ReadOnly: d.ReadOnly,
			Connected: d.Connected, BackendID: d.BackendID}
		if st, ok := nbdattach.ReadConnState(d.Index); ok {
			m.Connections, m.ConnectionsLive, m.ConnectionsReplaced = st.Configured, st.Live, st.Replaced
		}
		if ours {
			m.Target = id.Target
		}
		m.ID, m.Cookie = m.PID, m.BackendID
		m.Pool, m.Namespace, m.Image, m.Snap = rbdFields(id, ours)
		out = append(out, m)
	}
	if *format == "json" {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tPID\tSIZE\tRO\tTARGET")
	for _, m := range out {
		target := m.Target
		if target == "" {
			target = "-"
			if m.BackendID != "" {
				target = "(" + m.BackendID + ")"
			}
		}
		pid := "-"
		if m.PID > 0 {
			pid = fmt.Sprint(m.PID)
		}
		ro := "no"
		if m.ReadOnly {
			ro = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Device, pid, humanBytes(m.Size), ro, target)
	}
	return tw.Flush()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// rbdFields are rbd-nbd's pool, namespace, image and snap of a device:
// from the target of a mapped RBD image (rbd:SPEC or bare SPEC), or the
// layer image of a graph driver's device; empty for other targets.
func rbdFields(id nbdattach.BackendID, ours bool) (pool, namespace, image, snap string) {
	if !ours {
		return
	}
	spec := id.Target
	if id.Layer {
		spec = id.Where + "/" + id.Ref.String()
	} else if rest, ok := strings.CutPrefix(spec, "rbd:"); ok {
		spec = rest
	} else if strings.Contains(spec, ":") {
		return // mem:, file:
	}
	t, err := parseRBDTarget(spec)
	if err != nil {
		return
	}
	return t.pool, t.namespace, t.image, t.snap
}
