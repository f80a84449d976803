#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "aio_shim.h"
#include "_cgo_export.h"

#define LOAD(p) __atomic_load_n(p, __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n(p, v, __ATOMIC_SEQ_CST)
#define XCHG(p, v) __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST)

rbdio_ring *rbdio_ring_new(uint32_t cap) {
	rbdio_ring *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return NULL;
	r->cap = cap;
	r->q = calloc(cap, sizeof(*r->q));
	r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->q == NULL || r->efd < 0) {
		int e = errno;
		if (r->efd >= 0)
			close(r->efd);
		free(r->q);
		free(r);
		errno = e;
		return NULL;
	}
	pthread_mutex_init(&r->mu, NULL);
	return r;
}

size_t rbdio_ring_take_overflow(rbdio_ring *r, rbdio_done *out, size_t max) {
	pthread_mutex_lock(&r->mu);
	size_t n = r->on < max ? r->on : max;
	for (size_t i = 0; i < n; i++)
		out[i] = r->oq[i];
	for (size_t i = n; i < r->on; i++)
		r->oq[i - n] = r->oq[i];
	r->on -= n;
	if (r->on == 0)
		STORE(&r->overflow, 0);
	pthread_mutex_unlock(&r->mu);
	return n;
}

void rbdio_ring_quiesce(rbdio_ring *r) {
	pthread_mutex_lock(&r->mu);
	pthread_mutex_unlock(&r->mu);
}

void rbdio_ring_free(rbdio_ring *r) {
	pthread_mutex_destroy(&r->mu);
	free(r->oq);
	free(r->q);
	free(r);
}

/* Appends a result and wakes the consumer if it sleeps. Everything that
 * touches the ring, the eventfd write included, happens under the lock,
 * so once the Go side has seen the last result and quiesced the ring no
 * producer is still using it. Running out of memory for the overflow
 * list leaves no way to report the result: abort. */
static void rbdio_ring_push(rbdio_ring *r, uintptr_t token, int64_t ret) {
	pthread_mutex_lock(&r->mu);
	uint32_t t = r->tail;
	if (r->on == 0 && t - LOAD(&r->head) < r->cap) {
		r->q[t & (r->cap - 1)].token = token;
		r->q[t & (r->cap - 1)].ret = ret;
		STORE(&r->tail, t + 1);
	} else {
		if (r->on == r->ocap) {
			size_t ncap = r->ocap ? 2 * r->ocap : 256;
			rbdio_done *q = realloc(r->oq, ncap * sizeof(*q));
			if (q == NULL)
				abort();
			r->oq = q;
			r->ocap = ncap;
		}
		r->oq[r->on].token = token;
		r->oq[r->on].ret = ret;
		r->on++;
		STORE(&r->overflow, 1);
	}
	if (XCHG(&r->waiting, 0)) {
		uint64_t one = 1;
		(void)!write(r->efd, &one, sizeof(one));
	}
	pthread_mutex_unlock(&r->mu);
}

/* Runs on a librbd thread when a request completes. */
static void rbdio_complete_cb(rbd_completion_t c, void *arg) {
	rbdio_req *req = arg;
	int64_t ret = rbd_aio_get_return_value(c);
	rbd_aio_release(c);
	rbdio_ring_push(req->ring, req->token, ret);
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

static void *rbdio_submit_loop(void *arg) {
	rbdio_submitter *s = arg;
	uint32_t mask = s->cap - 1;
	uint32_t h = s->head;
	for (;;) {
		uint32_t t = LOAD(&s->tail);
		if (h == t) {
			STORE(&s->sleeping, 1);
			t = LOAD(&s->tail);
			if (h == t) {
				if (LOAD(&s->stop))
					return NULL;
				uint64_t v;
				(void)!read(s->efd, &v, sizeof(v));
				continue;
			}
			/* Work came in after all. If a producer cleared sleeping
			 * it also wrote efd: the next read returns at once. */
			STORE(&s->sleeping, 0);
		}
		for (; h != t; h++) {
			rbdio_sub *q = &s->q[h & mask];
			int r = rbdio_aio_submit(s->image, q->req, q->op, q->off, q->len,
			                         (char *)q->buf);
			if (r < 0) /* refused at once: report it like a completion */
				rbdio_ring_push(q->req->ring, q->req->token, r);
			STORE(&s->head, h + 1);
		}
	}
}

rbdio_submitter *rbdio_submitter_new(rbd_image_t image, uint32_t cap) {
	rbdio_submitter *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->cap = cap;
	s->image = image;
	s->q = calloc(cap, sizeof(*s->q));
	s->efd = eventfd(0, EFD_CLOEXEC); /* blocking: the thread sleeps in read */
	int r = 0;
	if (s->q == NULL || s->efd < 0)
		r = errno;
	else
		r = pthread_create(&s->thread, NULL, rbdio_submit_loop, s);
	if (r == 0)
		pthread_setname_np(s->thread, "rbdio-submit");
	if (r != 0) {
		if (s->efd >= 0)
			close(s->efd);
		free(s->q);
		free(s);
		errno = r;
		return NULL;
	}
	return s;
}

void rbdio_submitter_free(rbdio_submitter *s) {
	uint64_t one = 1;
	STORE(&s->stop, 1);
	(void)!write(s->efd, &one, sizeof(one));
	pthread_join(s->thread, NULL);
	close(s->efd);
	free(s->q);
	free(s);
}

static void rbdio_update_cb(void *arg) {
	rbdioUpdated((uintptr_t)arg);
}

int rbdio_update_watch(rbd_image_t image, uint64_t *handle, uintptr_t token) {
	return rbd_update_watch(image, handle, rbdio_update_cb, (void *)token);
}
