package graph

import "context"

// Attacher makes images visible to the kernel as block devices. In
// production it opens the image with rbdio and serves it through package
// nbd (graph/nbdattach); graphtest.LoopAttacher uses loop devices over
// graphtest.FileStore files for tests on hosts without NBD.
type Attacher interface {
	// Attach opens the image (or the snapshot, read-only) and returns
	// the device serving it. The device stays attached when ctx ends;
	// only Detach removes it.
	Attach(ctx context.Context, req AttachRequest) (Device, error)
	// Stale lists the devices an earlier run of this host left attached
	// (found by the identifier the attacher gave them), so a restarted
	// driver can adopt or detach them instead of orphaning them.
	Stale(ctx context.Context) ([]StaleDevice, error)
}

// AttachRequest says what to attach.
type AttachRequest struct {
	// Owner identifies the driver instance (a digest of its host and
	// home, Driver.Identity): the attacher records it with the device so
	// that a restarted driver adopts its own devices and never another's
	// on the same host. Stale devices recorded without one (an older
	// version) have it empty.
	Owner string
	Image string
	// Snapshot attaches image@Snapshot (always read-only) when set.
	Snapshot string
	ReadOnly bool
}

// Ref is the image or snapshot the request names.
func (r AttachRequest) Ref() ImageRef { return ImageRef{Image: r.Image, Snapshot: r.Snapshot} }

// Device is an attached block device.
type Device interface {
	// Path is the device node, e.g. /dev/nbd3.
	Path() string
	// Detach stops serving the device, releases it and closes the image.
	Detach(ctx context.Context) error
	// Release stops serving the device and closes the image but leaves
	// the device attached (and whatever is mounted on it) for the next
	// process to adopt through Attacher.Stale: a restart or an upgrade
	// of the driver. The kernel holds the device's IO meanwhile.
	Release(ctx context.Context) error
}

// StaleDevice is a device found attached at start-up.
type StaleDevice interface {
	// Request is what the device serves (decoded from its identifier).
	Request() AttachRequest
	// Path is the device node.
	Path() string
	// Adopt serves the device again (reopening the image) and hands it
	// over as an attached Device, so mounts on it keep working.
	Adopt(ctx context.Context) (Device, error)
	// Detach releases the device without serving it.
	Detach(ctx context.Context) error
	// Served reports whether a live process (not this one) serves the
	// device: then it is not stale at all, and must be left alone.
	Served() bool
}

// DeviceDescriber is an optional ability of an Attacher: a line for
// Status about how devices are served (for example "nbd, 4 connections
// per device, queue depth 64").
type DeviceDescriber interface {
	DescribeDevices() [][2]string
}
