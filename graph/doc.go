// Package graph is the layer store behind the Docker graph driver: every
// layer is a block image (in production a Ceph RBD image), attached to
// the kernel, formatted once and mounted. It knows nothing of dockerd's
// protocol (graph/dockerplugin speaks that), so another front end, such
// as a containerd snapshotter, can sit beside it.
//
// The model:
//
//   - A base image per root identity (<prefix>base, or
//     <prefix>base-UID-GID under user-namespace remapping), of
//     Options.BaseSize, formatted once with a rootfs directory owned by
//     that root. Layer content lives in rootfs, so lost+found stays out of
//     sight, as in moby's devicemapper driver.
//   - Each layer (<prefix>layer-<ID>) is a clone of the snapshot "layer" of
//     its parent (or of the base). A parent is snapshotted once, when it
//     gets its first child; if it is mounted read-write then, it is frozen
//     for the snapshot. Once a layer has a snapshot it is attached
//     read-only, from the snapshot, exactly what its children see.
//   - Clone chains are bounded: a layer deeper than Options.MaxCloneDepth
//     is flattened, in the background or before Create returns.
//   - Get attaches (Attacher) and mounts (Filesystem) on the first
//     reference; Put unmounts and detaches on the last, or, with
//     Options.UnmountDelay, syncs a writable layer and keeps it mounted,
//     idle, for that long, so a Get meanwhile costs nothing. A layer
//     getting its first child, Remove, AttachDevice, Publish and Close
//     release an idle mount first; Release hands it over and the next
//     start arms its delay again (after a crash every mount found counts
//     as in use). Each layer has a lock; a Get that fails half way undoes
//     what it did.
//   - Remove returns once the layer's record durably says removing and
//     the layer is out of the tables; its snapshot and image are deleted
//     in the background, in the order layers were removed (children
//     first), and a layer with children is refused at once.
//     WaitRemovals waits for those deletions; Close finishes them.
//     Every deletion of a layer's snapshot or image goes through
//     Config.Deletions when set (the same pool on a connection of its
//     own, so deletions never queue ahead of a Create's or Get's image
//     opens), else through Config.Store.
//   - Every layer's state (creating, ready, removing) is image metadata,
//     changed only by transition, in a record that names its image: an
//     RBD clone starts with a copy of its parent's metadata, which is not
//     its own. New finishes or undoes what a crash interrupted and adopts
//     devices still mounted from an earlier run.
//
// The boundaries are small interfaces: ImageStore (graph/rbdstore on an
// RBD pool; graphtest.FileStore for tests), Attacher (graph/nbdattach
// serves images through package nbd; graphtest.LoopAttacher for tests)
// and Filesystem (NewFilesystem: mkfs, mount(2), online grow, freeze);
// Observer (observe.go; internal/metrics in production) sees every
// layer operation with its duration, and the flattens pending.
// This package imports neither adapter.
//
// Files: driver.go (Driver, Config), startup.go (New), layers.go
// (Create, Remove), reap.go (deleting removed layers), mount.go (Get, Put), shutdown.go (Close, Release),
// undo.go (the undo stack), state.go (the state machine), recover.go
// (start-up adoption), flatten.go (background flattening), options.go
// (the layer options, and OptionSet: how a front end parses them with
// the store's and the attacher's), naming.go (IDs, image names, metadata
// keys), store.go, attach.go and fs.go (the boundaries), status.go
// (docker info), space.go (a full pool, for Status and the log),
// block.go (devices for a front end that mounts them itself) and
// shared.go (layers published under cluster-wide names).
//
// This package has no cgo.
package graph
