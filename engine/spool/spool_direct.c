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
 * file system's direct I/O alignment (statx STATX_DIOALIGN). Records are
 * 8-byte aligned and packed, so a write covers the whole SPOOL_SEG_ALIGN
 * blocks around its bytes: the records are copied from their chunks into
 * dio_buf after the bytes already written in the first, partial block
 * (kept from the previous write, the "head"), and the last block is padded
 * with zeros (what a segment holds after its tail anyway). The next write
 * writes that block again with the same head bytes and more records, as a
 * database's log writer rewrites its last partial page: a torn rewrite
 * leaves each sector old or new, and both hold the same acknowledged bytes.
 *
 * Ownership: dio_buf belongs to the spool, and to the kernel while the one
 * write of the worker is in flight (write_inflight in spool.c): nothing
 * touches it until that write's CQE. Between writes, its first dio_head
 * bytes are the written, partial block at dio_pos of segment dio_seq.
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
	void *m = mmap(NULL, SPOOL_DIO_BUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	if (m == MAP_FAILED) {
		snprintf(err, errlen, "spool: out of memory");
		return -ENOMEM;
	}
	sp->dio_buf = m;
	sp->dio_head = 0;
	sp->direct = true;
	return 0;
}

void
sp_dio_free(struct spool *sp)
{
	if (sp->dio_buf != NULL)
		munmap(sp->dio_buf, SPOOL_DIO_BUF);
	sp->dio_buf = NULL;
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
	uint64_t pos = b->off + b->done;
	uint32_t head = (uint32_t)(pos % SPOOL_SEG_ALIGN);
	/* Segments are written front to back, one write at a time, so an
	 * unaligned start is where the previous write of this segment
	 * ended, and its partial block is at the start of dio_buf. */
	if (head != 0 && (sp->dio_seq != b->seg->seq || sp->dio_pos != pos || sp->dio_head != head))
		panic("spool: direct write at %s/%016" PRIx64 ".seg offset %" PRIu64
		      " does not continue the last one (segment %016" PRIx64 ", offset %" PRIu64 ")",
		      sp->dir, b->seg->seq, pos, sp->dio_seq, sp->dio_pos);
	uint64_t data = b->len - b->done;
	if (data > SPOOL_DIO_BUF - head)
		data = SPOOL_DIO_BUF - head;
	cursor_copy(b, sp->dio_buf + head, data);
	uint64_t used = head + data;
	uint64_t len = (used + SPOOL_SEG_ALIGN - 1) & ~(uint64_t)(SPOOL_SEG_ALIGN - 1);
	memset(sp->dio_buf + used, 0, (size_t)(len - used));
	io_uring_prep_write(sqe, b->seg->fd, sp->dio_buf, (unsigned)len, pos - head);
	/* The write is durable at its CQE: with O_DIRECT and RWF_DSYNC the
	 * kernel flushes the disk's cache (or writes FUA) and commits the
	 * extent conversion before completing it. No fdatasync round trip,
	 * and no fsync in an io-wq thread on the worker's CPU. */
	if (sp->durable)
		sqe->rw_flags = RWF_DSYNC;
	sp->dio_sub_head = head;
	b->sub_bytes = data;
}

uint64_t
sp_dio_done(struct spool *sp, struct batch *b, uint64_t res)
{
	uint64_t head = sp->dio_sub_head;
	uint64_t end = res < head + b->sub_bytes ? res : head + b->sub_bytes;
	if (end <= head)
		return 0; /* none of the new bytes: dio_buf's head is unchanged */
	uint64_t got = end - head;
	uint64_t pos = b->off + b->done + got;
	uint32_t keep = (uint32_t)(pos % SPOOL_SEG_ALIGN);
	memmove(sp->dio_buf, sp->dio_buf + end - keep, keep);
	sp->dio_seq = b->seg->seq;
	sp->dio_pos = pos;
	sp->dio_head = keep;
	return got;
}

int
sp_seg_open_flags(const struct spool *sp)
{
	return O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | (sp->direct ? O_DIRECT : 0);
}
