package graph

import "time"

// Observer sees the driver's layer operations, for metrics (package
// internal/metrics implements it; graph does not import Prometheus).
// LayerOp is called once per operation when it ends, from the goroutine
// that ran it; it must be safe for concurrent use and should be quick.
type Observer interface {
	// LayerOp: an operation of kind op (the Op* constants) ended after
	// took, with err (nil on success).
	LayerOp(op string, took time.Duration, err error)
	// FlattensPendingFrom gives the observer the driver's count of
	// layers queued for or being flattened, to read when it likes.
	FlattensPendingFrom(pending func() int)
}

// The kinds of operation an Observer sees.
const (
	OpCreate   = "create"   // a layer made as a clone (Create, CreateFrom)
	OpRemove   = "remove"   // a layer removed (its images are deleted in the background)
	OpDelete   = "delete"   // a removed layer's snapshot and image deleted, in the background
	OpSnapshot = "snapshot" // a parent's snapshot made and protected for its first child
	OpMount    = "mount"    // attach and mount (Get's first reference)
	OpUnmount  = "unmount"  // unmount and detach (Put's last reference, Remove)
	OpAttach   = "attach"   // a device for a front end that mounts itself (AttachDevice)
	OpDetach   = "detach"   // its detach (DetachDevice)
	OpFlatten  = "flatten"  // a layer's image flattened off its clone chain
	OpPublish  = "publish"  // a committed layer published under a shared name
)

// observe reports an operation that began at start and ended with *err;
// deferred as `defer d.observe(OpX, time.Now(), &err)`.
func (d *Driver) observe(op string, start time.Time, err *error) {
	if d.obs != nil {
		d.obs.LayerOp(op, time.Since(start), *err)
	}
}
