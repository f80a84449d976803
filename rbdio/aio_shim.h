// The C half of rbdio's IO path: librbd's asynchronous calls with a
// completion callback that hands the result back to Go. See aio.go.
#ifndef RBDIO_AIO_SHIM_H
#define RBDIO_AIO_SHIM_H

#include <stdint.h>
#include <rbd/librbd.h>

enum {
	RBDIO_OP_READ = 0,
	RBDIO_OP_WRITE = 1,
	RBDIO_OP_FLUSH = 2,
	RBDIO_OP_DISCARD = 3,
	RBDIO_OP_WRITE_ZEROES = 4,       /* may deallocate */
	RBDIO_OP_WRITE_ZEROES_THICK = 5, /* stays allocated */
};

/* Starts one request; token comes back to rbdioComplete with the result.
 * Returns 0, or a negative errno if librbd refused the request (then no
 * completion will come). */
int rbdio_aio_submit(rbd_image_t image, int op, uint64_t off, uint64_t len,
                     char *buf, uintptr_t token);

/* rbd_update_watch with a callback that calls rbdioUpdated(token). */
int rbdio_update_watch(rbd_image_t image, uint64_t *handle, uintptr_t token);

#endif
