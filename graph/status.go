package graph

import (
	"bytes"
	"fmt"
	"strconv"

	units "github.com/docker/go-units"
	"golang.org/x/sys/unix"
)

// Status is what `docker info` shows under "Storage Driver": where the
// layers are, how many, how they reach the kernel, and the versions an
// operator needs when reporting a problem.
func (d *Driver) Status() [][2]string {
	d.mu.Lock()
	ready, mounted, maxDepth := 0, 0, 0
	for _, l := range d.layers {
		if l.state == StateReady {
			ready++
		}
		if l.mount != nil {
			mounted++
		}
		maxDepth = max(maxDepth, d.depthLocked(l))
	}
	base := d.base
	d.mu.Unlock()

	loc := "-"
	if q, ok := d.store.(StoreDescriber); ok {
		loc = q.Location()
	}
	st := [][2]string{
		{"Pool", loc},
	}
	if d.space != nil {
		st = append(st, d.space.status()...)
	}
	st = append(st, [][2]string{
		{"Image Prefix", d.names.prefix},
	}...)
	if ss, ok := d.store.(StoreStatuser); ok {
		st = append(st, ss.StoreStatus()...)
	}
	if ss, ok := d.dels.(StoreStatuser); ok && d.delsOwn {
		for _, kv := range ss.StoreStatus() {
			st = append(st, [2]string{"Deletions " + kv[0], kv[1]})
		}
	}
	if base != nil {
		st = append(st, [2]string{"Base Image", fmt.Sprintf("%s (%s, %s)", base.image, units.BytesSize(float64(base.size)), d.fs.Type())})
	}
	deleting := 0
	if d.reap != nil {
		deleting = d.reap.pending()
	}
	st = append(st,
		[2]string{"Layers", fmt.Sprintf("%d (removed, being deleted: %d)", ready, deleting)},
		[2]string{"Attached Devices", strconv.Itoa(mounted)},
	)
	if dd, ok := d.attacher.(DeviceDescriber); ok {
		st = append(st, dd.DescribeDevices()...)
	}
	pending := 0
	if d.flat != nil {
		pending = d.flat.pending()
	}
	st = append(st,
		[2]string{"Clone Depth Limit", fmt.Sprintf("%d (flatten: %s; deepest now %d; flattens pending %d)", d.opts.MaxCloneDepth, d.opts.Flatten, maxDepth, pending)},
	)
	if v, ok := d.store.(StoreVersioner); ok {
		label, version := v.StoreVersion()
		st = append(st, [2]string{label, version})
	}
	st = append(st, [2]string{"Kernel Version", kernelVersion()})
	return st
}

func kernelVersion() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return string(bytes.TrimRight(u.Release[:], "\x00"))
}
