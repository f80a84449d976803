// rbd_flatten_with_progress with a cancel flag: librbd calls the
// progress callback after each object it copies, and a negative return
// stops the flatten (objects in flight finish; nothing is undone, and a
// later flatten carries on where this one stopped).
#include <errno.h>
#include <rbd/librbd.h>

static int rbdio_flatten_progress(uint64_t offset, uint64_t total, void *arg) {
	(void)offset;
	(void)total;
	return __atomic_load_n((int *)arg, __ATOMIC_ACQUIRE) ? -ECANCELED : 0;
}

int rbdio_flatten(rbd_image_t image, int *cancel) {
	return rbd_flatten_with_progress(image, rbdio_flatten_progress, cancel);
}

void rbdio_flatten_cancel(int *cancel) {
	__atomic_store_n(cancel, 1, __ATOMIC_RELEASE);
}
