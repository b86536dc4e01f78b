/*
 * spool_internal.h - what the spool's files share (engine/spool/): its
 * limits, its objects (chunk, sink_tx, seg, prep, batch, spool; see spool.c
 * for what each is and who owns it) and the functions one file calls in
 * another. Files: spool.c (chunks, transactions, segments, batches and the
 * group commit, the sink interface), spool_prep.c (preparing the next
 * segment through the ring), spool_recover.c (start-up: directories and
 * recovery). Nothing outside the spool includes this.
 */
#ifndef RINGMX_SPOOL_INTERNAL_H
#define RINGMX_SPOOL_INTERNAL_H

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
#include "ud.h"
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
/* spool_io = direct (spool_direct.c): batches written at once, each from
 * its own staging buffer of SPOOL_DIO_BUF bytes; a longer batch takes
 * several writes, one after the other. 4 in flight: on the disk of
 * docs/benchmarks.md 64 KiB RWF_DSYNC writes go 3,650/s one at a time,
 * 8,900/s four at a time. */
#define SPOOL_DIO_QD 4
/* Direct: a batch is formed at once (without waiting for commit_size or
 * commit_delay) while fewer writes than this are in flight. Past it, records
 * gather into larger batches: every write costs the disk a flush and a
 * virtualised disk a doorbell exit, so at full load fewer, larger writes
 * carry more messages per second (measured: docs/benchmarks.md). */
#define SPOOL_DIO_EAGER 2
/* Direct: the next segment is zero-filled ahead while the current one's
 * writes average less than this (spool_prep.c, sp_prep_zero). */
#define SPOOL_DIO_ZERO_BELOW (256u << 10)
#define SPOOL_DIO_BUF (8u << 20)

/* The zero buffer, shared by all workers and never written: it is in .bss,
 * so its pages are the kernel's zero page until someone writes (nobody
 * does), and it is never freed, so a zero write still in the kernel when a
 * spool is closed cannot read freed (and maybe reused) memory. */
extern uint8_t spool_zeros[SPOOL_ZERO_BUF]; /* defined in spool.c */

/* user_data kind (ud.h); idx: the batch index, or the zero write slot. */
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
	/* spool_share.c: chunks staged, and how many of them (or reserved
	 * at MAIL) count against the large messages' share. */
	uint64_t nchunks, large;
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
	bool zero;          /* zero-filled (else only fallocated and synced) */
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
	uint64_t pad;      /* spool_io = direct: filler after the records */
	uint8_t slot;      /* spool_io = direct: dio_buf index + 1, 0 none */
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
	/* The large messages' share, in chunks (spool_share.c). */
	uint64_t large_cap, large_used;
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

	/* spool_io (spool_direct.c). */
	bool direct;         /* segments opened O_DIRECT, written from dio_buf */
	char io_note[CONFIG_PATH_MAX + 160]; /* why auto is not direct, for the start-up line */
	uint8_t *dio_buf[SPOOL_DIO_QD]; /* SPOOL_DIO_BUF bytes each, page aligned */
	unsigned dio_free;   /* bit i: dio_buf[i] has no batch */
	unsigned dio_inflight; /* direct writes in the kernel */
	uint64_t cur_writes, cur_wbytes; /* direct writes into the current segment, and their bytes */

	struct spool_hooks hooks; /* the relay's (spool.h) */
	uint64_t first_seq;  /* first segment of this run */
	bool internal_next;  /* the next tx_open is a bounce: no admission check */
};

/* spool.c */
extern const struct sink_ops spool_ops;
int sp_dir_sync(struct spool *sp);
int sp_map_errno(int e);
uint64_t sp_mono_ns(void);
void sp_prezero_error(struct spool *sp, uint64_t seq, int err, const char *what);
void sp_seg_close(struct spool *sp, struct seg *s);
int sp_seg_create(struct spool *sp, uint64_t size, bool zero);
void sp_seg_install(struct spool *sp, int fd, uint64_t seq, uint64_t size, bool zeroed);
void sp_seg_name(char *buf, size_t len, uint64_t seq);
void sp_seg_retire(struct spool *sp);

/* Length of chunk c of tx (the tail chunk may be partly used). */
static inline uint32_t
chunk_len(const struct sink_tx *tx, const struct chunk *c)
{
	return c == tx->tail ? tx->tail_len : SPOOL_CHUNK_SIZE;
}

/* spool_direct.c */
/* Decide spool_io for this spool (probing O_DIRECT in sp->dir). 0, or
 * -errno with err set (spool_io = direct that cannot work). */
int sp_dio_init(struct spool *sp, char *err, size_t errlen);
void sp_dio_free(struct spool *sp);
/* The filler after records ending at end (0 if end is block aligned). */
uint64_t sp_dio_pad(uint64_t end);
/* Fill sqe with the next direct write of b (from its cursor; the batch
 * takes a staging buffer at its first write); sets b->sub_bytes. */
void sp_dio_submit(struct spool *sp, struct batch *b, struct io_uring_sqe *sqe);
/* The write's CQE said res > 0 bytes: how many of b's bytes are written. */
uint64_t sp_dio_done(struct spool *sp, struct batch *b, uint64_t res);
/* The batch is done: its staging buffer is free. */
void sp_dio_release(struct spool *sp, struct batch *b);
/* openat flags of a new segment file. */
int sp_seg_open_flags(const struct spool *sp);

/* spool_prep.c */
void sp_prep_maybe_start(struct spool *sp);
void sp_prep_on_cqe(struct spool *sp, unsigned kind, unsigned idx, int res);
void sp_prep_pump(struct spool *sp);
int sp_seg_ensure(struct spool *sp, uint64_t need);

/* spool_share.c: fair sharing of spool_memory (ringmx/spool_share.h). */
void sp_share_init(struct spool *sp);
/* At MAIL: a SIZE= that makes the message large reserves its need; 0, or
 * -ENOSPC (452 4.3.1) when the share cannot give it. */
int sp_share_reserve(struct spool *sp, struct sink_tx *tx, uint64_t size_declared);
/* Before tx takes one more chunk: 0, or -EDQUOT past the large share. */
int sp_share_chunk(struct spool *sp, struct sink_tx *tx);
/* tx's chunks went back to the pool. */
void sp_share_release(struct spool *sp, struct sink_tx *tx);

/* spool_recover.c: spool_open() and spool_idle() (spool.h). */

#endif
