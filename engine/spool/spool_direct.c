/*
 * spool_direct.c - spool_io = direct: segment writes with O_DIRECT.
 *
 * Why: a buffered write copies every byte into the page cache and the
 * batch's fdatasync then writes those pages back from an io-wq thread on
 * the worker's CPU; the disk of docs/benchmarks.md takes 1.5 GB/s with
 * O_DIRECT but a durable buffered spool reached a third of that. Direct
 * writes go from one staging buffer to the disk, and the fdatasync after
 * them only flushes the disk's write cache (the blocks of a pre-zeroed
 * segment are already written: no extent conversion to journal).
 *
 * How: O_DIRECT wants file offsets, lengths and memory aligned to the
 * file system's direct I/O alignment (statx STATX_DIOALIGN), which must
 * divide SPOOL_SEG_ALIGN (4 KiB). Records are 8-byte aligned and packed, so
 * every batch starts on a 4 KiB boundary and ends with a filler record
 * (SPOOL_REC_PAD, at least a header long) up to the next one: batches share
 * no block, and up to SPOOL_DIO_QD of them are written at once, each from
 * its own staging buffer (its records copied out of their chunks). Each
 * write carries RWF_DSYNC, so a batch is durable at its last write's CQE,
 * in any order. The cost is the filler, ~2 KiB per batch of disk space.
 * After a power loss, writes in flight may leave a hole before later,
 * acknowledged records: recovery sets the hole aside as damage (its records
 * never got a 250) and keeps the records after it.
 *
 * Ownership: dio_buf[i] belongs to the batch that holds slot i (b->slot =
 * i + 1) from its first write until batch_finish, and to the kernel while a
 * write of it is in flight.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_CLEANUP
#include "spool_internal.h"

#include <linux/stat.h>

/* Whether direct I/O works in sp->dir, and its alignment: a temporary
 * file (O_TMPFILE: nothing to clean up after a crash) opened O_DIRECT.
 * 0, or -errno with the reason in why. */
static int
dio_probe(struct spool *sp, char *why, size_t whylen)
{
	int fd = openat(sp->dirfd, ".", O_TMPFILE | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		snprintf(why, whylen, "O_DIRECT file in %s: %s", sp->dir, strerror(e));
		return -e;
	}
	struct statx st;
	int r = statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st);
	int e = errno;
	close(fd);
	if (r < 0) {
		snprintf(why, whylen, "statx in %s: %s", sp->dir, strerror(e));
		return -e;
	}
	if (!(st.stx_mask & STATX_DIOALIGN) || st.stx_dio_offset_align == 0) {
		snprintf(why, whylen, "the file system of %s reports no direct I/O alignment",
			 sp->dir);
		return -EOPNOTSUPP;
	}
	/* Writes are whole SPOOL_SEG_ALIGN blocks of page-aligned memory. */
	if (SPOOL_SEG_ALIGN % st.stx_dio_offset_align != 0 ||
	    SPOOL_SEG_ALIGN % st.stx_dio_mem_align != 0) {
		snprintf(why, whylen,
			 "direct I/O alignment of %s (offsets %u, memory %u bytes) is not a divisor "
			 "of %u",
			 sp->dir, st.stx_dio_offset_align, st.stx_dio_mem_align, SPOOL_SEG_ALIGN);
		return -EOPNOTSUPP;
	}
	return 0;
}

int
sp_dio_init(struct spool *sp, char *err, size_t errlen)
{
	const struct config *cfg = sp->cfg;
	char why[CONFIG_PATH_MAX + 128];
	bool want = cfg->spool_io == SPOOL_IO_DIRECT ||
		    (cfg->spool_io == SPOOL_IO_AUTO && sp->durable && !relay_enabled(&cfg->relay));
	sp->direct = false;
	sp->io_note[0] = '\0';
	if (!want)
		return 0;
	int r = dio_probe(sp, why, sizeof(why));
	if (r < 0) {
		if (cfg->spool_io == SPOOL_IO_DIRECT) {
			snprintf(err, errlen, "spool: spool_io = direct: %s", why);
			return r;
		}
		snprintf(sp->io_note, sizeof(sp->io_note), " (not direct: %s)", why);
		return 0;
	}
	/* One mapping; pages are touched (made resident) only as batches use them. */
	void *m = mmap(NULL, (size_t)SPOOL_DIO_QD * SPOOL_DIO_BUF, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		snprintf(err, errlen, "spool: out of memory");
		return -ENOMEM;
	}
	for (unsigned i = 0; i < SPOOL_DIO_QD; i++)
		sp->dio_buf[i] = (uint8_t *)m + (size_t)i * SPOOL_DIO_BUF;
	sp->dio_free = (1u << SPOOL_DIO_QD) - 1;
	sp->direct = true;
	return 0;
}

