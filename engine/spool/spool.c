/*
 * spool.c - `sink = spool`: the durable spool. Per-worker append-only
 * segment files, group commit through the worker's io_uring, recovery at
 * start-up. Contract: engine/spool/spool.h; on-disk format: spool_format.h and
 * docs/spool-format.md; operator view: docs/spool.md.
 *
 * Owner: the spool module. One struct spool per worker, touched only by
 * that worker's thread.
 *
 * Life of a message
 *  1. tx_open .. tx_data: the record (header placeholder, envelope TLVs,
 *     message bytes) is staged in a chain of SPOOL_CHUNK_SIZE chunks from
 *     the worker's chunk pool (mapped in SPOOL_BLOCK_SIZE blocks, at most
 *     spool_memory bytes; no malloc per message).
 *  2. tx_commit: padding, header and CRC32C are filled in and the record
 *     joins the commit queue. The answer is always SINK_PENDING.
 *  3. spool_poll: the queue becomes a batch when it reaches commit_size,
 *     when its oldest record is commit_delay old, or at once when the disk
 *     is idle (no write or fsync in flight: waiting would only add latency).
 *     The batch gets its offset in the current segment (rotating when full).
 *  4. Writes: one writev in flight per worker, so the bytes of a segment are
 *     written front to back and a crash leaves at most one partial write:
 *     recovery can tell a torn tail from damage. Short writes continue
 *     where they stopped.
 *  5. Durability: when a batch's writes are all in, one IORING_OP_FSYNC
 *     (DATASYNC) covers every written batch of that segment; one fsync in
 *     flight per worker while the next batches fill and write. Its CQE
 *     releases the 250 of every message in those batches. With
 *     durability = none the verdict is given at the write's CQE.
 *  Errors: a write or fsync error is final for its batch (451, or 452 for
 *  ENOSPC); the segment is abandoned, never written again, and every other
 *  batch on it that is not yet durable fails too. A new segment is opened
 *  for the next batch. When nothing of the abandoned segment is in flight
 *  any more, it is cut back to its last acknowledged record (durable_end),
 *  so the records that got 451 are not delivered after a restart too.
 *
 * Pre-zeroed segments (durability = fsync)
 *  An fdatasync after writing into fallocated (unwritten) extents must also
 *  journal the unwritten->written conversion: 0.57 ms against 0.23 ms for
 *  the same write into blocks already written with zeros, on the disk of
 *  docs/benchmarks.md. So, like PostgreSQL's wal_init_zero, the next segment
 *  is made ahead of need, through the ring, never stalling the loop:
 *  openat (the one synchronous step: no I/O wait), IORING_OP_FALLOCATE,
 *  zeros written with up to SPOOL_ZERO_INFLIGHT writes of the shared zero
 *  buffer (each followed by a sync_file_range starting its writeback, and
 *  paced by the records written: SPOOL_ZERO_PACE), fdatasync, fsync of the
 *  directory; then it is ready and the next rotation just switches to it. Preparation starts when the current segment
 *  is 1/SPOOL_PREP_DIVISOR full; the first segment is zero-filled
 *  synchronously in spool_open, before the loop runs. If nothing is ready at
 *  a rotation, the segment is made the old way (fallocate, counted in
 *  spool_segments_unzeroed) and the preparation goes on for the next one.
 *  A prepared segment holds only zeros until it is used, and a crash while
 *  preparing leaves zeros too (fallocated blocks read as zeros, written ones
 *  are zeros): recovery sees an empty segment and removes it.
 *
 * Ownership
 *  - A transaction's chunks belong to it from tx_open until its verdict is
 *    delivered or it is aborted before commit. Once a batch's writev is in
 *    the kernel, the chunks it names are the kernel's until the CQE: an
 *    abort after commit only forgets the owner (no verdict is given), the
 *    memory is freed when the batch finishes.
 *  - A segment file descriptor lives while it is current or a batch refers
 *    to it.
 *  - Verdict callbacks may re-enter the sink (a pipelined next message):
 *    a transaction is freed before its owner hears the verdict, and a
 *    batch's list is detached before it is walked.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_CLEANUP
#include "spool_internal.h"

uint8_t spool_zeros[SPOOL_ZERO_BUF] __attribute__((aligned(4096)));

/* ---- helpers ---- */

static uint64_t
wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t
sp_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int
sp_map_errno(int e)
{
	/* Only "disk full" has its own reply (452 4.3.1); every other failure
	 * is 451 4.3.0. */
	return e == ENOSPC || e == EDQUOT ? -ENOSPC : -EIO;
}

void
sp_seg_name(char *buf, size_t len, uint64_t seq)
{
	snprintf(buf, len, "%016" PRIx64 ".seg", seq);
}

/* ---- chunk pool ---- */

