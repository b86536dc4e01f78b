/*
 * journal_format.h - the delivery journal: a small append-only file beside
 * each spool segment recording what became of its messages (delivered,
 * failed and bounced, deferred, held, released, deleted). Shared by ringmxd
 * (engine/relay/relay.c) and the ringmx-spool tool. docs/spool-format.md,
 * section "Delivery journal", is the normative description; keep it in
 * step.
 *
 * Owner: the relay module (engine/relay/relay.c, engine/spool/journal_format.c,
 * tests/unit/test_journal_format.c). ringmx-spool appends to a journal only
 * while it holds the spool lock (ringmxd is not running).
 *
 * File: SPOOL_DIR/w<N>/<seq 16 hex>.jnl beside <seq>.seg. Records start at
 * offset 0, each padded to JOURNAL_ALIGN bytes. All integers little-endian.
 *
 *   record = magic u32 | type u8 | reserved u8 | text_len u16 | crc32c u32
 *            | rcpt_count u32 | rec_off u64 | rcpt_first u32 | attempts u32
 *            | time_us u64 | next_us u64 | text[text_len] | zero padding
 *
 * rec_off names the spool record (its offset in the segment). Recipients
 * are the record's RCPT TLVs numbered from 0 in envelope order; a journal
 * record covers [rcpt_first, rcpt_first + rcpt_count). JOURNAL_ALL_RCPTS
 * in rcpt_count means every recipient of the message. The CRC32C (the
 * spool's, spool_crc32c) covers the whole padded record with the crc field
 * taken as zero.
 *
 * A torn tail (a crash during an append) is the only damage expected: the
 * first invalid record ends the journal; ringmxd truncates it there when it
 * reopens the file.
 *
 * Nothing here allocates or does I/O.
 */
#ifndef RINGMX_JOURNAL_FORMAT_H
#define RINGMX_JOURNAL_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JOURNAL_MAGIC     0x4A4D4D52u /* "RMMJ" as bytes on disk */
#define JOURNAL_HDR_SIZE  48
#define JOURNAL_ALIGN     8
#define JOURNAL_TEXT_MAX  1000 /* bytes of text kept (a reply, a reason) */
#define JOURNAL_REC_MAX   (JOURNAL_HDR_SIZE + JOURNAL_TEXT_MAX + JOURNAL_ALIGN)
#define JOURNAL_ALL_RCPTS 0xFFFFFFFFu

enum journal_type {
	JOURNAL_DELIVERED = 1, /* recipients done: the next hop said 2xx; text: the reply */
	JOURNAL_FAILED = 2,    /* recipients done: 5xx or expired; a bounce was spooled
				* first (unless the sender was <>); text: the reason */
	JOURNAL_DEFERRED = 3,  /* a temporary failure; attempts so far, next_us = next try;
				* text: the reason. Informational: not needed to resume */
	JOURNAL_HOLD = 4,      /* the message is on hold: no delivery until RELEASE */
	JOURNAL_RELEASE = 5,   /* the hold is lifted */
	JOURNAL_DELETE = 6,    /* removed by the operator: no delivery, no bounce */
};

struct journal_rec {
	uint8_t type; /* enum journal_type */
	uint32_t rcpt_first;
	uint32_t rcpt_count;  /* JOURNAL_ALL_RCPTS: every recipient */
	uint64_t rec_off;     /* spool record offset in the segment */
	uint32_t attempts;    /* delivery attempts made so far (DEFERRED, FAILED) */
	uint64_t time_us;     /* wall clock of the event, us since the epoch */
	uint64_t next_us;     /* DEFERRED: wall clock of the next attempt; else 0 */
	const char *text;     /* not NUL terminated; NULL when text_len == 0 */
	uint16_t text_len;    /* <= JOURNAL_TEXT_MAX */
};

static inline size_t
journal_rec_len(size_t text_len)
{
	return (JOURNAL_HDR_SIZE + text_len + JOURNAL_ALIGN - 1) & ~(size_t)(JOURNAL_ALIGN - 1);
}

/* Encode r into buf (cap bytes; JOURNAL_REC_MAX always suffices), text cut
 * to JOURNAL_TEXT_MAX, CRC filled in. Returns the record length, or 0 if
 * cap is too small or r->type is unknown. */
size_t journal_encode(uint8_t *buf, size_t cap, const struct journal_rec *r);

enum journal_status {
	JOURNAL_OK = 0,
	JOURNAL_END,   /* fewer than JOURNAL_HDR_SIZE bytes left, or a zero magic */
	JOURNAL_BAD,   /* wrong magic, unknown type, lengths or CRC: a torn tail */
};
/* Decode the record at p (avail readable bytes). On JOURNAL_OK fills r
 * (r->text points into p) and *len with the padded record length. */
enum journal_status journal_decode(const uint8_t *p, size_t avail, struct journal_rec *r,
				   size_t *len);

/* Walk a journal's bytes, calling fn for each valid record until the first
 * invalid one or the end; fn returns non-zero to stop. Returns the offset
 * after the last valid record (where ringmxd truncates and appends). */
size_t journal_scan(const uint8_t *p, size_t size,
		    int (*fn)(void *arg, size_t off, const struct journal_rec *r), void *arg);

/* "<seq 16 hex>.jnl": parse the file name. 0 or -1. */
int journal_name_parse(const char *name, uint64_t *seq);

/*
 * The state of one message as its journal tells it: replay the journal's
 * records for that rec_off in order with journal_state_apply().
 * done[] must hold nrcpt entries, zeroed by the caller; a recipient is
 * finished when done[i] is JOURNAL_DELIVERED or JOURNAL_FAILED. DEFERRED
 * records update attempts/next_us/last text but never finish a recipient.
 */
struct journal_msg_state {
	uint8_t *done;       /* per recipient: 0 pending, JOURNAL_DELIVERED or JOURNAL_FAILED */
	uint32_t nrcpt;
	uint32_t attempts;
	uint64_t next_us;    /* the last DEFERRED record's next attempt, 0 if none */
	bool held;
	bool released; /* a RELEASE record: lifts a filter's hold (SPOOL_TLV_HOLD) too */
	bool deleted;
	const char *last_text; /* the last DEFERRED/FAILED text (points into the journal) */
	uint16_t last_text_len;
};
void journal_state_apply(struct journal_msg_state *st, const struct journal_rec *r);
/* Every recipient finished, or the message deleted. */
bool journal_state_finished(const struct journal_msg_state *st);

#endif
