// Package nbd speaks the Network Block Device protocol, both to userspace
// clients over a socket (the fixed-newstyle handshake, then transmission)
// and to the Linux kernel (generic netlink family "nbd": CONNECT,
// DISCONNECT, RECONFIGURE, STATUS, with the transmission phase over a
// socketpair per connection).
//
// The pieces:
//   - backend.go: the Backend interface every store implements, and its
//     optional abilities (Discarder, ZeroWriter, Resizer).
//
// This package has no cgo so its tests run anywhere.
package nbd
