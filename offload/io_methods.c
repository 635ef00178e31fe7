/* The default I/O method table: the kernel, directly. */
#include "io_methods.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int default_open(void *ctx, const char *path, int direct)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
	return fd < 0 ? -errno : fd;
}

static int default_close(void *ctx, int fd)
{
	return close(fd) < 0 ? -errno : 0;
}

static long default_pread(void *ctx, int fd, void *buf, size_t len, uint64_t offset)
{
	for (;;) {
		ssize_t r = pread(fd, buf, len, (off_t)offset);
		if (r >= 0)
			return (long)r;
		if (errno != EINTR)
			return -errno;
	}
}

static int64_t default_size(void *ctx, int fd)
{
	struct stat st;
	return fstat(fd, &st) < 0 ? -errno : (int64_t)st.st_size;
}

static int default_lock(void *ctx, void *addr, size_t len)
{
	return mlock(addr, len) < 0 ? -errno : 0;
}

static int default_unlock(void *ctx, void *addr, size_t len)
{
	return munlock(addr, len) < 0 ? -errno : 0;
}

static int default_ring_init(void *ctx, struct io_uring *ring, unsigned entries)
{
	return io_uring_queue_init(entries, ring, 0);
}

static void default_ring_exit(void *ctx, struct io_uring *ring)
{
	io_uring_queue_exit(ring);
}

static int default_register_buffers(void *ctx, struct io_uring *ring, const struct iovec *iov, unsigned n)
{
	return io_uring_register_buffers(ring, iov, n);
}

static int default_prep_read(void *ctx, struct io_uring *ring, const struct dsm_io_read *rd)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (!sqe)
		return -EBUSY;
	if (rd->buf_index >= 0)
		io_uring_prep_read_fixed(sqe, rd->fd, rd->buf, (unsigned)rd->len, rd->offset, rd->buf_index);
	else
		io_uring_prep_read(sqe, rd->fd, rd->buf, (unsigned)rd->len, rd->offset);
	io_uring_sqe_set_data64(sqe, rd->user_data);
	return 0;
}

static int default_submit(void *ctx, struct io_uring *ring)
{
	for (;;) {
		int r = io_uring_submit(ring);
		if (r != -EINTR)
			return r;
	}
}

static int default_reap(void *ctx, struct io_uring *ring, struct dsm_io_completion *c, int wait)
{
	struct io_uring_cqe *cqe = NULL;
	int r;
	do
		r = wait ? io_uring_wait_cqe(ring, &cqe) : io_uring_peek_cqe(ring, &cqe);
	while (r == -EINTR);
	if (r == -EAGAIN && !wait)
		return 0;
	if (r < 0)
		return r;
	c->user_data = io_uring_cqe_get_data64(cqe);
	c->res = cqe->res;
	io_uring_cqe_seen(ring, cqe);
	return 1;
}

const struct dsm_io_methods dsm_io_default = {
	.version = DSM_IO_METHODS_VERSION,
	.name = "default",
	.ctx = NULL,
	.open = default_open,
	.close = default_close,
	.pread = default_pread,
	.size = default_size,
	.lock = default_lock,
	.unlock = default_unlock,
	.ring_init = default_ring_init,
	.ring_exit = default_ring_exit,
	.register_buffers = default_register_buffers,
	.prep_read = default_prep_read,
	.submit = default_submit,
	.reap = default_reap,
};
