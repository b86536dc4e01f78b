/*
 * spool.c - `sink = spool`: the durable spool. Per-worker append-only
 * segment files, group commit through the worker's io_uring, recovery at
 * start-up. Contract: engine/spool.h; on-disk format: spool_format.h and
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
#include "spool.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"
#include "ringmx/config.h"
#include "ringmx/smtp.h"
#include "ringmx/spool_format.h"
#include "ringmx/spool_read.h"

/* Staging chunk: small enough that a 1 KiB message wastes little of
 * spool_memory, large enough that a 1 MiB batch is 256 iovecs. */
#define SPOOL_CHUNK_SIZE 4096u
/* The pool grows by one mapping of this size at a time, up to spool_memory. */
#define SPOOL_BLOCK_SIZE (1u << 20)
#define SPOOL_BLOCK_CHUNKS (SPOOL_BLOCK_SIZE / SPOOL_CHUNK_SIZE)
/* Closed batches in flight (queued, writing, written, syncing). When all
 * are busy the commit queue simply grows (bounded by spool_memory). */
#define SPOOL_MAX_BATCHES 16
/* iovecs per writev (the kernel's UIO_MAXIOV). */
#define SPOOL_IOV_MAX 1024
/* Segments open at once: the current one plus those batches still use. */
#define SPOOL_MAX_SEGS (SPOOL_MAX_BATCHES + 1)
/* After a segment could not be created (disk full), transactions are
 * refused for this long before the next attempt. */
#define SPOOL_RETRY_NS (100ull * 1000000ull)
/* Segment files are sized in multiples of this (fallocate granularity). */
#define SPOOL_SEG_ALIGN 4096u

/* Zero-filling ahead (see the top): writes of this size, at most
 * SPOOL_ZERO_INFLIGHT of them in the kernel at once, each followed by a
 * sync_file_range that starts its writeback. So the disk sees a steady
 * trickle, never a whole segment queued in front of a record fdatasync
 * (64 MiB is ~25 ms of this disk: a p99 stall if it came in one burst). */
#define SPOOL_ZERO_BUF (1u << 20)
#define SPOOL_ZERO_INFLIGHT 4
/* Pacing: while the current segment is in use, at most SPOOL_ZERO_PACE
 * bytes of zeros per byte of records appended since preparing started
 * (plus one round of writes). Zeroing a segment costs CPU (page cache) in
 * io-wq threads that share the worker's CPU; spread out, it does not stall
 * the loop. 4 with the start at 1/2 ends the zeros at 3/4 of the current
 * segment, leaving a quarter for the fdatasync. When the current segment
 * is gone (it filled first, or was abandoned) there is no limit. */
#define SPOOL_ZERO_PACE 4
/* The next segment is prepared once the current one is 1/SPOOL_PREP_DIVISOR
 * full: half a segment of records (32 MiB by default) is ample time to zero
 * one (~35 ms per 64 MiB here), and an idle spool keeps no spare segment.
 * A named constant, not a configuration key, on purpose. */
#define SPOOL_PREP_DIVISOR 2

/* The zero buffer, shared by all workers and never written: it is in .bss,
 * so its pages are the kernel's zero page until someone writes (nobody
 * does), and it is never freed, so a zero write still in the kernel when a
 * spool is closed cannot read freed (and maybe reused) memory. */
static uint8_t spool_zeros[SPOOL_ZERO_BUF] __attribute__((aligned(4096)));

/* user_data tag: kind in bits 16..23, batch index (or zero write slot) below. */
enum {
	TAG_WRITE = 1,
	TAG_FSYNC = 2,
	TAG_PREP_ALLOC = 3,   /* fallocate of the segment being prepared */
	TAG_PREP_WRITE = 4,   /* a zero write; index: its slot */
	TAG_PREP_SYNC = 5,    /* fdatasync of the zeros */
	TAG_PREP_DIRSYNC = 6, /* fsync of the directory (the new name) */
	TAG_PREP_SFR = 7,     /* writeback start after a zero write; index: its slot */
	TAG_VOID_SYNC = 8,    /* fdatasync of an abandoned segment cut back; index: slot */
};

struct chunk {
	struct chunk *next;
	uint8_t *mem;
};

enum tx_state { TX_FREE = 0, TX_OPEN, TX_COMMITTED };

struct sink_tx {
	struct spool *sp;
	struct sink_waiter *owner; /* NULL: aborted after commit, no verdict */
	struct sink_tx *next;    /* free list, commit queue or batch */
	struct chunk *head, *tail;
	uint32_t tail_len;       /* bytes used in the tail chunk */
	uint8_t state;
	int err;                 /* a failed tx_data/tx_rcpt: 0 or -errno */
	uint64_t len;            /* bytes staged (the whole record after commit) */
	uint64_t env_end;        /* offset of the message bytes; 0 until the first tx_data */
	uint64_t received_us;
	char qid[SINK_QID_MAX];
};

struct seg {
	int fd; /* -1: slot unused */
	uint64_t seq;
	uint64_t size;     /* preallocated length */
	uint64_t tail;     /* next record offset */
	uint32_t refs;     /* batches not yet finished */
	/* End of the last record whose batch became durable (got its 250s):
	 * what an abandoned segment is cut back to when it is closed. */
	uint64_t durable_end;
	bool current;
	bool abandoned;    /* a write or fsync failed: never written again */
};

/* The segment being prepared (one at a time). */
enum prep_state {
	P_NONE = 0, /* no file */
	P_ALLOC,    /* fallocate in flight */
	P_ZERO,     /* zero writes in flight */
	P_SYNC,     /* fdatasync in flight */
	P_DIRSYNC,  /* directory fsync in flight */
	P_READY,    /* zeroed and durable: the next rotation uses it */
	P_FAILED,   /* an error: removed once its last CQE is back */
};

