package graph

import (
	"os"
	"syscall"
)

// CrashEnv names the environment variable that makes a process kill
// itself (SIGKILL) right after one named step of the layer store's
// operations, so tests can check what a crash at that point leaves
// behind. Unset, nothing happens: the hooks are compiled in but inert.
const CrashEnv = "RBD_NBD_GRAPH_CRASH_AT"

// The steps a CrashHook is called after, each the moment a durable
// change has just been made. The store adds its own inside one call
// (StepSnapshotCreated ... StepSnapshotRemoved: an RBD snapshot is made,
// then protected, and unprotected, then removed).
const (
	StepCreateSnapshotParent = "create:snapshot-parent" // the parent has its protected snapshot
	StepCreateClone          = "create:clone"           // the layer's image is cloned, no record yet
	StepCreateGrow           = "create:grow"            // image and filesystem grown
	StepCreateFlatten        = "create:flatten"         // flattened before Create returns
	StepCreateReady          = "create:ready"           // the record says ready
	StepRemoveStateRemoving  = "remove:state-removing"  // the record says removing (Remove returns next)
	StepRemoveSnapshot       = "remove:snapshot"        // the layer's snapshot is gone (in the background)
	StepRemoveImage          = "remove:image"           // the image is gone (in the background)
	StepFlattenDone          = "flatten:done"           // a background flatten finished

	StepSnapshotCreated     = "snapshot:created"     // the snapshot exists, not yet protected
	StepSnapshotProtected   = "snapshot:protected"   // and is protected
	StepSnapshotUnprotected = "snapshot:unprotected" // unprotected, not yet removed
	StepSnapshotRemoved     = "snapshot:removed"     // removed
)

// CrashHook is called after each step above with its name. Tests set one
// (Config.CrashHook) to stop a driver at a step; see CrashAtFromEnv for
// the one that kills the process.
type CrashHook func(step string)

// CrashAtFromEnv returns a hook that SIGKILLs this process after the
// step $RBD_NBD_GRAPH_CRASH_AT names, or nil when the variable is unset.
func CrashAtFromEnv() CrashHook {
	at := os.Getenv(CrashEnv)
	if at == "" {
		return nil
	}
	return func(step string) {
		if step == at {
			// No deferred call, no flush, no unlock: as a crash.
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
}

// step reports that the named step just finished to the crash hook.
func (d *Driver) step(name string) {
	if d.crash != nil {
		d.crash(name)
	}
}
