// Package dockerplugin serves graph.Driver to dockerd as a graphdriver
// plugin (the protocol dockerd 20.10 speaks over
// /run/docker/plugins/<name>.sock).
//
//   - plugin.go: Plugin implements go-plugins-helpers' graphdriver.Driver.
//     Each dockerd Init opens a backend (store and attacher, from the
//     options) and a graph.Driver; Cleanup closes them. Diff, Changes,
//     ApplyDiff and DiffSize come from docker's NaiveDiffDriver over the
//     driver's Get and Put; user-namespace maps from Init reach both the
//     driver (owner of layer roots) and the diff (tar ownership).
//   - handler.go: the HTTP front. It answers malformed requests and
//     unknown methods with {"Err": ...}, serves Diff so its failures are
//     reported, and passes the rest to the helper's handler in process.
//   - listen.go: the 0600 unix socket and a Serve loop that shuts down
//     cleanly (Cleanup) when its context ends.
//
// ApplyDiff unpacks through docker's chrootarchive, which re-executes
// the binary: main (and TestMain) must call reexec.Init first.
package dockerplugin
