// Package graph is the Docker graph driver: every layer is an RBD image
// (a clone of its parent layer's protected snapshot), attached to the
// kernel through package nbd, formatted once and mounted. It has no cgo:
// the image store is an interface that cmd wires to rbdio.
package graph