struct prep {
	uint8_t state;
	int fd;
	uint64_t seq;
	uint64_t size;
	uint64_t next;      /* first byte not yet given to a zero write */
	uint64_t zeroed;    /* bytes whose zero write and writeback start completed */
	uint64_t start_ns;  /* monotonic, for the log */
	uint64_t cur_seq;   /* the current segment when preparing started */
	uint64_t cur_tail0; /* and its tail then (pacing) */
	unsigned inflight;  /* SQEs of this file in the kernel */
	/* Zero write slots: a range being written (w_done of w_len bytes so
	 * far), then its writeback started (w_sfr). w_len 0: slot free. */
	uint64_t w_off[SPOOL_ZERO_INFLIGHT];
	uint32_t w_len[SPOOL_ZERO_INFLIGHT];
	uint32_t w_done[SPOOL_ZERO_INFLIGHT];
	bool w_sfr[SPOOL_ZERO_INFLIGHT];
};

enum batch_state { B_FREE = 0, B_QUEUED, B_WRITING, B_WRITTEN, B_SYNCING, B_DONE };

struct batch {
	uint8_t state;
	int err;           /* set while WRITING when its segment was abandoned */
	struct seg *seg;
	uint64_t off;      /* file offset of the first record */
	uint64_t len;      /* bytes of all its records */
	uint64_t done;     /* bytes written so far */
	uint64_t sub_bytes; /* bytes of the writev in flight */
	uint32_t n;        /* records */
	struct sink_tx *head, *tail;
	/* Write cursor: the first byte not yet written. */
	struct sink_tx *cur_tx;
	struct chunk *cur_ch;
	uint32_t cur_off;
	struct iovec iov[SPOOL_IOV_MAX];
};

struct spool {
	struct spool_env env;
	const struct config *cfg;
	unsigned worker;
	char dir[CONFIG_PATH_MAX + 16]; /* spool_dir/w<N> */
	int dirfd;
	uint64_t now;        /* monotonic ns of the last spool_poll */
	uint64_t next_seq;   /* of the next segment file */
	uint64_t retry_at;   /* no segment: refuse until then */
	int open_err;        /* why the last segment open failed */
	uint64_t seg_size;
	uint64_t memory_cap;
	bool durable;

	/* Chunk pool. */
	struct chunk *free_chunks;
	uint64_t mapped;     /* bytes mapped so far (<= memory_cap) */
	void **blocks;       /* mappings, for munmap */
	struct chunk **descs; /* descriptor arrays, one per block */
	size_t nblocks, maxblocks;

	/* Transactions. A connection has at most one open, but a committed
	 * one whose client went away stays until its batch is durable while
	 * the slot serves a new client: so one per connection plus one per
	 * staging chunk (every committed transaction holds at least one).
	 * Slots are handed out from the free list, else from the untouched
	 * tail [tx_used, ntx), so the mapping is only touched as needed. */
	struct sink_tx *txs;
	struct sink_tx *free_tx;
	unsigned ntx;
	unsigned tx_used;
	unsigned tx_open_count;

	/* Commit queue: committed records not yet in a batch. */
	struct sink_tx *q_head, *q_tail;
	uint64_t q_bytes;
	uint64_t q_first_ns;
	unsigned q_count;

	struct batch batches[SPOOL_MAX_BATCHES];
	unsigned b_head, b_count; /* ring, oldest first */
	bool write_inflight;
	bool fsync_inflight;
	uint64_t fsync_start; /* monotonic ns the fsync in flight was queued */

	struct seg segs[SPOOL_MAX_SEGS];
	struct seg *cur;
	uint64_t last_seq;   /* seq of the newest segment made current */

	/* Pre-zeroing (durability = fsync only). */
	struct prep prep;
	bool prep_blocked;   /* a preparation failed: none until the next rotation */
	bool prep_err_logged; /* log one failure, not one per segment */
	bool keep_dirfd;     /* an SQE on dirfd may still be in the kernel at close */

	/* Abandoned segments cut back to their durable end, whose fdatasync
	 * is in flight: the fd stays open until its CQE. fd -1: free. */
	int void_fd[SPOOL_MAX_SEGS];
	uint64_t void_seq[SPOOL_MAX_SEGS];
	unsigned void_inflight;

	struct spool_hooks hooks; /* the relay's (spool.h) */
	uint64_t first_seq;  /* first segment of this run */
	bool internal_next;  /* the next tx_open is a bounce: no admission check */
};

/* ---- helpers ---- */

static uint64_t
wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int
map_errno(int e)
{
	/* Only "disk full" has its own reply (452 4.3.1); every other failure
	 * is 451 4.3.0. */
	return e == ENOSPC || e == EDQUOT ? -ENOSPC : -EIO;
}

static void
seg_name(char *buf, size_t len, uint64_t seq)
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
}

