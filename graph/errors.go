package graph

import "errors"

// Errors returned by the Driver. Callers test them with errors.Is; the
// messages that reach dockerd carry the layer ID and the fix.
var (
	// ErrInvalidID: a layer ID that cannot safely become an image name
	// or a directory name.
	ErrInvalidID = errors.New("invalid layer ID")
	// ErrLayerNotFound: no ready layer with that ID.
	ErrLayerNotFound = errors.New("layer not found")
	// ErrLayerExists: Create with an ID that is already in use.
	ErrLayerExists = errors.New("layer already exists")
	// ErrHasChildren: Remove of a layer other layers are cloned from.
	ErrHasChildren = errors.New("layer has child layers")
	// ErrInvalidOption: a driver option or storage-opt that is unknown
	// or has a bad value.
	ErrInvalidOption = errors.New("invalid option")
	// ErrClosed: the driver was cleaned up.
	ErrClosed = errors.New("driver is closed")
	// ErrOwnedElsewhere: the image prefix is in use by another host.
	ErrOwnedElsewhere = errors.New("image prefix is owned by another host")
)

// Errors an ImageStore returns (wrapped with %w), so the Driver can tell
// a missing image from a failed call without matching strings.
var (
	ErrImageNotFound = errors.New("image not found")
	ErrImageExists   = errors.New("image already exists")
	// ErrImageBusy: the image or snapshot is in use (it has clones, or
	// another client has it open).
	ErrImageBusy = errors.New("image busy")
)