void
sp_dio_free(struct spool *sp)
{
	if (sp->dio_buf[0] != NULL)
		munmap(sp->dio_buf[0], (size_t)SPOOL_DIO_QD * SPOOL_DIO_BUF);
	memset(sp->dio_buf, 0, sizeof(sp->dio_buf));
}

uint64_t
sp_dio_pad(uint64_t end)
{
	uint64_t gap = (SPOOL_SEG_ALIGN - end % SPOOL_SEG_ALIGN) % SPOOL_SEG_ALIGN;
	/* A filler is at least a header: a shorter gap takes one more block. */
	return gap == 0 || gap >= SPOOL_HDR_SIZE ? gap : gap + SPOOL_SEG_ALIGN;
}

/* Copy n bytes from the batch's write cursor (not moved) to dst. */
static void
cursor_copy(const struct batch *b, uint8_t *dst, uint64_t n)
{
	const struct sink_tx *tx = b->cur_tx;
	const struct chunk *c = b->cur_ch;
	uint32_t off = b->cur_off;
	while (n > 0) {
		assert(tx != NULL && c != NULL);
		uint32_t k = chunk_len(tx, c) - off;
		if (k > n)
			k = (uint32_t)n;
		memcpy(dst, c->mem + off, k);
		dst += k;
		n -= k;
		off += k;
		if (off == chunk_len(tx, c)) {
			off = 0;
			c = c->next;
			if (c == NULL) {
				tx = tx->next;
				c = tx != NULL ? tx->head : NULL;
			}
		}
	}
}

void
sp_dio_submit(struct spool *sp, struct batch *b, struct io_uring_sqe *sqe)
{
	if (b->slot == 0) {
		assert(sp->dio_free != 0);
		unsigned i = (unsigned)__builtin_ctz(sp->dio_free);
		sp->dio_free &= ~(1u << i);
		b->slot = (uint8_t)(i + 1);
	}
	uint8_t *buf = sp->dio_buf[b->slot - 1];
	uint64_t pos = b->off + b->done, total = b->len + b->pad;
	uint64_t n = total - b->done < SPOOL_DIO_BUF ? total - b->done : SPOOL_DIO_BUF;
	assert(pos % SPOOL_SEG_ALIGN == 0 && n % SPOOL_SEG_ALIGN == 0 && n > 0);
	uint64_t rec = b->done < b->len ? b->len - b->done : 0;
	if (rec > n)
		rec = n;
	cursor_copy(b, buf, rec);
	if (rec < n) {
		/* The filler, or the part of it in this write. */
		uint8_t pad[SPOOL_SEG_ALIGN + SPOOL_HDR_SIZE];
		uint64_t from = b->done + rec - b->len;
		assert(b->pad <= sizeof(pad) && from + (n - rec) <= b->pad);
		spool_pad_encode(pad, (size_t)b->pad);
		memcpy(buf + rec, pad + from, (size_t)(n - rec));
	}
	io_uring_prep_write(sqe, b->seg->fd, buf, (unsigned)n, pos);
	/* The write is durable at its CQE: with O_DIRECT and RWF_DSYNC the
	 * kernel flushes the disk's cache (or writes FUA) and commits the
	 * extent conversion before completing it. No fdatasync round trip. */
	if (sp->durable)
		sqe->rw_flags = RWF_DSYNC;
	b->sub_bytes = n;
	sp->dio_inflight++;
}

uint64_t
sp_dio_done(struct spool *sp, struct batch *b, uint64_t res)
{
	(void)sp;
	/* A short direct write: what follows is written again from the last
	 * whole block (the same bytes). */
	uint64_t got = res < b->sub_bytes ? res : b->sub_bytes;
	return got - got % SPOOL_SEG_ALIGN;
}

void
sp_dio_release(struct spool *sp, struct batch *b)
{
	if (b->slot == 0)
		return;
	sp->dio_free |= 1u << (b->slot - 1);
	b->slot = 0;
}

int
sp_seg_open_flags(const struct spool *sp)
{
	return O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | (sp->direct ? O_DIRECT : 0);
}
