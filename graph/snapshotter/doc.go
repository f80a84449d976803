// Package snapshotter is containerd's snapshots.Snapshotter over the
// graph layer core: the second front end beside graph/dockerplugin, on
// the same Driver, images and devices (one store, two front ends).
//
// The contract:
//
//   - Names, kinds, parents, labels and usage live in containerd's
//     snapshots/storage MetaStore (bolt, <home>/metadata.db), as in
//     containerd's devmapper snapshotter. Snapshot N of the MetaStore is
//     layer "ctr-N" of the Driver, which runs with BlockDevices (the
//     content is the root of each filesystem).
//   - Prepare clones a layer from the parent's snapshot and attaches it
//     read-write; View clones one and attaches it read-only. Mounts are
//     block-device mounts, {Type: ext4|xfs, Source: /dev/nbdN, Options:
//     [rw|ro (, nouuid)]}; containerd mounts them. The device stays
//     attached while the active snapshot or view exists.
//   - Commit detaches the device, snapshots and protects the layer
//     (Driver.Seal) and records it committed with its usage, all inside
//     one MetaStore transaction: a failure leaves the active snapshot.
//   - Remove refuses a snapshot with children (FailedPrecondition),
//     drops the record and queues the layer's detach and deletion, which
//     a background reaper does after the commit, in order (reaper.go:
//     containerd's GC calls Remove and Cleanup under its lock, and
//     containerd 1.6 loses deletions made during a long pass);
//     WaitRemovals waits for the queue and the store's own deletions
//     (graph.Driver.WaitRemovals). Cleanup deletes layers no
//     snapshot names (a crash between the layer and the record, a
//     deletion that failed), leaving queued ones to the reaper.
//   - Errors carry containerd's errdefs codes (NotFound, AlreadyExists,
//     FailedPrecondition, InvalidArgument), which snapshotservice turns
//     into gRPC codes.
//   - Release hands attached devices over to the next process (a restart
//     under running containers); graph.New adopts them.
//   - With Config.SharedPrefix, committed layers carrying a chain ID are
//     published cluster-wide under it and found again by other hosts
//     (remote snapshots, remote.go: atomic publish by rename, per-host
//     uses recorded on the shared image, one wins on a concurrent commit).
package snapshotter
