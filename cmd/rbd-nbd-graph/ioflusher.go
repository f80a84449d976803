package main

/*
#include <errno.h>
#include <string.h>
#include <sys/prctl.h>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

// -1: not a serving command; 0: set; else the errno of prctl.
static int ioflusher_result = -1;

// Runs before the Go runtime starts any thread (glibc passes argc and
// argv to constructors), so every thread of the process inherits the
// flag: PR_SET_IO_FLUSHER applies to the calling thread and its future
// children only.
__attribute__((constructor)) static void rbdnbdgraph_set_io_flusher(int argc, char **argv) {
	if (argc < 2) {
		return;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "map") != 0 && strcmp(cmd, "attach") != 0) {
		return;
	}
	ioflusher_result = prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0 ? 0 : errno;
}

static int rbdnbdgraph_io_flusher(void) { return ioflusher_result; }
*/
import "C"

import (
	"log/slog"
	"syscall"
)

// A process that serves a kernel block device must not wait, when it
// allocates memory, for writeback to that very device: PR_SET_IO_FLUSHER
// (Linux 5.6) makes the kernel treat it as a writeback helper (no IO in
// its allocations, no dirty throttling of others' writes charged to it).
// The kernel documents it for userspace block drivers such as NBD
// servers. It is set by a C constructor before the runtime's threads
// exist; this reports how that went.
func logIOFlusher(log *slog.Logger) {
	switch r := int(C.rbdnbdgraph_io_flusher()); r {
	case -1:
	case 0:
		log.Debug("PR_SET_IO_FLUSHER set: this process serves block devices")
	default:
		log.Warn("could not set PR_SET_IO_FLUSHER (needs Linux 5.6 and CAP_SYS_RESOURCE): under memory pressure this process may wait for writeback to the devices it serves",
			"err", syscall.Errno(r))
	}
}
