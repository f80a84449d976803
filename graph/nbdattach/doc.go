// Package nbdattach serves layer images to the kernel as NBD devices in
// this process: Attacher implements graph.Attacher (with
// DeviceDescriber) over package nbd's netlink devices and Go IO loop,
// with no helper process and no krbd.
//
// The contract, beyond graph.Attacher's:
//
//   - Every device this project attaches carries a backend identifier
//     starting with BackendPrefix; a layer's names its owner (the
//     driver's identity), pool and image, so a restarted driver finds
//     and adopts its own devices, and only those. backendid.go is the
//     one encoder and decoder of these identifiers (map's targets too);
//     lookup.go finds the device of a target.
//   - The process serving a device records itself (pidfile.go) and the
//     device's connection counts (connstate.go) under /run/rbd-nbd-graph,
//     because the kernel's pid names whoever sent CONNECT, dead after a
//     reattach. `rbd-nbd-graph list` reads them.
//   - A device ends by Detach (disconnect) or Release (left to the kernel
//     for the next process); an image with requests still in flight in
//     librbd is not closed, so a hung cluster cannot hang the caller.
//   - Options owns the nbd.* keys (a graph.OptionSet); New builds the
//     attacher from them. Probe checks at start-up that the kernel has NBD.
//
// This package has no cgo; images come from an ImageOpener (in
// production rbdstore.Store.OpenImage).
package nbdattach
