// Package unixsock creates listening unix sockets with their final
// permissions from the first moment they exist.
//
// bind(2) creates the socket file with mode 0777 minus the umask, so a
// bind followed by chmod leaves a window where anyone may connect, and
// under umask 000 the socket stays world-writable. Listen instead binds
// in a fresh directory only the caller can enter (mode 0700), sets the
// mode and group there, and renames the socket into place: the path
// never names a socket wider than asked. The umask, which is process
// state shared by every goroutine, is never touched.
package unixsock
