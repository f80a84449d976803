package graph

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// vfsOption is a mount(8) option that mount(2) takes as a flag in its
// mountflags argument rather than in the filesystem's data string: ext4
// and xfs refuse these in data ("Unknown parameter 'nodev'", EINVAL).
type vfsOption struct {
	flag  uintptr
	clear bool // the option turns flag off ("dev", "atime")
}

// vfsOptions are the per-mount VFS options (as mount(8) knows them). Each
// layer's ro/rw is the driver's choice, and bind, remount, move and
// propagation options are no per-layer option at all: those are refused
// (refusedMountOptions).
var vfsOptions = map[string]vfsOption{
	"defaults":      {},
	"nosuid":        {flag: unix.MS_NOSUID},
	"suid":          {flag: unix.MS_NOSUID, clear: true},
	"nodev":         {flag: unix.MS_NODEV},
	"dev":           {flag: unix.MS_NODEV, clear: true},
	"noexec":        {flag: unix.MS_NOEXEC},
	"exec":          {flag: unix.MS_NOEXEC, clear: true},
	"sync":          {flag: unix.MS_SYNCHRONOUS},
	"async":         {flag: unix.MS_SYNCHRONOUS, clear: true},
	"dirsync":       {flag: unix.MS_DIRSYNC},
	"noatime":       {flag: unix.MS_NOATIME},
	"atime":         {flag: unix.MS_NOATIME, clear: true},
	"nodiratime":    {flag: unix.MS_NODIRATIME},
	"diratime":      {flag: unix.MS_NODIRATIME, clear: true},
	"relatime":      {flag: unix.MS_RELATIME},
	"norelatime":    {flag: unix.MS_RELATIME, clear: true},
	"strictatime":   {flag: unix.MS_STRICTATIME},
	"nostrictatime": {flag: unix.MS_STRICTATIME, clear: true},
	"lazytime":      {flag: unix.MS_LAZYTIME},
	"nolazytime":    {flag: unix.MS_LAZYTIME, clear: true},
	"silent":        {flag: unix.MS_SILENT},
	"loud":          {flag: unix.MS_SILENT, clear: true},
}

// refusedMountOptions say why they cannot be rbd.mountopt values.
var refusedMountOptions = map[string]string{
	"ro":          "the driver mounts each layer read-only or read-write itself",
	"rw":          "the driver mounts each layer read-only or read-write itself",
	"remount":     "not a mount of its own",
	"move":        "not a mount of its own",
	"bind":        "a layer is a device, not a bind mount",
	"rbind":       "a layer is a device, not a bind mount",
	"shared":      "propagation is not a per-layer option",
	"rshared":     "propagation is not a per-layer option",
	"slave":       "propagation is not a per-layer option",
	"rslave":      "propagation is not a per-layer option",
	"private":     "propagation is not a per-layer option",
	"rprivate":    "propagation is not a per-layer option",
	"unbindable":  "propagation is not a per-layer option",
	"runbindable": "propagation is not a per-layer option",
}

// splitMountOptions splits mount(8)-style options into mount(2)'s flags
// and the filesystem's data (everything else, in order, e.g. ext4's
// "discard" or xfs's "nouuid"). Later options override earlier ones, as
// with mount(8).
func splitMountOptions(opts []string) (flags uintptr, data []string, err error) {
	for _, o := range opts {
		if why, ok := refusedMountOptions[o]; ok {
			return 0, nil, fmt.Errorf("mount option %q: %s", o, why)
		}
		v, ok := vfsOptions[o]
		switch {
		case !ok:
			data = append(data, o)
		case v.clear:
			flags &^= v.flag
		default:
			flags |= v.flag
		}
	}
	return flags, data, nil
}
