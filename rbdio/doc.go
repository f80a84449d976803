// Package rbdio opens Ceph RBD images with librbd (through go-ceph) and
// serves them as nbd.Backend values. It is the only package that uses cgo.
package rbdio
