// The C half of rbdio's IO path (see aio.go): per image, a submission
// queue that a C thread empties into librbd's asynchronous calls, and a
// completion ring that librbd's callbacks fill and a Go goroutine
// empties. Go reaches both through shared memory and atomics, not
// through a cgo call; only a request submitted inline (rbdio_aio_submit,
// SubmitInline) enters the Go scheduler's syscall state.
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

/* An image's completions. librbd's threads append under mu: into the
 * ring q while it has room (then advance tail), else into the growable
 * overflow list (and set overflow). The Go goroutine reads q[head..tail)
 * and advances head without a lock, and takes the overflow list through
 * rbdio_ring_take_overflow (a cgo call, only when the ring was full).
 * When it finds nothing it sets waiting and looks once more before
 * blocking on efd; a producer that finds waiting set clears it and
 * writes efd. Indexes and flags use sequentially consistent atomics on
 * both sides (Go's sync/atomic, GCC's __atomic builtins). */
typedef struct rbdio_ring {
	uint32_t head;
	uint32_t tail;
	int32_t waiting;
	int32_t overflow;
	int efd;
	uint32_t cap; /* a power of two */
	rbdio_done *q;
	pthread_mutex_t mu;
	size_t on, ocap;
	rbdio_done *oq;
} rbdio_ring;

/* A request's completion argument: where to queue it, and as what. One
 * per Go request object, reused. */
typedef struct rbdio_req {
	rbdio_ring *ring;
	uintptr_t token;
} rbdio_req;

/* One request for the submitter thread. The buffer is Go memory the Go
 * side pinned (runtime.Pinner) before storing its address here. */
typedef struct rbdio_sub {
	uint64_t off;
	uint64_t len;
	uintptr_t buf;
	rbdio_req *req;
	int32_t op;
} rbdio_sub;

/* An image's submission queue and the thread that empties it into
 * librbd. Go is the single producer (its callers serialise on a Go
 * mutex): it writes a slot, then tail; the thread submits, then advances
 * head. When the queue is empty the thread sets sleeping, looks at tail
 * once more, and blocks on efd; a producer that finds sleeping set
 * clears it and writes efd. Same atomics as rbdio_ring. */
typedef struct rbdio_submitter {
	uint32_t head;
	uint32_t tail;
	int32_t sleeping;
	int32_t stop;
	int efd;
	uint32_t cap; /* a power of two */
	rbdio_sub *q;
	rbd_image_t image;
	pthread_t thread;
} rbdio_submitter;

/* NULL with errno set on failure. cap is a power of two. */
rbdio_ring *rbdio_ring_new(uint32_t cap);
/* Moves up to max results from the overflow list to out; clears
 * overflow once the list is empty. */
size_t rbdio_ring_take_overflow(rbdio_ring *r, rbdio_done *out, size_t max);
/* Waits for a callback still inside the ring's lock to leave it. After
 * this (with no request in flight) nothing touches the ring or efd. */
void rbdio_ring_quiesce(rbdio_ring *r);
/* Frees the ring; efd is closed by its Go owner first. */
void rbdio_ring_free(rbdio_ring *r);

/* Starts the thread. NULL with errno set on failure. */
rbdio_submitter *rbdio_submitter_new(rbd_image_t image, uint32_t cap);
/* Stops the thread once it has submitted everything queued, and frees
 * the submitter. */
void rbdio_submitter_free(rbdio_submitter *s);

/* Starts one request whose result goes to req->ring as req->token.
 * Returns 0, or a negative errno if librbd refused it (then nothing is
 * queued). */
int rbdio_aio_submit(rbd_image_t image, rbdio_req *req, int op, uint64_t off,
                     uint64_t len, char *buf);

/* rbd_update_watch with a callback that calls rbdioUpdated(token). */
int rbdio_update_watch(rbd_image_t image, uint64_t *handle, uintptr_t token);

#endif