static int
pool_grow(struct spool *sp)
{
	if (sp->mapped + SPOOL_BLOCK_SIZE > sp->memory_cap || sp->nblocks == sp->maxblocks)
		return -ENOMEM;
	void *mem = mmap(NULL, SPOOL_BLOCK_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -ENOMEM;
	struct chunk *d = calloc(SPOOL_BLOCK_CHUNKS, sizeof(*d));
	if (d == NULL) {
		munmap(mem, SPOOL_BLOCK_SIZE);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < SPOOL_BLOCK_CHUNKS; i++) {
		d[i].mem = (uint8_t *)mem + (size_t)i * SPOOL_CHUNK_SIZE;
		d[i].next = sp->free_chunks;
		sp->free_chunks = &d[i];
	}
	sp->blocks[sp->nblocks] = mem;
	sp->descs[sp->nblocks] = d;
	sp->nblocks++;
	sp->mapped += SPOOL_BLOCK_SIZE;
	return 0;
}

static struct chunk *
chunk_get(struct spool *sp)
{
	if (sp->free_chunks == NULL && pool_grow(sp) < 0)
		return NULL;
	struct chunk *c = sp->free_chunks;
	sp->free_chunks = c->next;
	c->next = NULL;
	return c;
}

static void
chain_free(struct spool *sp, struct sink_tx *tx)
{
	struct chunk *c = tx->head;
	while (c != NULL) {
		struct chunk *n = c->next;
		c->next = sp->free_chunks;
		sp->free_chunks = c;
		c = n;
	}
	tx->head = tx->tail = NULL;
	tx->tail_len = 0;
	sp_share_release(sp, tx);
}

/* Append bytes to a transaction's chain. 0, -ENOMEM (spool_memory) or
 * -EDQUOT (the large messages' share: spool_share.c). */
static int
stage(struct spool *sp, struct sink_tx *tx, const void *data, size_t n)
{
	const uint8_t *p = data;
	while (n > 0) {
		if (tx->tail == NULL || tx->tail_len == SPOOL_CHUNK_SIZE) {
			if (sp_share_chunk(sp, tx) < 0)
				return -EDQUOT;
			struct chunk *c = chunk_get(sp);
			if (c == NULL)
				return -ENOMEM;
			if (tx->tail == NULL)
				tx->head = c;
			else
				tx->tail->next = c;
			tx->tail = c;
			tx->tail_len = 0;
		}
		size_t k = SPOOL_CHUNK_SIZE - tx->tail_len;
		if (k > n)
			k = n;
		if (p != NULL)
			memcpy(tx->tail->mem + tx->tail_len, p, k);
		else
			memset(tx->tail->mem + tx->tail_len, 0, k);
		tx->tail_len += (uint32_t)k;
		tx->len += k;
		if (p != NULL)
			p += k;
		n -= k;
	}
	return 0;
}

static int
stage_tlv(struct spool *sp, struct sink_tx *tx, unsigned type, const void *v, size_t len)
{
	uint8_t h[SPOOL_TLV_HDR];
	size_t off = 0;
	if (len > SPOOL_TLV_VALUE_MAX)
		return -EINVAL;
	/* Encode the TLV header with an empty value, then stage the value. */
	int r = spool_tlv_put(h, sizeof(h), &off, type, NULL, 0);
	assert(r == 0 && off == SPOOL_TLV_HDR);
	(void)r;
	h[2] = (uint8_t)len;
	h[3] = (uint8_t)(len >> 8);
	r = stage(sp, tx, h, sizeof(h));
	return r < 0 ? r : stage(sp, tx, v, len);
}

/* ---- transactions ---- */

static void
tx_release(struct spool *sp, struct sink_tx *tx)
{
	assert(tx->state != TX_FREE);
	if (tx->state == TX_OPEN) {
		assert(sp->tx_open_count > 0);
		sp->tx_open_count--;
	}
	chain_free(sp, tx);
	tx->state = TX_FREE;
	tx->owner = NULL;
	tx->next = sp->free_tx;
	sp->free_tx = tx;
}

/* Free the transaction first, then tell its owner: the owner may open the
 * next transaction from inside the callback. */
static void
tx_deliver(struct spool *sp, struct sink_tx *tx, int res)
{
	struct sink_waiter *owner = tx->owner;
	assert(tx->state == TX_COMMITTED);
	if (res == 0)
		sp->env.stats->spool_messages++;
	else if (res == -ENOSPC)
		sp->env.stats->spool_enospc++;
	tx_release(sp, tx);
	if (owner != NULL)
		owner->verdict(owner, res);
}

/* ---- segments ---- */

/* A new or removed file name is durable only once its directory is. 0 or
 * -errno (logged). A caller that is about to acknowledge mail in a new file
 * must fail on an error like on a data fsync error: the name may be gone
 * after a crash, and every record in the file with it. */
int
sp_dir_sync(struct spool *sp)
{
	int r = fault_dirsync();
	if (r == 0 && fsync(sp->dirfd) < 0)
		r = -errno;
	if (r < 0)
		log_err("spool: fsync %s: %s", sp->dir, strerror(-r));
	return r;
}

/* An abandoned segment is closed (no batch refers to it, so nothing of it
 * is in the kernel): cut off everything after its last acknowledged
 * record. The records there got 451 (or were never written whole): the
 * client retries them, and a restart must not find and deliver them too.
 * ftruncate changes only the inode, like the truncation of the unused
 * tail in sp_seg_close; the change is made durable through the ring. */
static void
seg_void_tail(struct spool *sp, struct seg *s)
{
	char name[32];
	sp_seg_name(name, sizeof(name), s->seq);
	if (ftruncate(s->fd, (off_t)s->durable_end) < 0) {
		log_err("spool: cutting %s/%s back to its acknowledged records (%" PRIu64
			" bytes): %s; a restart may deliver the messages that got 451 "
			"(duplicates)",
			sp->dir, name, s->durable_end, strerror(errno));
		close(s->fd);
		return;
	}
	unsigned i = 0;
	while (i < SPOOL_MAX_SEGS && sp->void_fd[i] >= 0)
		i++;
	if (i == SPOOL_MAX_SEGS) {
		/* As many cut-backs syncing as there are segment slots: a
		 * disk that no longer answers. Not waited for. */
		log_err("spool: %s/%s cut back to %" PRIu64 " bytes, not synced (too many "
			"syncs in flight); after a crash of the machine its messages that got "
			"451 may be delivered (duplicates)",
			sp->dir, name, s->durable_end);
		close(s->fd);
		return;
	}
	struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
	io_uring_prep_fsync(sqe, s->fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data64(sqe, ud_make(sp->env.ud_op, 0, TAG_VOID_SYNC, i));
	sp->void_fd[i] = s->fd;
	sp->void_seq[i] = s->seq;
	sp->void_inflight++;
	log_warn("spool: %s/%s cut back to %" PRIu64 " bytes: its records after that got 451 "
		 "and are not kept",
		 sp->dir, name, s->durable_end);
}

static void
on_void_sync(struct spool *sp, unsigned i, int res)
{
	char name[32];
	assert(i < SPOOL_MAX_SEGS && sp->void_fd[i] >= 0 && sp->void_inflight > 0);
	if (res >= 0)
		res = fault_fsync();
	if (res < 0) {
		sp_seg_name(name, sizeof(name), sp->void_seq[i]);
		log_err("spool: fdatasync of %s/%s after cutting it back: %s; after a crash of the "
			"machine its messages that got 451 may be delivered (duplicates)",
			sp->dir, name, strerror(-res));
	}
	close(sp->void_fd[i]);
	sp->void_fd[i] = -1;
	sp->void_inflight--;
}

void
sp_seg_close(struct spool *sp, struct seg *s)
{
	char name[32];
	assert(s->fd >= 0 && s->refs == 0 && !s->current);
	sp_seg_name(name, sizeof(name), s->seq);
	if (s->tail == 0 && !s->abandoned) {
		/* Never used: do not leave a preallocated empty file behind.
		 * A failed directory fsync is only logged: should the name
		 * survive a crash, recovery removes a file without records. */
		close(s->fd);
		if (unlinkat(sp->dirfd, name, 0) == 0)
			(void)sp_dir_sync(sp);
	} else {
		/* Give the unused preallocated space back. Not synced: if the
		 * new size is lost, recovery finds zeros, which end a segment. */
		if (s->abandoned)
			seg_void_tail(sp, s); /* closes the fd, maybe later */
		else if (s->tail < s->size && ftruncate(s->fd, (off_t)s->tail) < 0)
			log_warn("spool: truncate %s/%s: %s", sp->dir, name, strerror(errno));
		if (!s->abandoned)
			close(s->fd);
		if (sp->hooks.seg_closed != NULL)
			sp->hooks.seg_closed(sp->hooks.ctx, s->seq);
	}
	s->fd = -1;
}

static void
seg_unref(struct spool *sp, struct seg *s)
{
	assert(s->refs > 0);
	if (--s->refs == 0 && !s->current)
		sp_seg_close(sp, s);
}

void
sp_seg_retire(struct spool *sp)
{
	struct seg *s = sp->cur;
	if (s == NULL)
		return;
	sp->cur = NULL;
	s->current = false;
	if (s->refs == 0)
		sp_seg_close(sp, s);
}

/* A free slot in segs. Every batch holds at most one reference and the
 * current segment is one more, so a slot is always free (the segment being
 * prepared has no slot until it becomes current). */
static struct seg *
seg_slot(struct spool *sp)
{
	for (unsigned i = 0; i < SPOOL_MAX_SEGS; i++)
		if (sp->segs[i].fd < 0)
			return &sp->segs[i];
	assert(!"no free segment slot");
	abort();
}

/* The file fd, named seq, complete and durable (name included), becomes
 * the current segment. */
void
sp_seg_install(struct spool *sp, int fd, uint64_t seq, uint64_t size, bool zeroed)
{
	struct seg *s = seg_slot(sp);
	assert(sp->cur == NULL && seq > sp->last_seq);
	s->fd = fd;
	s->seq = seq;
	s->size = size;
	s->tail = 0;
	s->refs = 0;
	s->durable_end = 0;
	s->current = true;
	s->abandoned = false;
	sp->cur = s;
	sp->cur_writes = sp->cur_wbytes = 0;
	sp->last_seq = seq;
	sp->prep_blocked = false; /* a new segment: preparing may be tried again */
	sp->env.stats->spool_segments++;
	if (zeroed)
		sp->env.stats->spool_segments_prezeroed++;
	else
		sp->env.stats->spool_segments_unzeroed++;
}

/* Count a failed zero-filling; log the first of a series. Never fatal:
 * segments are then made with fallocate, as before pre-zeroing. */
void
sp_prezero_error(struct spool *sp, uint64_t seq, int err, const char *what)
{
	char name[32];
	sp->env.stats->spool_prezero_errors++;
	if (sp->prep_err_logged)
		return;
	sp->prep_err_logged = true;
	sp_seg_name(name, sizeof(name), seq);
	log_warn("spool: zero-filling segment %s/%s ahead of need: %s failed: %s; new segments "
		 "are fallocated until zero-filling works again (counter spool_prezero_errors)",
		 sp->dir, name, what, strerror(-err));
}

/* Write zeros over [0, size) and fdatasync. Synchronous: only used for the
 * first segment, from spool_open, before the event loop runs. */
static int
zero_fill_sync(int fd, uint64_t size)
{
	for (uint64_t off = 0; off < size;) {
		size_t n = size - off < SPOOL_ZERO_BUF ? (size_t)(size - off) : SPOOL_ZERO_BUF;
		ssize_t w = pwrite(fd, spool_zeros, n, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		off += (uint64_t)w;
	}
	return fdatasync(fd) < 0 ? -errno : 0;
}

/* Create the next segment file, preallocated to size, and zero-filled if
 * zero is set. Synchronous: this is the fallback when no prepared segment
 * is ready (and the first segment, from spool_open); the directory fsync
 * must be done before any record in the file is acknowledged anyway. */
int
sp_seg_create(struct spool *sp, uint64_t size, bool zero)
{
	char name[32];
	sp_seg_name(name, sizeof(name), sp->next_seq);
	int fd = openat(sp->dirfd, name, sp_seg_open_flags(sp), 0600);
	if (fd < 0)
		return -errno;
	/* fallocate even before zeroing: a full disk shows here, and blocks
	 * allocated as unwritten read as zeros until their zeros are on disk,
	 * so a crash in between cannot expose old data. */
	int r = posix_fallocate(fd, 0, (off_t)size);
	if (r != 0) {
		close(fd);
		unlinkat(sp->dirfd, name, 0);
		return -r;
	}
	if (zero) {
		r = zero_fill_sync(fd, size);
		if (r < 0) {
			/* Still a good fallocated segment (zeros and unwritten
			 * blocks): use it as one. */
			sp_prezero_error(sp, sp->next_seq, r, "write");
			zero = false;
		}
	}
	r = sp_dir_sync(sp);
	if (r < 0) {
		/* The name may not survive a crash: nothing may be
		 * acknowledged in this file. The caller refuses mail (451)
		 * and tries again later, under the same number. */
		close(fd);
		unlinkat(sp->dirfd, name, 0);
		return r;
	}
	sp_seg_install(sp, fd, sp->next_seq++, size, zero);
	return 0;
}

/* ---- batches ---- */

static struct batch *
batch_at(struct spool *sp, unsigned i)
{
	return &sp->batches[(sp->b_head + i) % SPOOL_MAX_BATCHES];
}

static unsigned
batch_index(struct spool *sp, struct batch *b)
{
	return (unsigned)(b - sp->batches);
}

static void
batch_retire_head(struct spool *sp)
{
	while (sp->b_count > 0 && batch_at(sp, 0)->state == B_DONE) {
		batch_at(sp, 0)->state = B_FREE;
		sp->b_head = (sp->b_head + 1) % SPOOL_MAX_BATCHES;
		sp->b_count--;
	}
}

/* Every message of the batch gets res; the batch is done. */
static void
batch_finish(struct spool *sp, struct batch *b, int res)
{
	struct sink_tx *tx = b->head;
	assert(b->state != B_FREE && b->state != B_DONE);
	b->head = b->tail = NULL;
	b->state = B_DONE;
	sp_dio_release(sp, b);
	/* The relay hears of each durable record before its 250 goes out
	 * and before the segment can be closed (seg_unref below). */
	uint64_t off = b->off, seq = b->seg->seq;
	/* Batches of a segment become durable in file order (one fsync at a
	 * time covers all written ones; a failure abandons the segment). */
	if (res == 0 && b->off + b->len > b->seg->durable_end)
		b->seg->durable_end = b->off + b->len;
	if (res == 0 && sp->hooks.durable != NULL)
		for (struct sink_tx *t = tx; t != NULL; t = t->next) {
			sp->hooks.durable(sp->hooks.ctx, seq, off, t->len);
			off += t->len;
		}
	seg_unref(sp, b->seg);
	b->seg = NULL;
	while (tx != NULL) {
		struct sink_tx *next = tx->next;
		tx_deliver(sp, tx, res);
		tx = next;
	}
	batch_retire_head(sp);
}

/* A write or fsync on s failed: nothing more goes to that file, and no
 * batch on it that is not durable yet may be acknowledged. */
static void
seg_abandon(struct spool *sp, struct seg *s, int err, const char *what)
{
	char name[32];
	sp_seg_name(name, sizeof(name), s->seq);
	if (!s->abandoned)
		log_err("spool: %s on %s/%s failed: %s; segment abandoned, its pending messages "
			"get %s, continuing in a new segment",
			what, sp->dir, name, strerror(-err), err == -ENOSPC ? "452" : "451");
	s->abandoned = true;
	if (s->current)
		sp_seg_retire(sp);
	for (unsigned i = 0; i < sp->b_count; i++) {
		struct batch *b = batch_at(sp, i);
		if (b->seg != s)
			continue;
		if (b->state == B_QUEUED || b->state == B_WRITTEN) {
			/* Queued batches fail too: their offsets are in a file
			 * that is no longer trusted. */
			sp->env.stats->spool_write_errors++;
			batch_finish(sp, b, err);
			i = (unsigned)-1; /* the ring may have moved: start over */
		} else if (b->state == B_WRITING) {
			b->err = err; /* finished when its CQE comes back */
		}
		/* SYNCING: the fsync in flight decides. */
	}
}

/* Move committed records from the queue into a new batch. */
static void
batch_form(struct spool *sp)
{
	/* Direct: room for the filler that ends the batch on a block. */
	uint64_t pad_room = sp->direct ? SPOOL_HDR_SIZE : 0;
	while (sp->q_head != NULL && sp->b_count < SPOOL_MAX_BATCHES) {
		int r = sp_seg_ensure(sp, sp->q_head->len + pad_room);
		if (r < 0) {
			/* No segment: every queued message is refused now,
			 * rather than waiting for a disk that is full. */
			while (sp->q_head != NULL) {
				struct sink_tx *tx = sp->q_head;
				sp->q_head = tx->next;
				sp->q_bytes -= tx->len;
				sp->q_count--;
				tx_deliver(sp, tx, r);
			}
			sp->q_tail = NULL;
			return;
		}
		struct seg *s = sp->cur;
		struct batch *b = batch_at(sp, sp->b_count);
		assert(b->state == B_FREE);
		memset(b, 0, offsetof(struct batch, iov));
		b->state = B_QUEUED;
		b->seg = s;
		b->off = s->tail;
		s->refs++;
		sp->b_count++;
		uint64_t commit_size = sp->cfg->commit_size;
		while (sp->q_head != NULL && s->tail + sp->q_head->len + pad_room <= s->size &&
		       (b->n == 0 || b->len < commit_size)) {
			struct sink_tx *tx = sp->q_head;
			sp->q_head = tx->next;
			sp->q_bytes -= tx->len;
			sp->q_count--;
			tx->next = NULL;
			if (b->tail == NULL)
				b->head = tx;
			else
				b->tail->next = tx;
			b->tail = tx;
			b->n++;
			b->len += tx->len;
			s->tail += tx->len;
		}
		assert(b->n > 0);
		if (sp->direct) {
			/* b->off is block aligned: the batch before ended so. */
			assert(b->off % SPOOL_SEG_ALIGN == 0);
			b->pad = sp_dio_pad(s->tail);
			s->tail += b->pad;
			assert(s->tail <= s->size);
		}
		if (sp->q_head == NULL)
			sp->q_tail = NULL;
		else
			sp->q_first_ns = sp->now; /* the rest starts a new wait */
		b->cur_tx = b->head;
		b->cur_ch = b->head->head;
		b->cur_off = 0;
		sp->env.stats->spool_batches++;
		RINGMX_HIST_OBSERVE(sp->env.stats, spool_batch, b->n);
	}
}

static void
cursor_advance(struct batch *b, uint64_t n)
{
	while (n > 0) {
		assert(b->cur_tx != NULL && b->cur_ch != NULL);
		uint32_t left = chunk_len(b->cur_tx, b->cur_ch) - b->cur_off;
		if (n < left) {
			b->cur_off += (uint32_t)n;
			return;
		}
		n -= left;
		b->cur_off = 0;
		b->cur_ch = b->cur_ch->next;
		if (b->cur_ch == NULL) {
			b->cur_tx = b->cur_tx->next;
			b->cur_ch = b->cur_tx != NULL ? b->cur_tx->head : NULL;
		}
	}
}

static void
write_submit(struct spool *sp, struct batch *b)
{
	if (sp->direct) {
		assert(b->done < b->len + b->pad);
		struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
		sp_dio_submit(sp, b, sqe);
		io_uring_sqe_set_data64(sqe,
					ud_make(sp->env.ud_op, 0, TAG_WRITE, batch_index(sp, b)));
		b->state = B_WRITING;
		sp->env.stats->spool_writes++;
		return;
	}
	struct sink_tx *tx = b->cur_tx;
	struct chunk *c = b->cur_ch;
	uint32_t off = b->cur_off;
	unsigned n = 0;
	uint64_t bytes = 0;
	assert(b->done < b->len && !sp->write_inflight);
	while (tx != NULL && n < SPOOL_IOV_MAX) {
		b->iov[n].iov_base = c->mem + off;
		b->iov[n].iov_len = chunk_len(tx, c) - off;
		bytes += b->iov[n].iov_len;
		n++;
		off = 0;
		c = c->next;
		if (c == NULL) {
			tx = tx->next;
			c = tx != NULL ? tx->head : NULL;
		}
	}
	assert(bytes > 0 && bytes <= b->len - b->done);
	struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
	/* Buffered writev at an explicit offset: segments are preallocated,
	 * so no size or extent allocation happens here (only the unwritten
	 * extent conversion that the batch's fdatasync commits). */
	io_uring_prep_writev(sqe, b->seg->fd, b->iov, n, b->off + b->done);
	io_uring_sqe_set_data64(sqe, ud_make(sp->env.ud_op, 0, TAG_WRITE, batch_index(sp, b)));
	b->sub_bytes = bytes;
	b->state = B_WRITING;
	sp->write_inflight = true;
	sp->env.stats->spool_writes++;
}

/* The oldest queued batch starts writing when no write is in flight. */
static void
write_next(struct spool *sp)
{
	if (sp->direct) {
		/* Batches share no block: as many at once as there are
		 * staging buffers, oldest first. */
		for (unsigned i = 0; i < sp->b_count && sp->dio_free != 0; i++)
			if (batch_at(sp, i)->state == B_QUEUED)
				write_submit(sp, batch_at(sp, i));
		return;
	}
	if (sp->write_inflight)
		return;
	for (unsigned i = 0; i < sp->b_count; i++) {
		struct batch *b = batch_at(sp, i);
		if (b->state == B_QUEUED) {
			write_submit(sp, b);
			return;
		}
	}
}

/* One fsync for every written batch of one segment. */
static void
fsync_next(struct spool *sp)
{
	struct seg *s = NULL;
	if (sp->fsync_inflight || !sp->durable || sp->direct)
		return;
	for (unsigned i = 0; i < sp->b_count; i++) {
		struct batch *b = batch_at(sp, i);
		if (b->state != B_WRITTEN || (s != NULL && b->seg != s))
			continue;
		s = b->seg;
		b->state = B_SYNCING;
	}
	if (s == NULL)
		return;
	struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
	/* DATASYNC: the data and what is needed to read it back (the
	 * converted extents); the preallocated size is already there. */
	io_uring_prep_fsync(sqe, s->fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data64(sqe, ud_make(sp->env.ud_op, 0, TAG_FSYNC, 0));
	sp->fsync_inflight = true;
	sp->fsync_start = sp_mono_ns();
	sp->env.stats->spool_fsyncs++;
}

static void
on_write(struct spool *sp, struct batch *b, int res)
{
	assert(b->state == B_WRITING);
	if (sp->direct) {
		assert(sp->dio_inflight > 0);
		sp->dio_inflight--;
	} else {
		assert(sp->write_inflight);
		sp->write_inflight = false;
	}
	if (res == -EINTR || res == -EAGAIN) {
		write_submit(sp, b); /* nothing was written: try again */
		return;
	}
	if (b->err != 0) {
		/* The segment was abandoned while this write was in flight. */
		sp->env.stats->spool_write_errors++;
		batch_finish(sp, b, b->err);
		return;
	}
	/* A direct write is also the durability point (RWF_DSYNC): the
	 * fdatasync fault hook fails it. */
	if (res > 0 && sp->direct && sp->durable && fault_fsync() < 0)
		res = -EIO;
	if (res <= 0) {
		/* 0 would mean no progress on a regular file: an I/O error. */
		int err = res == 0 ? -EIO : sp_map_errno(-res);
		b->state = B_WRITTEN; /* seg_abandon fails it with the others */
		seg_abandon(sp, b->seg, err,
			    res == 0               ? "write (no progress)"
			    : sp->direct && sp->durable ? "write (RWF_DSYNC)"
							: "write");
		assert(b->state == B_DONE || b->state == B_FREE);
		return;
	}
	/* Direct: res counts the carried head and the zero padding too. */
	uint64_t got = sp->direct ? sp_dio_done(sp, b, (uint64_t)res) : (uint64_t)res;
	assert(got <= b->sub_bytes);
	sp->env.stats->spool_bytes_written += got;
	if (got < b->sub_bytes)
		sp->env.stats->spool_short_writes++;
	if (sp->direct && b->seg == sp->cur) {
		sp->cur_writes++;
		sp->cur_wbytes += got;
	}
	/* The cursor walks records only, not the filler after them. */
	uint64_t rec_left = b->done < b->len ? b->len - b->done : 0;
	cursor_advance(b, got < rec_left ? got : rec_left);
	b->done += got;
	if (b->done < b->len + b->pad) {
		/* A short write, or more than SPOOL_IOV_MAX iovecs: go on from
		 * where it stopped. */
		write_submit(sp, b);
		return;
	}
	b->state = B_WRITTEN;
	/* Direct writes carry RWF_DSYNC: written is durable. */
	if (!sp->durable || sp->direct)
		batch_finish(sp, b, 0);
}

static void
on_fsync(struct spool *sp, int res)
{
	assert(sp->fsync_inflight);
	sp->fsync_inflight = false;
	/* From queueing to the CQE seen: the disk plus io-wq scheduling. */
	uint64_t fsync_us = (sp_mono_ns() - sp->fsync_start) / 1000u;
	sp->env.stats->spool_fsync_us += fsync_us;
	RINGMX_HIST_OBSERVE(sp->env.stats, spool_fdatasync, fsync_us);
	int err = 0;
	if (res >= 0)
		res = fault_fsync();
	if (res < 0) {
		/* Final (fsyncgate): never retried, the kernel may already
		 * have marked the failed pages clean. Abandon the segment
		 * first (that fails its batches that are not syncing), then
		 * fail the syncing ones. */
		struct seg *s = NULL;
		err = sp_map_errno(-res);
		for (unsigned i = 0; i < sp->b_count; i++)
			if (batch_at(sp, i)->state == B_SYNCING)
				s = batch_at(sp, i)->seg;
		assert(s != NULL);
		seg_abandon(sp, s, err, "fdatasync");
	}
	for (unsigned i = 0; i < sp->b_count; i++) {
		struct batch *b = batch_at(sp, i);
		if (b->state == B_SYNCING) {
			if (err != 0)
				sp->env.stats->spool_write_errors++;
			batch_finish(sp, b, err);
			i = (unsigned)-1; /* the ring may have moved: start over */
		}
	}
}

void
spool_on_cqe(struct spool *sp, struct io_uring_cqe *cqe)
{
	unsigned kind = ud_kind(cqe->user_data);
	uint32_t idx = ud_idx(cqe->user_data);
	if (kind == TAG_WRITE) {
		assert(idx < SPOOL_MAX_BATCHES);
		on_write(sp, &sp->batches[idx], cqe->res);
	} else if (kind == TAG_FSYNC) {
		on_fsync(sp, cqe->res);
	} else if (kind >= TAG_PREP_ALLOC && kind <= TAG_PREP_SFR) {
		sp_prep_on_cqe(sp, kind, idx, cqe->res);
	} else if (kind == TAG_VOID_SYNC) {
		on_void_sync(sp, idx, cqe->res);
	} else {
		panic("spool: unknown CQE kind %u (user_data %#llx)", kind,
		      (unsigned long long)cqe->user_data);
	}
	write_next(sp);
	fsync_next(sp);
}

void
spool_poll(struct spool *sp, uint64_t now)
{
	sp->now = now;
	if (sp->q_head != NULL) {
		/* The writer is free: write now, so the batch is on its way
		 * while an fsync runs and the next fsync starts as soon as
		 * that one ends. Waiting would only add latency. Direct:
		 * while few writes are in flight (SPOOL_DIO_EAGER), or when
		 * every open transaction is already queued: nobody is about to
		 * join the batch, so waiting for commit_delay would only delay
		 * every one of them. */
		bool idle = sp->direct ? sp->dio_free != 0 && (sp->dio_inflight < SPOOL_DIO_EAGER ||
								 sp->tx_open_count == 0)
				       : !sp->write_inflight;
		if (idle || sp->q_bytes >= sp->cfg->commit_size ||
		    now >= sp->q_first_ns + sp->cfg->commit_delay)
			batch_form(sp);
	}
	write_next(sp);
	fsync_next(sp);
	sp_prep_maybe_start(sp);
	sp_prep_pump(sp); /* the records written move the pacing on */
}

uint64_t
spool_wait_ns(const struct spool *sp, uint64_t now, uint64_t max)
{
	if (sp->q_head == NULL || sp->b_count == SPOOL_MAX_BATCHES)
		return max; /* a CQE wakes the loop */
	uint64_t due = sp->q_first_ns + sp->cfg->commit_delay;
	uint64_t w = due > now ? due - now : 0;
	return w < max ? w : max;
}

int
spool_idle(const struct spool *sp)
{
	return sp->q_head == NULL && sp->b_count == 0 && !sp->write_inflight && sp->dio_inflight == 0 &&
	       !sp->fsync_inflight && sp->void_inflight == 0;
}

/* ---- the sink interface ---- */

static int
s_open(void *self, struct sink_waiter *owner, const struct sink_open_info *info, struct sink_tx **out,
       char qid[SINK_QID_MAX])
{
	struct spool *sp = self;
	assert(owner != NULL);
	bool internal = sp->internal_next;
	sp->internal_next = false;
	if (!internal && sp->hooks.admit != NULL) {
		int a = sp->hooks.admit(sp->hooks.ctx);
		if (a < 0)
			return a;
	}
	if (sp->cur == NULL || sp->cur->abandoned) {
		/* A new segment is needed before we can promise anything. */
		int r = sp_seg_ensure(sp, SPOOL_HDR_SIZE);
		if (r < 0) {
			if (r == -ENOSPC)
				sp->env.stats->spool_enospc++;
			return r;
		}
	}
	struct sink_tx *tx = sp->free_tx;
	if (tx != NULL) {
		sp->free_tx = tx->next;
	} else if (sp->tx_used < sp->ntx) {
		tx = &sp->txs[sp->tx_used++];
	} else {
		/* Cannot happen with the sizing above; refuse rather than
		 * crash if it ever does (451 4.3.0, the client retries). */
		sp->env.stats->spool_memory_full++;
		return -EAGAIN;
	}
	memset(tx, 0, sizeof(*tx));
	tx->sp = sp;
	tx->owner = owner;
	tx->state = TX_OPEN;
	sp->tx_open_count++;
	tx->received_us = wall_us();
	qid_next(sp->env.qid, tx->received_us, tx->qid);
	static_assert(QID_LEN < SINK_QID_MAX && QID_LEN <= SPOOL_QID_FIELD, "qid fits");

	const struct smtp_peer *peer = info->peer;
	const char *addr = peer != NULL ? peer->addr_text : "unknown";
	uint8_t port[2] = {0, 0}, params[SPOOL_MAIL_PARAMS_LEN];
	if (peer != NULL) {
		port[0] = (uint8_t)peer->port;
		port[1] = (uint8_t)(peer->port >> 8);
	}
	for (int i = 0; i < 8; i++)
		params[i] = (uint8_t)(info->size_declared >> (8 * i));
	params[8] = (uint8_t)((info->utf8 ? SPOOL_MAIL_SMTPUTF8 : 0) |
			      (info->eightbit ? SPOOL_MAIL_8BITMIME : 0) |
			      (info->esmtp ? SPOOL_MAIL_ESMTP : 0));
	/* The session reserves SMTP_ENV_FIXED_MAX of smtp_conf.envelope_limit
	 * for these TLVs, and counts the recipients itself. */
	static_assert(5 * SPOOL_TLV_HDR + sizeof(peer->addr_text) + 2 + SMTP_DOMAIN_MAX +
			      SMTP_PATH_MAX + SPOOL_MAIL_PARAMS_LEN <=
			  SMTP_ENV_FIXED_MAX,
		      "the fixed envelope TLVs fit the session's reserve");
	static_assert(SMTP_ENV_RCPT_COST == SPOOL_TLV_HDR, "a recipient costs its TLV header");
	if (sp_share_reserve(sp, tx, info->size_declared) < 0) {
		tx_release(sp, tx);
		return -ENOSPC; /* 452 4.3.1 at MAIL, not 451 after the upload */
	}
	int r = stage(sp, tx, NULL, SPOOL_HDR_SIZE); /* header, filled at commit */
	if (r == 0)
		r = stage_tlv(sp, tx, SPOOL_TLV_CLIENT_ADDR, addr, strlen(addr));
	if (r == 0)
		r = stage_tlv(sp, tx, SPOOL_TLV_CLIENT_PORT, port, sizeof(port));
	if (r == 0)
		r = stage_tlv(sp, tx, SPOOL_TLV_HELO, info->helo, strlen(info->helo));
	if (r == 0)
		r = stage_tlv(sp, tx, SPOOL_TLV_MAIL_FROM, info->from, info->from_len);
	if (r == 0)
		r = stage_tlv(sp, tx, SPOOL_TLV_MAIL_PARAMS, params, sizeof(params));
	if (r < 0) {
		sp->env.stats->spool_memory_full++;
		tx_release(sp, tx);
		return -EIO;
	}
	memcpy(qid, tx->qid, QID_LEN + 1);
	*out = tx;
	return 0;
}

/* One envelope TLV after open, before the message bytes. */
static int
env_tlv(struct sink_tx *tx, unsigned type, const char *v, size_t len)
{
	assert(tx->state == TX_OPEN && tx->env_end == 0);
	if (tx->err != 0)
		return tx->err;
	int r = stage_tlv(tx->sp, tx, type, v, len);
	if (r < 0) {
		tx->sp->env.stats->spool_memory_full++;
		chain_free(tx->sp, tx);
		tx->err = -EIO;
		return tx->err;
	}
	return 0;
}

static int
s_rcpt(struct sink_tx *tx, const char *rcpt, size_t len)
{
	return env_tlv(tx, SPOOL_TLV_RCPT, rcpt, len);
}

static int
s_data(struct sink_tx *tx, const char *p, size_t n)
{
	assert(tx->state == TX_OPEN);
	if (tx->err != 0)
		return tx->err;
	if (tx->env_end == 0)
		tx->env_end = tx->len;
	int r = stage(tx->sp, tx, p, n);
	if (r < 0) {
		/* spool_memory or the large share reached: this message fails
		 * (451 at its end); its chunks go back now so the others can
		 * finish. The share logged its own refusal. */
		tx->sp->env.stats->spool_memory_full++;
		if (r == -ENOMEM)
			log_warn("spool: spool_memory (%llu bytes) full; message %s refused",
				 (unsigned long long)tx->sp->memory_cap, tx->qid);
		chain_free(tx->sp, tx);
		tx->err = -EIO;
		return tx->err;
	}
	return 0;
}

/* A content filter's quarantine: the reason as an envelope TLV (before
 * the message bytes), which keeps the relay from trying it (relay_msg.c). */
static int
s_hold(struct sink_tx *tx, const char *reason, size_t len)
{
	return env_tlv(tx, SPOOL_TLV_HOLD, reason, len > 1024 ? 1024 : len); /* a reason, not a document */
}

/* CRC32C over the staged record (crc field is still zero). */
static uint32_t
tx_crc(const struct sink_tx *tx)
{
	uint32_t c = ~0u;
	for (const struct chunk *ch = tx->head; ch != NULL; ch = ch->next)
		c = spool_crc32c_update(c, ch->mem, chunk_len(tx, ch));
	return ~c;
}

static int
s_commit(struct sink_tx *tx)
{
	struct spool *sp = tx->sp;
	assert(tx->state == TX_OPEN);
	if (tx->err != 0) {
		int err = tx->err;
		tx_release(sp, tx); /* an error answer ends the transaction */
		return err;
	}
	if (tx->env_end == 0)
		tx->env_end = tx->len;
	uint64_t env_len = tx->env_end - SPOOL_HDR_SIZE, msg_len = tx->len - tx->env_end;
	uint64_t rec_len = spool_rec_len(env_len, msg_len);
	if (stage(sp, tx, NULL, (size_t)(rec_len - tx->len)) < 0) {
		sp->env.stats->spool_memory_full++;
		tx_release(sp, tx);
		return -EIO;
	}
	assert(tx->len == rec_len);
	struct spool_hdr h = {
		.magic = SPOOL_REC_MAGIC,
		.version = SPOOL_REC_VERSION,
		.rec_len = rec_len,
		.received_us = tx->received_us,
		.env_len = (uint32_t)env_len,
		.msg_len = msg_len,
	};
	memcpy(h.qid, tx->qid, QID_LEN + 1);
	spool_hdr_encode(tx->head->mem, &h);
	spool_hdr_set_crc(tx->head->mem, tx_crc(tx));

	assert(sp->tx_open_count > 0);
	sp->tx_open_count--;
	tx->state = TX_COMMITTED;
	tx->next = NULL;
	if (sp->q_tail == NULL) {
		sp->q_head = tx;
		sp->q_first_ns = sp->now;
	} else {
		sp->q_tail->next = tx;
	}
	sp->q_tail = tx;
	sp->q_bytes += rec_len;
	sp->q_count++;
	return SINK_PENDING;
}

static void
s_abort(struct sink_tx *tx)
{
	if (tx->state == TX_COMMITTED) {
		/* In the queue or a batch (maybe in the kernel): the record is
		 * written anyway, only the verdict is dropped (sink.h). */
		tx->owner = NULL;
		return;
	}
	tx_release(tx->sp, tx);
}

const struct sink_ops spool_ops = {
	.tx_open = s_open,
	.tx_hold = s_hold,
	.tx_rcpt = s_rcpt,
	.tx_data = s_data,
	.tx_commit = s_commit,
	.tx_abort = s_abort,
};

void
spool_sink(struct spool *sp, struct sink *out)
{
	out->ops = &spool_ops;
	out->self = sp;
}

void
spool_set_conf(struct spool *sp, const struct config *cfg)
{
	sp->cfg = cfg; /* commit_delay and commit_size are read from it */
}