/* Append bytes to a transaction's chain. 0 or -ENOMEM (spool_memory). */
static int
stage(struct spool *sp, struct sink_tx *tx, const void *data, size_t n)
{
	const uint8_t *p = data;
	while (n > 0) {
		if (tx->tail == NULL || tx->tail_len == SPOOL_CHUNK_SIZE) {
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
static int
dir_sync(struct spool *sp)
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
 * tail in seg_close; the change is made durable through the ring. */
static void
seg_void_tail(struct spool *sp, struct seg *s)
{
	char name[32];
	seg_name(name, sizeof(name), s->seq);
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
	io_uring_sqe_set_data64(sqe, sp->env.ud_base | (uint64_t)TAG_VOID_SYNC << 16 | i);
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
		seg_name(name, sizeof(name), sp->void_seq[i]);
		log_err("spool: fdatasync of %s/%s after cutting it back: %s; after a crash of the "
			"machine its messages that got 451 may be delivered (duplicates)",
			sp->dir, name, strerror(-res));
	}
	close(sp->void_fd[i]);
	sp->void_fd[i] = -1;
	sp->void_inflight--;
}

static void
seg_close(struct spool *sp, struct seg *s)
{
	char name[32];
	assert(s->fd >= 0 && s->refs == 0 && !s->current);
	seg_name(name, sizeof(name), s->seq);
	if (s->tail == 0 && !s->abandoned) {
		/* Never used: do not leave a preallocated empty file behind.
		 * A failed directory fsync is only logged: should the name
		 * survive a crash, recovery removes a file without records. */
		close(s->fd);
		if (unlinkat(sp->dirfd, name, 0) == 0)
			(void)dir_sync(sp);
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
		seg_close(sp, s);
}

static void
seg_retire(struct spool *sp)
{
	struct seg *s = sp->cur;
	if (s == NULL)
		return;
	sp->cur = NULL;
	s->current = false;
	if (s->refs == 0)
		seg_close(sp, s);
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
static void
seg_install(struct spool *sp, int fd, uint64_t seq, uint64_t size, bool zeroed)
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
static void
prezero_error(struct spool *sp, uint64_t seq, int err, const char *what)
{
	char name[32];
	sp->env.stats->spool_prezero_errors++;
	if (sp->prep_err_logged)
		return;
	sp->prep_err_logged = true;
	seg_name(name, sizeof(name), seq);
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
static int
seg_create(struct spool *sp, uint64_t size, bool zero)
{
	char name[32];
	seg_name(name, sizeof(name), sp->next_seq);
	int fd = openat(sp->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
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
			prezero_error(sp, sp->next_seq, r, "write");
			zero = false;
		}
	}
	r = dir_sync(sp);
	if (r < 0) {
		/* The name may not survive a crash: nothing may be
		 * acknowledged in this file. The caller refuses mail (451)
		 * and tries again later, under the same number. */
		close(fd);
		unlinkat(sp->dirfd, name, 0);
		return r;
	}
	seg_install(sp, fd, sp->next_seq++, size, zero);
	return 0;
}

/* ---- preparing the next segment (pre-zeroing, through the ring) ---- */

static void
prep_tag(struct spool *sp, struct io_uring_sqe *sqe, unsigned kind, unsigned idx)
{
	io_uring_sqe_set_data64(sqe, sp->env.ud_base | (uint64_t)kind << 16 | idx);
	sp->prep.inflight++;
}

/* A failed preparation is removed once none of its SQEs is in the kernel:
 * until then its fd stays open, because io-wq looks an fd up only when it
 * runs the request, and a reused number would point it at another file. */
static void
prep_reap(struct spool *sp)
{
	struct prep *p = &sp->prep;
	char name[32];
	if (p->state != P_FAILED || p->inflight > 0)
		return;
	seg_name(name, sizeof(name), p->seq);
	close(p->fd);
	/* No directory fsync: if the name survives a crash, the file holds
	 * only zeros and recovery removes it. */
	unlinkat(sp->dirfd, name, 0);
	p->fd = -1;
	p->state = P_NONE;
}

static void
prep_fail(struct spool *sp, int err, const char *what)
{
	prezero_error(sp, sp->prep.seq, err, what);
	sp->prep.state = P_FAILED;
	sp->prep_blocked = true; /* no new attempt before the next rotation */
	prep_reap(sp);
}

static void
prep_write_submit(struct spool *sp, unsigned i)
{
	struct prep *p = &sp->prep;
	struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
	/* Buffered: the zeroed pages stay in the page cache, so the partial
	 * first and last pages of each record write are found there instead
	 * of being read back from disk. */
	io_uring_prep_write(sqe, p->fd, spool_zeros, p->w_len[i] - p->w_done[i],
			    p->w_off[i] + p->w_done[i]);
	prep_tag(sp, sqe, TAG_PREP_WRITE, i);
}

/* How far zeroing may go now (see SPOOL_ZERO_PACE). */
static uint64_t
prep_allowance(const struct spool *sp)
{
	const struct prep *p = &sp->prep;
	const struct seg *s = sp->cur;
	if (s == NULL || s->seq != p->cur_seq || s->tail < p->cur_tail0)
		return p->size;
	uint64_t a = SPOOL_ZERO_PACE * (s->tail - p->cur_tail0) +
		     (uint64_t)SPOOL_ZERO_INFLIGHT * SPOOL_ZERO_BUF;
	return a < p->size ? a : p->size;
}

/* Keep up to SPOOL_ZERO_INFLIGHT zero writes going, as far as the pacing
 * allows; when all are in, fdatasync the file. Called on every CQE of the
 * preparation and once per loop iteration (records move the pacing on). */
static void
prep_pump(struct spool *sp)
{
	struct prep *p = &sp->prep;
	if (p->state != P_ZERO)
		return;
	uint64_t allow = prep_allowance(sp);
	for (unsigned i = 0; i < SPOOL_ZERO_INFLIGHT && p->next < allow; i++) {
		if (p->w_len[i] != 0)
			continue;
		uint64_t n = p->size - p->next;
		if (n > SPOOL_ZERO_BUF)
			n = SPOOL_ZERO_BUF;
		p->w_off[i] = p->next;
		p->w_len[i] = (uint32_t)n;
		p->w_done[i] = 0;
		p->w_sfr[i] = false;
		p->next += n;
		prep_write_submit(sp, i);
	}
	if (p->zeroed == p->size) {
		assert(p->inflight == 0);
		/* The zeros and the extent conversion, now, off the path of
		 * any acknowledgement. */
		struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
		io_uring_prep_fsync(sqe, p->fd, IORING_FSYNC_DATASYNC);
		prep_tag(sp, sqe, TAG_PREP_SYNC, 0);
		p->state = P_SYNC;
	}
}

/* Create the next segment's file and start zero-filling it. openat is the
 * one synchronous step: creating an inode waits for no I/O (the journal
 * commits it later), while an IORING_OP_OPENAT would cost an io-wq round
 * trip and one more state for nothing. */
static void
prep_start(struct spool *sp)
{
	struct prep *p = &sp->prep;
	char name[32];
	assert(p->state == P_NONE && p->inflight == 0);
	seg_name(name, sizeof(name), sp->next_seq);
	int fd = openat(sp->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		prezero_error(sp, sp->next_seq, -errno, "create");
		sp->prep_blocked = true;
		return;
	}
	memset(p, 0, sizeof(*p));
	p->fd = fd;
	p->seq = sp->next_seq++; /* reserved now: recovery keeps seq order */
	p->size = sp->seg_size;
	p->start_ns = sp->now;
	p->cur_seq = sp->cur != NULL ? sp->cur->seq : 0;
	p->cur_tail0 = sp->cur != NULL ? sp->cur->tail : 0;
	p->state = P_ALLOC;
	/* fallocate first, for the reasons given in seg_create. */
	struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
	io_uring_prep_fallocate(sqe, fd, 0, 0, (off_t)p->size);
	prep_tag(sp, sqe, TAG_PREP_ALLOC, 0);
}

/* Start preparing when the current segment is far enough along. */
static void
prep_maybe_start(struct spool *sp)
{
	const struct seg *s = sp->cur;
	if (!sp->durable || sp->prep.state != P_NONE || sp->prep_blocked)
		return;
	if (s == NULL || s->tail < s->size / SPOOL_PREP_DIVISOR)
		return;
	prep_start(sp);
}

static void
prep_on_cqe(struct spool *sp, unsigned kind, unsigned idx, int res)
{
	struct prep *p = &sp->prep;
	assert(p->inflight > 0 && p->state != P_NONE && p->state != P_READY);
	p->inflight--;
	if (p->state == P_FAILED) {
		/* Whatever it says, the file is being removed. */
		prep_reap(sp);
		return;
	}
	switch (kind) {
	case TAG_PREP_ALLOC:
		assert(p->state == P_ALLOC);
		/* EOPNOTSUPP (a file system without fallocate): the zero
		 * writes allocate the blocks instead. */
		if (res < 0 && res != -EOPNOTSUPP) {
			prep_fail(sp, res, "fallocate");
			return;
		}
		p->state = P_ZERO;
		prep_pump(sp);
		return;
	case TAG_PREP_WRITE: {
		assert(p->state == P_ZERO && idx < SPOOL_ZERO_INFLIGHT && p->w_len[idx] > 0 &&
		       !p->w_sfr[idx]);
		if (res == -EINTR || res == -EAGAIN) {
			prep_write_submit(sp, idx); /* nothing written: again */
			return;
		}
		if (res <= 0) {
			/* 0: no progress on a regular file, an I/O error. */
			prep_fail(sp, res == 0 ? -EIO : res, res == 0 ? "write (no progress)" : "write");
			return;
		}
		assert((uint32_t)res <= p->w_len[idx] - p->w_done[idx]);
		p->w_done[idx] += (uint32_t)res;
		if (p->w_done[idx] < p->w_len[idx]) {
			prep_write_submit(sp, idx); /* short: the rest */
			return;
		}
		/* Start the writeback of this range now, without waiting for
		 * it (see SPOOL_ZERO_BUF): the final fdatasync then finds
		 * little left to write. */
		struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
		io_uring_prep_sync_file_range(sqe, p->fd, p->w_len[idx], p->w_off[idx],
					      SYNC_FILE_RANGE_WRITE);
		prep_tag(sp, sqe, TAG_PREP_SFR, idx);
		p->w_sfr[idx] = true;
		return;
	}
	case TAG_PREP_SFR:
		assert(p->state == P_ZERO && idx < SPOOL_ZERO_INFLIGHT && p->w_sfr[idx]);
		/* An error here is an I/O error of the zeros: the same as a
		 * failed write. */
		if (res < 0) {
			prep_fail(sp, res, "sync_file_range");
			return;
		}
		p->zeroed += p->w_len[idx];
		p->w_len[idx] = 0; /* the slot is free */
		p->w_sfr[idx] = false;
		prep_pump(sp);
		return;
	case TAG_PREP_SYNC: {
		assert(p->state == P_SYNC);
		if (res < 0) {
			prep_fail(sp, res, "fdatasync");
			return;
		}
		/* The name must be durable before a record in the file is
		 * acknowledged. After the file's fdatasync (which committed
		 * the journal holding the new entry on ext4) this is cheap;
		 * through the ring it costs the loop nothing at all. */
		struct io_uring_sqe *sqe = sp->env.get_sqe(sp->env.ctx);
		io_uring_prep_fsync(sqe, sp->dirfd, 0);
		prep_tag(sp, sqe, TAG_PREP_DIRSYNC, 0);
		p->state = P_DIRSYNC;
		return;
	}
	case TAG_PREP_DIRSYNC:
		assert(p->state == P_DIRSYNC);
		if (res >= 0)
			res = fault_dirsync();
		if (res < 0) {
			prep_fail(sp, res, "fsync of the directory");
			return;
		}
		p->state = P_READY;
		sp->prep_err_logged = false; /* the next failure is news again */
		log_debug("spool: %s/%016" PRIx64 ".seg zero-filled ahead of need in %llu us",
			  sp->dir, p->seq, (unsigned long long)((mono_ns() - p->start_ns) / 1000u));
		return;
	default:
		panic("spool: unknown preparation tag %u", kind);
	}
}

/* Make the prepared segment current if it is ready. 0, or -1 if not. */
static int
prep_take(struct spool *sp)
{
	struct prep *p = &sp->prep;
	if (p->state != P_READY)
		return -1;
	assert(p->inflight == 0 && sp->cur == NULL);
	if (p->seq < sp->last_seq) {
		/* A segment was fallocated while this one was being prepared
		 * and took a later number. Records go to segments in seq order
		 * (recovery and readers rely on it), so this one is renamed
		 * past it; synchronous, like that fallback was, and at most
		 * once per fallback. */
		char from[32], to[32];
		seg_name(from, sizeof(from), p->seq);
		seg_name(to, sizeof(to), sp->next_seq);
		if (renameat(sp->dirfd, from, sp->dirfd, to) < 0) {
			prep_fail(sp, -errno, "rename");
			return -1;
		}
		p->seq = sp->next_seq++;
		int r = dir_sync(sp);
		if (r < 0) {
			/* The new name may not survive a crash: not used
			 * (removed under its new name); the caller makes a
			 * segment the old way, which fsyncs again. */
			prep_fail(sp, r, "fsync of the directory after rename");
			return -1;
		}
	}
	int fd = p->fd;
	p->fd = -1;
	p->state = P_NONE;
	seg_install(sp, fd, p->seq, p->size, true);
	return 0;
}

/* Make sure there is a current segment with room for need bytes. */
static int
seg_ensure(struct spool *sp, uint64_t need)
{
	if (sp->cur != NULL && sp->cur->tail + need <= sp->cur->size)
		return 0;
	if (sp->cur != NULL && sp->cur->tail == 0 && sp->cur->size >= need)
		return 0;
	uint64_t size = sp->seg_size;
	if (need > size) /* a record larger than segment_size gets its own file */
		size = (need + SPOOL_SEG_ALIGN - 1) / SPOOL_SEG_ALIGN * SPOOL_SEG_ALIGN;
	if (size == sp->seg_size && sp->prep.state == P_READY) {
		/* The usual rotation: switch to the pre-zeroed segment. */
		seg_retire(sp);
		if (prep_take(sp) == 0) {
			sp->retry_at = 0;
			return 0;
		}
	}
	if (sp->cur == NULL && sp->now < sp->retry_at)
		return sp->open_err;
	/* Nothing ready: do not wait for it, fallocate this one as before
	 * (counted in spool_segments_unzeroed); the preparation goes on. */
	seg_retire(sp);
	int r = seg_create(sp, size, false);
	if (r < 0) {
		sp->open_err = map_errno(-r);
		sp->retry_at = sp->now + SPOOL_RETRY_NS;
		log_err("spool: cannot create segment in %s: %s; refusing mail for %llums", sp->dir,
			strerror(-r), (unsigned long long)(SPOOL_RETRY_NS / 1000000u));
		return sp->open_err;
	}
	sp->retry_at = 0;
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
	seg_name(name, sizeof(name), s->seq);
	if (!s->abandoned)
		log_err("spool: %s on %s/%s failed: %s; segment abandoned, its pending messages "
			"get %s, continuing in a new segment",
			what, sp->dir, name, strerror(-err), err == -ENOSPC ? "452" : "451");
	s->abandoned = true;
	if (s->current)
		seg_retire(sp);
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
	while (sp->q_head != NULL && sp->b_count < SPOOL_MAX_BATCHES) {
		int r = seg_ensure(sp, sp->q_head->len);
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
		while (sp->q_head != NULL && s->tail + sp->q_head->len <= s->size &&
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
		if (sp->q_head == NULL)
			sp->q_tail = NULL;
		else
			sp->q_first_ns = sp->now; /* the rest starts a new wait */
		b->cur_tx = b->head;
		b->cur_ch = b->head->head;
		b->cur_off = 0;
		sp->env.stats->spool_batches++;
	}
}

/* Length of chunk c of tx (the tail chunk may be partly used). */
static uint32_t
chunk_len(const struct sink_tx *tx, const struct chunk *c)
{
	return c == tx->tail ? tx->tail_len : SPOOL_CHUNK_SIZE;
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
	io_uring_sqe_set_data64(sqe, sp->env.ud_base | (uint64_t)TAG_WRITE << 16 | batch_index(sp, b));
	b->sub_bytes = bytes;
	b->state = B_WRITING;
	sp->write_inflight = true;
	sp->env.stats->spool_writes++;
}

/* The oldest queued batch starts writing when no write is in flight. */
static void
write_next(struct spool *sp)
{
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
	if (sp->fsync_inflight || !sp->durable)
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
	io_uring_sqe_set_data64(sqe, sp->env.ud_base | (uint64_t)TAG_FSYNC << 16);
	sp->fsync_inflight = true;
	sp->fsync_start = mono_ns();
	sp->env.stats->spool_fsyncs++;
}

static void
on_write(struct spool *sp, struct batch *b, int res)
{
	assert(b->state == B_WRITING && sp->write_inflight);
	sp->write_inflight = false;
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
	if (res <= 0) {
		/* 0 would mean no progress on a regular file: an I/O error. */
		int err = res == 0 ? -EIO : map_errno(-res);
		b->state = B_WRITTEN; /* seg_abandon fails it with the others */
		seg_abandon(sp, b->seg, err, res == 0 ? "write (no progress)" : "write");
		assert(b->state == B_DONE || b->state == B_FREE);
		return;
	}
	assert((uint64_t)res <= b->sub_bytes);
	sp->env.stats->spool_bytes_written += (uint64_t)res;
	if ((uint64_t)res < b->sub_bytes)
		sp->env.stats->spool_short_writes++;
	b->done += (uint64_t)res;
	cursor_advance(b, (uint64_t)res);
	if (b->done < b->len) {
		/* A short write, or more than SPOOL_IOV_MAX iovecs: go on from
		 * where it stopped. */
		write_submit(sp, b);
		return;
	}
	b->state = B_WRITTEN;
	if (!sp->durable)
		batch_finish(sp, b, 0);
}

static void
on_fsync(struct spool *sp, int res)
{
	assert(sp->fsync_inflight);
	sp->fsync_inflight = false;
	/* From queueing to the CQE seen: the disk plus io-wq scheduling. */
	sp->env.stats->spool_fsync_us += (mono_ns() - sp->fsync_start) / 1000u;
	int err = 0;
	if (res >= 0)
		res = fault_fsync();
	if (res < 0) {
		/* Final (fsyncgate): never retried, the kernel may already
		 * have marked the failed pages clean. Abandon the segment
		 * first (that fails its batches that are not syncing), then
		 * fail the syncing ones. */
		struct seg *s = NULL;
		err = map_errno(-res);
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
	uint32_t tag = (uint32_t)(cqe->user_data & 0xffffffffu);
	unsigned kind = tag >> 16, idx = tag & 0xffff;
	if (kind == TAG_WRITE) {
		assert(idx < SPOOL_MAX_BATCHES);
		on_write(sp, &sp->batches[idx], cqe->res);
	} else if (kind == TAG_FSYNC) {
		on_fsync(sp, cqe->res);
	} else if (kind >= TAG_PREP_ALLOC && kind <= TAG_PREP_SFR) {
		prep_on_cqe(sp, kind, idx, cqe->res);
	} else if (kind == TAG_VOID_SYNC) {
		on_void_sync(sp, idx, cqe->res);
	} else {
		panic("spool: unknown CQE tag %#x", tag);
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
		 * that one ends. Waiting would only add latency. */
		bool idle = !sp->write_inflight;
		if (idle || sp->q_bytes >= sp->cfg->commit_size ||
		    now >= sp->q_first_ns + sp->cfg->commit_delay)
			batch_form(sp);
	}
	write_next(sp);
	fsync_next(sp);
	prep_maybe_start(sp);
	prep_pump(sp); /* the records written move the pacing on */
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
	return sp->q_head == NULL && sp->b_count == 0 && !sp->write_inflight &&
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
		int r = seg_ensure(sp, SPOOL_HDR_SIZE);
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

static int
s_rcpt(struct sink_tx *tx, const char *rcpt, size_t len)
{
	assert(tx->state == TX_OPEN && tx->env_end == 0);
	if (tx->err != 0)
		return tx->err;
	int r = stage_tlv(tx->sp, tx, SPOOL_TLV_RCPT, rcpt, len);
	if (r < 0) {
		tx->sp->env.stats->spool_memory_full++;
		chain_free(tx->sp, tx);
		tx->err = -EIO;
		return tx->err;
	}
	return 0;
}

static int
s_data(struct sink_tx *tx, const char *p, size_t n)
{
	assert(tx->state == TX_OPEN);
	if (tx->err != 0)
		return tx->err;
	if (tx->env_end == 0)
		tx->env_end = tx->len;
	if (stage(tx->sp, tx, p, n) < 0) {
		/* spool_memory reached: this message fails (451 at its end);
		 * its chunks go back now so the others can finish. */
		tx->sp->env.stats->spool_memory_full++;
		log_warn("spool: spool_memory (%llu bytes) full; message %s refused",
			 (unsigned long long)tx->sp->memory_cap, tx->qid);
		chain_free(tx->sp, tx);
		tx->err = -EIO;
		return tx->err;
	}
	return 0;
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

static const struct sink_ops spool_ops = {
	.tx_open = s_open,
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

/* ---- start-up: directories and recovery ---- */

/* mkdir -p with mode 0700 for what it creates. */
int
spool_mkdir_p(const char *path)
{
	char buf[CONFIG_PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char c = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0700) < 0 && errno != EEXIST)
			return -errno;
		buf[i] = c;
	}
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Copy [off, off + len) of the segment fd into
 * spool_dir/damaged/w<N>-<seq>-<off>.bin (via a .tmp file, fsynced, renamed),
 * where an operator finds it (ringmx-spool verify names it). Read with
 * pread, so an unreadable sector is an error here, not a signal. A copy
 * made by an earlier start is kept. 0 or -errno (the caller logs). */
static int
damaged_copy(const struct spool *sp, int fd, uint64_t seq, uint64_t off, uint64_t len,
	     char *path, size_t pathlen)
{
	char dir[CONFIG_PATH_MAX + 16], tmp[CONFIG_PATH_MAX + 96];
	snprintf(dir, sizeof(dir), "%s/" SPOOL_DAMAGED_DIR, sp->cfg->spool_dir);
	snprintf(path, pathlen, "%s/w%u-%016" PRIx64 "-%016" PRIx64 ".bin", dir, sp->worker, seq,
		 off);
	struct stat st;
	if (stat(path, &st) == 0)
		return 0;
	int r = spool_mkdir_p(dir);
	if (r < 0)
		return r;
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return -ENAMETOOLONG;
	int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0)
		return -errno;
	static uint8_t buf[1u << 16];
	for (uint64_t done = 0; done < len && r == 0;) {
		size_t n = len - done < sizeof(buf) ? (size_t)(len - done) : sizeof(buf);
		ssize_t got = pread(fd, buf, n, (off_t)(off + done));
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			/* An unreadable part: zeros in the copy, which the
			 * operator is told about (the log names the error). */
			r = got < 0 ? -errno : -EIO;
			memset(buf, 0, n);
			got = (ssize_t)n;
		}
		for (size_t w = 0; w < (size_t)got;) {
			ssize_t k = pwrite(out, buf + w, (size_t)got - w, (off_t)(done + w));
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				return close(out), unlink(tmp), k < 0 ? -errno : -EIO;
			w += (size_t)k;
		}
		done += (uint64_t)got;
		if (r < 0) {
			log_err("spool: recovery: reading damaged bytes at %" PRIu64 " of %s/%016" PRIx64
				".seg: %s; zeros in their copy",
				off + done - (uint64_t)got, sp->dir, seq, strerror(-r));
			r = 0;
		}
	}
	if (fsync(out) < 0 || close(out) < 0) {
		r = -errno;
		unlink(tmp);
		return r;
	}
	if (rename(tmp, path) < 0) {
		r = -errno;
		unlink(tmp);
		return r;
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		(void)fsync(dfd); /* the segment keeps the bytes anyway */
		close(dfd);
	}
	return 0;
}

struct recover_dmg {
	struct spool *sp;
	int fd;
	uint64_t seq;
};

/* A damaged range: set its bytes aside and say so, loudly. The segment
 * itself is left as it is and never removed by ringmxd (relay.c). */
static void
recover_on_damage(void *arg, uint64_t off, uint64_t len)
{
	struct recover_dmg *d = arg;
	char path[CONFIG_PATH_MAX + 96];
	int r = damaged_copy(d->sp, d->fd, d->seq, off, len, path, sizeof(path));
	log_err("spool: recovery: %s/%016" PRIx64 ".seg: DAMAGED at offset %" PRIu64 ": %" PRIu64
		" bytes are not a valid record (a disk or a person changed them); %s %s; the "
		"records after them are recovered, the segment is kept (inspect with "
		"ringmx-spool verify)",
		d->sp->dir, d->seq, off, len, r < 0 ? "could not copy them:" : "copied to",
		r < 0 ? strerror(-r) : path);
}

/* Verify one segment; truncate a torn tail or the unused preallocation. */
static void
recover_seg(struct spool *sp, uint64_t seq, uint64_t *msgs, uint64_t *bytes)
{
	char name[32];
	seg_name(name, sizeof(name), seq);
	int fd = openat(sp->dirfd, name, O_RDWR | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		log_err("spool: recovery: %s/%s: %s", sp->dir, name, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	if (st.st_size == 0) {
		close(fd);
		if (unlinkat(sp->dirfd, name, 0) == 0)
			(void)dir_sync(sp); /* a removal: logged, see seg_close */
		log_info("spool: recovery: %s/%s: empty, removed", sp->dir, name);
		return;
	}
	/* Read, not mapped: an unreadable sector is then an error for its
	 * bytes (they read as SPOOL_READ_POISON, so the records around them
	 * survive and they show as damage), not a SIGBUS at every start. */
	uint64_t bad, bad_off;
	uint8_t *map = spool_read_file(fd, (uint64_t)st.st_size, &bad, &bad_off);
	if (map == NULL) {
		log_err("spool: recovery: reading %s/%s: %s", sp->dir, name, strerror(errno));
		close(fd);
		return;
	}
	if (bad > 0)
		log_err("spool: recovery: %s/%s: %" PRIu64 " bytes UNREADABLE (I/O error), the "
			"first at offset %" PRIu64 "; the records there are damage",
			sp->dir, name, bad, bad_off);
	struct spool_scan sc;
	struct recover_dmg dm = {sp, fd, seq};
	spool_seg_scan(map, (uint64_t)st.st_size, NULL, recover_on_damage, &dm, &sc);
	free(map);
	if (bad > 0 && sc.end == SPOOL_SCAN_TORN) {
		/* Unreadable bytes in the last record look like a torn tail;
		 * this one may have been acknowledged: never cut it off. */
		sc.end = SPOOL_SCAN_DAMAGED;
		sc.damaged++;
		sc.damaged_bytes += (uint64_t)st.st_size - sc.valid_end;
		if (sc.damaged == 1)
			sc.first_damage = sc.valid_end;
		recover_on_damage(&dm, sc.valid_end, (uint64_t)st.st_size - sc.valid_end);
		sc.valid_end = (uint64_t)st.st_size;
	}
	if (sc.end == SPOOL_SCAN_CLEAN && sc.records == 0 && sc.damaged == 0) {
		/* Only zeros: a segment zero-filled ahead of need and never
		 * used, or one whose zero-filling a crash cut short (its
		 * fallocated blocks read as zeros too). Nothing to keep. */
		close(fd);
		if (unlinkat(sp->dirfd, name, 0) == 0)
			(void)dir_sync(sp); /* a removal: logged, see seg_close */
		log_info("spool: recovery: %s/%s: no records, removed", sp->dir, name);
		return;
	}
	*msgs += sc.records;
	*bytes += sc.bytes;
	if (sc.damaged > 0)
		log_err("spool: recovery: %s/%s: %" PRIu64 " DAMAGED range%s, %" PRIu64 " bytes, the "
			"first at offset %" PRIu64 "; recovered %" PRIu64 " messages, %" PRIu64
			" bytes around them",
			sp->dir, name, sc.damaged, sc.damaged == 1 ? "" : "s", sc.damaged_bytes,
			sc.first_damage, sc.records, sc.bytes);
	switch (sc.end) {
	case SPOOL_SCAN_CLEAN:
		/* valid_end is after the last record or damaged range: only
		 * zeros are cut off. */
		if (sc.valid_end < (uint64_t)st.st_size && ftruncate(fd, (off_t)sc.valid_end) < 0)
			log_warn("spool: recovery: truncate %s/%s: %s", sp->dir, name,
				 strerror(errno));
		log_info("spool: recovery: %s/%s: recovered %" PRIu64 " messages, %" PRIu64
			 " bytes, clean end at %" PRIu64,
			 sp->dir, name, sc.records, sc.bytes, sc.valid_end);
		break;
	case SPOOL_SCAN_TORN:
		if (ftruncate(fd, (off_t)sc.valid_end) < 0 || fsync(fd) < 0)
			log_err("spool: recovery: truncate %s/%s: %s", sp->dir, name,
				strerror(errno));
		log_warn("spool: recovery: %s/%s: recovered %" PRIu64 " messages, %" PRIu64
			 " bytes, torn tail at %" PRIu64 " truncated",
			 sp->dir, name, sc.records, sc.bytes, sc.valid_end);
		break;
	case SPOOL_SCAN_DAMAGED:
		/* Damaged to the end (logged above): nothing is cut off. */
		break;
	}
	close(fd);
	if (sc.damaged == 0 && sc.valid_end == 0 && sc.records == 0) {
		if (unlinkat(sp->dirfd, name, 0) == 0)
			(void)dir_sync(sp); /* a removal: logged, see seg_close */
	}
}

#define SPOOL_RECOVER_MAX_SEGS 1000000 /* files per worker directory */

static int
recover(struct spool *sp, char *err, size_t errlen)
{
	DIR *d = fdopendir(dup(sp->dirfd));
	if (d == NULL) {
		snprintf(err, errlen, "spool: opendir %s: %s", sp->dir, strerror(errno));
		return -errno;
	}
	size_t n = 0, cap = 64;
	uint64_t *seqs = malloc(cap * sizeof(*seqs));
	struct dirent *de;
	while (seqs != NULL && (de = readdir(d)) != NULL) {
		uint64_t seq;
		if (spool_seg_name_parse(de->d_name, &seq) < 0)
			continue;
		if (n == cap) {
			uint64_t *ns = cap < SPOOL_RECOVER_MAX_SEGS ? realloc(seqs, 2 * cap * sizeof(*seqs)) : NULL;
			if (ns == NULL) {
				free(seqs);
				seqs = NULL;
				break;
			}
			seqs = ns;
			cap *= 2;
		}
		seqs[n++] = seq;
	}
	closedir(d);
	if (seqs == NULL) {
		snprintf(err, errlen, "spool: %s: too many segments or out of memory", sp->dir);
		return -ENOMEM;
	}
	qsort(seqs, n, sizeof(*seqs), cmp_u64);
	uint64_t msgs = 0, bytes = 0;
	for (size_t i = 0; i < n; i++)
		recover_seg(sp, seqs[i], &msgs, &bytes);
	/* New messages always go to a new segment after a restart. */
	sp->next_seq = n > 0 ? seqs[n - 1] + 1 : 1;
	sp->first_seq = sp->next_seq;
	free(seqs);
	log_info("spool: %s: %zu segment%s, %" PRIu64 " messages, %" PRIu64 " bytes recovered",
		 sp->dir, n, n == 1 ? "" : "s", msgs, bytes);
	return 0;
}

static void
spool_free(struct spool *sp)
{
	for (size_t i = 0; i < sp->nblocks; i++) {
		munmap(sp->blocks[i], SPOOL_BLOCK_SIZE);
		free(sp->descs[i]);
	}
	free(sp->blocks);
	free(sp->descs);
	if (sp->txs != NULL)
		munmap(sp->txs, (size_t)sp->ntx * sizeof(*sp->txs));
	if (sp->dirfd >= 0 && !sp->keep_dirfd)
		close(sp->dirfd);
	free(sp);
}

int
spool_open(struct spool **out, const struct config *cfg, const struct spool_env *env, char *err,
	   size_t errlen)
{
	struct spool *sp = calloc(1, sizeof(*sp));
	if (sp == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		return -ENOMEM;
	}
	sp->env = *env;
	sp->cfg = cfg;
	sp->worker = env->worker;
	sp->dirfd = -1;
	sp->seg_size = (cfg->segment_size + SPOOL_SEG_ALIGN - 1) / SPOOL_SEG_ALIGN * SPOOL_SEG_ALIGN;
	sp->memory_cap = cfg->spool_memory;
	sp->durable = cfg->durability == SPOOL_DURABILITY_FSYNC;
	for (unsigned i = 0; i < SPOOL_MAX_SEGS; i++)
		sp->segs[i].fd = sp->void_fd[i] = -1;
	sp->prep.fd = -1;

	sp->maxblocks = (size_t)(sp->memory_cap / SPOOL_BLOCK_SIZE) + 1;
	sp->blocks = calloc(sp->maxblocks, sizeof(*sp->blocks));
	sp->descs = calloc(sp->maxblocks, sizeof(*sp->descs));
	/* See struct spool: connections plus staging chunks; mapped, so
	 * untouched slots cost no memory. */
	sp->ntx = cfg->max_connections + (unsigned)(sp->memory_cap / SPOOL_CHUNK_SIZE) + 1;
	sp->txs = mmap(NULL, (size_t)sp->ntx * sizeof(*sp->txs), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (sp->txs == MAP_FAILED)
		sp->txs = NULL;
	if (sp->blocks == NULL || sp->descs == NULL || sp->txs == NULL) {
		snprintf(err, errlen, "spool: out of memory");
		spool_free(sp);
		return -ENOMEM;
	}

	int r = spool_mkdir_p(cfg->spool_dir);
	if (r == 0) {
		snprintf(sp->dir, sizeof(sp->dir), "%s/w%u", cfg->spool_dir, env->worker);
		r = spool_mkdir_p(sp->dir);
	}
	if (r < 0) {
		snprintf(err, errlen, "spool: cannot create %s/w%u: %s", cfg->spool_dir, env->worker,
			 strerror(-r));
		spool_free(sp);
		return r;
	}
	sp->dirfd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->dirfd < 0) {
		r = -errno;
		snprintf(err, errlen, "spool: open %s: %s", sp->dir, strerror(-r));
		spool_free(sp);
		return r;
	}
	/* The worker directory itself must survive a crash, or every
	 * segment in it could vanish with it: an error stops start-up. */
	int pfd = open(cfg->spool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r = pfd < 0 ? -errno : fault_dirsync();
	if (r == 0 && fsync(pfd) < 0)
		r = -errno;
	if (pfd >= 0)
		close(pfd);
	if (r < 0) {
		snprintf(err, errlen, "spool: fsync %s: %s", cfg->spool_dir, strerror(-r));
		spool_free(sp);
		return r;
	}
	r = recover(sp, err, errlen);
	if (r < 0) {
		spool_free(sp);
		return r;
	}
	/* The first segment is zero-filled here, synchronously: the loop is
	 * not running yet (~35 ms for 64 MiB on the benchmark disk), and the
	 * load that follows start-up would otherwise begin on a fallocated
	 * segment. Any failure: the usual path, which logs it. */
	r = sp->durable ? seg_create(sp, sp->seg_size, true) : -1;
	if (r < 0)
		r = seg_ensure(sp, SPOOL_HDR_SIZE);
	if (r < 0 && r != -ENOSPC) {
		snprintf(err, errlen, "spool: cannot create a segment in %s (see above)", sp->dir);
		spool_free(sp);
		return r;
	}
	log_info("spool: %s: segment_size %llu, durability %s%s, commit_delay %lluus, commit_size "
		 "%llu, spool_memory %llu",
		 sp->dir, (unsigned long long)sp->seg_size, sp->durable ? "fsync" : "none",
		 sp->durable ? " (segments pre-zeroed)" : "",
		 (unsigned long long)(cfg->commit_delay / 1000u), (unsigned long long)cfg->commit_size,
		 (unsigned long long)cfg->spool_memory);
	*out = sp;
	return 0;
}

void
spool_set_hooks(struct spool *sp, const struct spool_hooks *hooks)
{
	sp->hooks = *hooks;
}

uint64_t
spool_first_seq(const struct spool *sp)
{
	return sp->first_seq;
}

void
spool_internal_next(struct spool *sp)
{
	sp->internal_next = true;
}

void
spool_close(struct spool *sp)
{
	if (sp == NULL)
		return;
	/* The worker exits only when spool_idle(): no batch is in the
	 * kernel, so the fds and chunks can go. Transactions still open
	 * belong to sessions that are gone with the worker. */
	if (!spool_idle(sp))
		log_err("spool: %s: closing with work in flight (%u batches, %u queued)", sp->dir,
			sp->b_count, sp->q_count);
	seg_retire(sp);
	struct prep *p = &sp->prep;
	if (p->state != P_NONE) {
		/* Never used: remove it (no directory fsync: should the name
		 * survive a crash, recovery removes a file of zeros). */
		char name[32];
		seg_name(name, sizeof(name), p->seq);
		unlinkat(sp->dirfd, name, 0);
		if (p->inflight == 0) {
			close(p->fd);
		} else {
			/* spool_idle() does not wait for zero-filling (an exit
			 * would wait for a segment of zeros). io-wq may still
			 * run these SQEs after this, and it looks their fds up
			 * only then: the file's fd and dirfd are left open so
			 * their numbers cannot be reused by another file. The
			 * buffer is static. The process is exiting. */
			sp->keep_dirfd = true;
		}
		p->fd = -1;
		p->state = P_NONE;
	}
	for (unsigned i = 0; i < SPOOL_MAX_SEGS; i++)
		if (sp->segs[i].fd >= 0) {
			close(sp->segs[i].fd);
			sp->segs[i].fd = -1;
		}
	spool_free(sp);
}
