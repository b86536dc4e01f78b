/*
 * journal_format.c - the delivery journal's records: encoding, decoding,
 * scanning and replaying them into a message's state; see
 * include/ringmx/journal_format.h and docs/spool-format.md ("Delivery
 * journal").
 *
 * Owner: the relay module. Linked into ringmxd, ringmx-spool and the unit
 * tests; pure functions over caller memory, no allocation, no I/O. The
 * CRC is the spool's (spool_format.c), so both files share one
 * implementation and one set of test vectors.
 */
#include "ringmx/journal_format.h"

#include <assert.h>
#include <string.h>

#include "le.h"
#include "ringmx/spool_format.h"

/* Header field offsets (the layout comment in journal_format.h). */
enum {
	J_MAGIC = 0,
	J_TYPE = 4,
	J_RESERVED = 5,
	J_TEXT_LEN = 6,
	J_CRC = 8,
	J_RCPT_COUNT = 12,
	J_REC_OFF = 16,
	J_RCPT_FIRST = 24,
	J_ATTEMPTS = 28,
	J_TIME = 32,
	J_NEXT = 40,
};
_Static_assert(J_NEXT + 8 == JOURNAL_HDR_SIZE, "journal header layout");

static bool
type_known(unsigned t)
{
	return t >= JOURNAL_DELIVERED && t <= JOURNAL_DELETE;
}

/* CRC32C of a record with its crc field taken as zero: three pieces, so
 * decoding needs no copy of the record. */
static uint32_t
rec_crc(const uint8_t *p, size_t len)
{
	static const uint8_t zero4[4];
	uint32_t c = spool_crc32c_update(~0u, p, J_CRC);
	c = spool_crc32c_update(c, zero4, sizeof(zero4));
	c = spool_crc32c_update(c, p + J_CRC + 4, len - J_CRC - 4);
	return ~c;
}

size_t
journal_encode(uint8_t *buf, size_t cap, const struct journal_rec *r)
{
	size_t tl = r->text != NULL ? r->text_len : 0;
	if (tl > JOURNAL_TEXT_MAX)
		tl = JOURNAL_TEXT_MAX; /* a long remote reply: its start says enough */
	size_t len = journal_rec_len(tl);
	if (!type_known(r->type) || cap < len)
		return 0;
	memset(buf, 0, len); /* reserved byte, crc (zero while summing) and padding */
	le_put32(buf + J_MAGIC, JOURNAL_MAGIC);
	buf[J_TYPE] = r->type;
	le_put16(buf + J_TEXT_LEN, (uint16_t)tl);
	le_put32(buf + J_RCPT_COUNT, r->rcpt_count);
	le_put64(buf + J_REC_OFF, r->rec_off);
	le_put32(buf + J_RCPT_FIRST, r->rcpt_first);
	le_put32(buf + J_ATTEMPTS, r->attempts);
	le_put64(buf + J_TIME, r->time_us);
	le_put64(buf + J_NEXT, r->next_us);
	if (tl)
		memcpy(buf + JOURNAL_HDR_SIZE, r->text, tl);
	le_put32(buf + J_CRC, spool_crc32c(buf, len));
	return len;
}

enum journal_status
journal_decode(const uint8_t *p, size_t avail, struct journal_rec *r, size_t *len)
{
	if (avail < JOURNAL_HDR_SIZE)
		return JOURNAL_END;
	uint32_t magic = le_get32(p + J_MAGIC);
	if (magic == 0)
		return JOURNAL_END;
	uint16_t tl = le_get16(p + J_TEXT_LEN);
	if (magic != JOURNAL_MAGIC || !type_known(p[J_TYPE]) || tl > JOURNAL_TEXT_MAX)
		return JOURNAL_BAD;
	size_t n = journal_rec_len(tl);
	/* A record running past the data is a torn append, like a bad CRC. */
	if (n > avail || rec_crc(p, n) != le_get32(p + J_CRC))
		return JOURNAL_BAD;
	r->type = p[J_TYPE];
	r->rcpt_count = le_get32(p + J_RCPT_COUNT);
	r->rec_off = le_get64(p + J_REC_OFF);
	r->rcpt_first = le_get32(p + J_RCPT_FIRST);
	r->attempts = le_get32(p + J_ATTEMPTS);
	r->time_us = le_get64(p + J_TIME);
	r->next_us = le_get64(p + J_NEXT);
	r->text_len = tl;
	r->text = tl ? (const char *)p + JOURNAL_HDR_SIZE : NULL;
	*len = n;
	return JOURNAL_OK;
}

size_t
journal_scan(const uint8_t *p, size_t size,
	     int (*fn)(void *arg, size_t off, const struct journal_rec *r), void *arg)
{
	size_t off = 0, n;
	struct journal_rec r;

	/* Appends are whole records, so the first record that does not
	 * decode is where a crash cut an append short; nothing after it was
	 * ever acknowledged as written (the appender fdatasyncs each one). */
	while (journal_decode(p + off, size - off, &r, &n) == JOURNAL_OK) {
		assert(n % JOURNAL_ALIGN == 0 && n <= size - off);
		int stop = fn != NULL ? fn(arg, off, &r) : 0;
		off += n;
		if (stop)
			break;
	}
	return off;
}

int
journal_name_parse(const char *name, uint64_t *seq)
{
	/* Same digits as the segment it belongs to: reuse that parser. */
	char seg[16 + sizeof(".seg")];
	if (strnlen(name, sizeof(seg)) != sizeof(seg) - 1 || strcmp(name + 16, ".jnl") != 0)
		return -1;
	memcpy(seg, name, 16);
	memcpy(seg + 16, ".seg", sizeof(".seg"));
	return spool_seg_name_parse(seg, seq);
}

void
journal_state_apply(struct journal_msg_state *st, const struct journal_rec *r)
{
	switch (r->type) {
	case JOURNAL_DELIVERED:
	case JOURNAL_FAILED: {
		/* Clamp to the message's recipients: a range is written by
		 * ringmxd from the same envelope, so anything past nrcpt is
		 * damage we must not write through. */
		uint32_t first = r->rcpt_count == JOURNAL_ALL_RCPTS ? 0 : r->rcpt_first;
		uint32_t end = st->nrcpt;
		if (r->rcpt_count != JOURNAL_ALL_RCPTS && first < st->nrcpt &&
		    r->rcpt_count < st->nrcpt - first)
			end = first + r->rcpt_count;
		for (uint32_t i = first; i < end; i++)
			if (st->done[i] == 0) /* finished once, finished for good */
				st->done[i] = r->type;
		if (r->type == JOURNAL_FAILED) {
			st->last_text = r->text;
			st->last_text_len = r->text_len;
		}
		break;
	}
	case JOURNAL_DEFERRED:
		st->attempts = r->attempts;
		st->next_us = r->next_us;
		st->last_text = r->text;
		st->last_text_len = r->text_len;
		break;
	case JOURNAL_HOLD:
		st->held = true;
		break;
	case JOURNAL_RELEASE:
		st->held = false;
		st->released = true;
		break;
	case JOURNAL_DELETE:
		st->deleted = true;
		break;
	default:
		break; /* journal_decode() lets no other type through */
	}
}

bool
journal_state_finished(const struct journal_msg_state *st)
{
	if (st->deleted)
		return true;
	for (uint32_t i = 0; i < st->nrcpt; i++)
		if (st->done[i] == 0)
			return false;
	return true;
}
