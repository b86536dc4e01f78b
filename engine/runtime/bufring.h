/*
 * bufring.h - one provided-buffer ring per worker for multishot recv.
 *
 * Debian's liburing 2.3 has no io_uring_setup_buf_ring(), so the ring is
 * registered by hand (the pattern of liburing's examples/io_uring-udp.c):
 * page-aligned memory for the ring entries, io_uring_buf_ring_init(),
 * io_uring_register_buf_ring(), then every buffer added and published.
 *
 * Ownership: each buffer id is owned by exactly one party at a time: the
 * kernel (in the ring, or being filled), or the connection whose recv CQE
 * named it (while it parses it, or holds it because its session is paused).
 * bufring_put() hands it back; puts are batched and published once per loop
 * iteration by bufring_publish(), after the CQ batch is consumed.
 */
#ifndef RINGMX_BUFRING_H
#define RINGMX_BUFRING_H

#include <liburing.h>
#include <stdint.h>

struct bufring {
	struct io_uring_buf_ring *br;
	char *mem;           /* entries * size bytes */
	size_t ring_bytes;   /* mmap length of br */
	size_t mem_bytes;    /* mmap length of mem */
	unsigned entries;    /* power of two */
	unsigned size;       /* bytes per buffer */
	unsigned available;  /* buffers the kernel can use */
	unsigned pending;    /* puts not yet published */
	uint16_t bgid;
};

/* Returns 0 or -errno. */
int bufring_init(struct bufring *b, struct io_uring *ring, unsigned entries, unsigned size,
		 uint16_t bgid);
void bufring_fini(struct bufring *b, struct io_uring *ring);

static inline char *
bufring_addr(const struct bufring *b, unsigned bid)
{
	return b->mem + (size_t)bid * b->size;
}

/* The kernel filled buffer bid (a recv CQE with IORING_CQE_F_BUFFER). */
static inline void
bufring_taken(struct bufring *b)
{
	b->available--;
}

static inline void
bufring_put(struct bufring *b, unsigned bid)
{
	io_uring_buf_ring_add(b->br, bufring_addr(b, bid), b->size, (unsigned short)bid,
			      io_uring_buf_ring_mask(b->entries), (int)b->pending);
	b->pending++;
}

static inline void
bufring_publish(struct bufring *b)
{
	if (b->pending) {
		io_uring_buf_ring_advance(b->br, (int)b->pending);
		b->available += b->pending;
		b->pending = 0;
	}
}

#endif
