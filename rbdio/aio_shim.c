#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "aio_shim.h"
#include "_cgo_export.h"

rbdio_ring *rbdio_ring_new(void) {
	rbdio_ring *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return NULL;
	r->cap = 256;
	r->q = malloc(r->cap * sizeof(*r->q));
	r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->q == NULL || r->efd < 0) {
		if (r->efd >= 0)
			close(r->efd);
		free(r->q);
		free(r);
		return NULL;
	}
	pthread_mutex_init(&r->mu, NULL);
	return r;
}

size_t rbdio_ring_take(rbdio_ring *r, rbdio_done *out, size_t max) {
	pthread_mutex_lock(&r->mu);
	size_t n = r->n < max ? r->n : max;
	for (size_t i = 0; i < n; i++)
		out[i] = r->q[i];
	for (size_t i = n; i < r->n; i++)
		r->q[i - n] = r->q[i];
	r->n -= n;
	if (n == 0)
		r->waiting = 1;
	pthread_mutex_unlock(&r->mu);
	return n;
}

void rbdio_ring_quiesce(rbdio_ring *r) {
	pthread_mutex_lock(&r->mu);
	pthread_mutex_unlock(&r->mu);
}

void rbdio_ring_free(rbdio_ring *r) {
	pthread_mutex_destroy(&r->mu);
	free(r->q);
	free(r);
}

/* Runs on a librbd thread when a request completes. Everything that
 * touches the ring, the eventfd write included, happens under the lock,
 * so once the Go side has seen the result and quiesced the ring no
 * callback is still using it. The queue grows rather than drop a
 * result; running out of memory here leaves no way to report it. */
static void rbdio_complete_cb(rbd_completion_t c, void *arg) {
	rbdio_req *req = arg;
	rbdio_ring *r = req->ring;
	rbdio_done d = {req->token, (int64_t)rbd_aio_get_return_value(c)};
	rbd_aio_release(c);
	pthread_mutex_lock(&r->mu);
	if (r->n == r->cap) {
		rbdio_done *q = realloc(r->q, 2 * r->cap * sizeof(*q));
		if (q == NULL)
			abort();
		r->q = q;
		r->cap *= 2;
	}
	r->q[r->n++] = d;
	if (r->waiting) {
		uint64_t one = 1;
		r->waiting = 0;
		(void)!write(r->efd, &one, sizeof(one));
	}
	pthread_mutex_unlock(&r->mu);
}

int rbdio_aio_submit(rbd_image_t image, rbdio_req *req, int op, uint64_t off,
                     uint64_t len, char *buf) {
	rbd_completion_t c;
	int r = rbd_aio_create_completion(req, rbdio_complete_cb, &c);
	if (r < 0)
		return r;
	switch (op) {
	case RBDIO_OP_READ:
		r = rbd_aio_read(image, off, (size_t)len, buf, c);
		break;
	case RBDIO_OP_WRITE:
		r = rbd_aio_write(image, off, (size_t)len, buf, c);
		break;
	case RBDIO_OP_FLUSH:
		r = rbd_aio_flush(image, c);
		break;
	case RBDIO_OP_DISCARD:
		r = rbd_aio_discard(image, off, len, c);
		break;
	case RBDIO_OP_WRITE_ZEROES:
		r = rbd_aio_write_zeroes(image, off, (size_t)len, c, 0, 0);
		break;
	case RBDIO_OP_WRITE_ZEROES_THICK:
		r = rbd_aio_write_zeroes(image, off, (size_t)len, c,
		                         RBD_WRITE_ZEROES_FLAG_THICK_PROVISION, 0);
		break;
	default:
		r = -EINVAL;
	}
	if (r < 0)
		rbd_aio_release(c);
	return r;
}

static void rbdio_update_cb(void *arg) {
	rbdioUpdated((uintptr_t)arg);
}

int rbdio_update_watch(rbd_image_t image, uint64_t *handle, uintptr_t token) {
	return rbd_update_watch(image, handle, rbdio_update_cb, (void *)token);
}
