#include "aio_shim.h"
#include "_cgo_export.h"

/* Runs on a librbd thread when a request completes. The completion is
 * released here, before Go sees the result, so nothing in Go holds C
 * state. */
static void rbdio_complete_cb(rbd_completion_t c, void *arg) {
	ssize_t ret = rbd_aio_get_return_value(c);
	rbd_aio_release(c);
	rbdioComplete((uintptr_t)arg, (int64_t)ret);
}

int rbdio_aio_submit(rbd_image_t image, int op, uint64_t off, uint64_t len,
                     char *buf, uintptr_t token) {
	rbd_completion_t c;
	int r = rbd_aio_create_completion((void *)token, rbdio_complete_cb, &c);
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
		r = -22; /* EINVAL */
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
