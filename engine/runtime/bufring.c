/* bufring.c - see bufring.h. */
#include "bufring.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

int
bufring_init(struct bufring *b, struct io_uring *ring, unsigned entries, unsigned size,
	     uint16_t bgid)
{
	memset(b, 0, sizeof(*b));
	if (entries == 0 || (entries & (entries - 1)) || entries > 32768)
		return -EINVAL;
	b->entries = entries;
	b->size = size;
	b->bgid = bgid;
	b->ring_bytes = (size_t)entries * sizeof(struct io_uring_buf);
	b->mem_bytes = (size_t)entries * size;

	void *r = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return -errno;
	/* Buffer memory is mapped, not malloc'ed: untouched buffers cost no
	 * resident memory, and the kernel fills them in place. */
	void *m = mmap(NULL, b->mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		int e = -errno;
		munmap(r, b->ring_bytes);
		return e;
	}
	b->br = r;
	b->mem = m;
	io_uring_buf_ring_init(b->br);

	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)b->br,
		.ring_entries = entries,
		.bgid = bgid,
	};
	int ret = io_uring_register_buf_ring(ring, &reg, 0);
	if (ret < 0) {
		munmap(m, b->mem_bytes);
		munmap(r, b->ring_bytes);
		b->br = NULL;
		b->mem = NULL;
		return ret;
	}
	for (unsigned i = 0; i < entries; i++)
		bufring_put(b, i);
	bufring_publish(b);
	return 0;
}

void
bufring_fini(struct bufring *b, struct io_uring *ring)
{
	if (b->br == NULL)
		return;
	io_uring_unregister_buf_ring(ring, b->bgid);
	munmap(b->mem, b->mem_bytes);
	munmap(b->br, b->ring_bytes);
	b->br = NULL;
	b->mem = NULL;
}
