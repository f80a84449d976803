// The C half of rbdio's IO path: librbd's asynchronous calls, whose
// completion callbacks queue the results in a ring that a Go goroutine
// empties, woken through an eventfd. See aio.go.
#ifndef RBDIO_AIO_SHIM_H
#define RBDIO_AIO_SHIM_H

#include <pthread.h>
#include <stddef.h>
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

/* One finished request: the token it was submitted with and librbd's
 * return value. */
typedef struct rbdio_done {
	uintptr_t token;
	int64_t ret;
} rbdio_done;

/* An image's completion queue. librbd's threads append; one Go
 * goroutine takes. efd is written only when that goroutine said it is
 * about to sleep (waiting), so a busy consumer costs no syscalls. */
typedef struct rbdio_ring {
	pthread_mutex_t mu;
	int efd;
	int waiting;
	size_t n, cap;
	rbdio_done *q;
} rbdio_ring;

/* A request's completion argument: where to queue it, and as what. One
 * per Go request object, reused. */
typedef struct rbdio_req {
	rbdio_ring *ring;
	uintptr_t token;
} rbdio_req;

rbdio_ring *rbdio_ring_new(void);
/* Takes up to max results into out. When there are none it marks the
 * consumer waiting, so the next completion writes efd. */
size_t rbdio_ring_take(rbdio_ring *r, rbdio_done *out, size_t max);
/* Waits for a callback still inside the ring's lock to leave it. After
 * this (with no request in flight) nothing touches the ring or efd. */
void rbdio_ring_quiesce(rbdio_ring *r);
/* Frees the ring; efd is closed by its Go owner first. */
void rbdio_ring_free(rbdio_ring *r);

/* Starts one request whose result goes to req->ring as req->token.
 * Returns 0, or a negative errno if librbd refused it (then nothing is
 * queued). */
int rbdio_aio_submit(rbd_image_t image, rbdio_req *req, int op, uint64_t off,
                     uint64_t len, char *buf);

/* rbd_update_watch with a callback that calls rbdioUpdated(token). */
int rbdio_update_watch(rbd_image_t image, uint64_t *handle, uintptr_t token);

#endif
