/*
 * test_journal_format.c - the delivery journal (journal_format.c): record
 * round trips for every type, text cut at JOURNAL_TEXT_MAX, CRC damage, a
 * torn last record cut at every byte offset, a zero tail, replay into a
 * message's state (ranges, ALL, clamping, hold/release, delete) and file
 * names.
 * Owner: the relay module.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ringmx/journal_format.h"

static struct journal_rec
rec(uint8_t type, uint64_t rec_off, uint32_t first, uint32_t count, const char *text)
{
	struct journal_rec r = {
		.type = type,
		.rcpt_first = first,
		.rcpt_count = count,
		.rec_off = rec_off,
		.attempts = 3,
		.time_us = 1700000000123456ull,
		.next_us = type == JOURNAL_DEFERRED ? 1700000900000000ull : 0,
		.text = text,
		.text_len = text ? (uint16_t)strlen(text) : 0,
	};
	return r;
}

static void
assert_rec_equal(const struct journal_rec *a, const struct journal_rec *b)
{
	assert_int_equal(a->type, b->type);
	assert_int_equal(a->rcpt_first, b->rcpt_first);
	assert_int_equal(a->rcpt_count, b->rcpt_count);
	assert_int_equal(a->rec_off, b->rec_off);
	assert_int_equal(a->attempts, b->attempts);
	assert_int_equal(a->time_us, b->time_us);
	assert_int_equal(a->next_us, b->next_us);
	assert_int_equal(a->text_len, b->text_len);
	if (a->text_len)
		assert_memory_equal(a->text, b->text, a->text_len);
	else
		assert_null(b->text);
}

/* Every type survives encode/decode, lengths are padded, the magic is
 * "RMMJ" on disk, and every single-bit flip is caught. */
static void
test_round_trip(void **state)
{
	static const char *texts[] = {NULL, "250 2.0.0 Ok: queued as X", "x", "1234567"};
	uint8_t buf[JOURNAL_REC_MAX];
	struct journal_rec d;
	size_t len;

	(void)state;
	for (uint8_t t = JOURNAL_DELIVERED; t <= JOURNAL_DELETE; t++)
		for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
			struct journal_rec r = rec(t, 0x123456789abull, 2, 5, texts[k]);
			size_t n = journal_encode(buf, sizeof(buf), &r);
			assert_int_equal(n, journal_rec_len(r.text_len));
			assert_int_equal(n % JOURNAL_ALIGN, 0);
			assert_memory_equal(buf, "RMMJ", 4);
			assert_int_equal(journal_decode(buf, n, &d, &len), JOURNAL_OK);
			assert_int_equal(len, n);
			assert_rec_equal(&r, &d);
			/* More bytes after it change nothing. */
			assert_int_equal(journal_decode(buf, sizeof(buf), &d, &len), JOURNAL_OK);
			assert_int_equal(len, n);
		}

	struct journal_rec r = rec(JOURNAL_FAILED, 64, 0, JOURNAL_ALL_RCPTS, "550 5.1.1 no");
	size_t n = journal_encode(buf, sizeof(buf), &r);
	for (size_t i = 0; i < n * 8; i++) {
		buf[i / 8] ^= (uint8_t)(1u << (i % 8));
		assert_int_not_equal(journal_decode(buf, n, &d, &len), JOURNAL_OK);
		buf[i / 8] ^= (uint8_t)(1u << (i % 8));
	}
	assert_int_equal(journal_decode(buf, n, &d, &len), JOURNAL_OK);
	assert_int_equal(d.rcpt_count, JOURNAL_ALL_RCPTS);

	/* Unknown types are not encoded; a short buffer is refused. */
	r.type = 0;
	assert_int_equal(journal_encode(buf, sizeof(buf), &r), 0);
	r.type = JOURNAL_DELETE + 1;
	assert_int_equal(journal_encode(buf, sizeof(buf), &r), 0);
	r.type = JOURNAL_HOLD;
	assert_int_equal(journal_encode(buf, journal_rec_len(r.text_len) - 1, &r), 0);
	assert_int_equal(journal_encode(buf, journal_rec_len(r.text_len), &r),
			 journal_rec_len(r.text_len));
}

/* Text longer than JOURNAL_TEXT_MAX is cut there, and a record that claims
 * more (written by something else) is invalid. */
static void
test_text_max(void **state)
{
	static char text[JOURNAL_TEXT_MAX + 500];
	uint8_t buf[JOURNAL_REC_MAX];
	struct journal_rec d;
	size_t len;

	(void)state;
	for (size_t i = 0; i < sizeof(text); i++)
		text[i] = (char)('a' + i % 26);
	struct journal_rec r = rec(JOURNAL_DEFERRED, 0, 0, 1, NULL);
	r.text = text;
	for (size_t tl = JOURNAL_TEXT_MAX - 1; tl <= JOURNAL_TEXT_MAX + 1; tl++) {
		r.text_len = (uint16_t)tl;
		size_t want = tl > JOURNAL_TEXT_MAX ? JOURNAL_TEXT_MAX : tl;
		size_t n = journal_encode(buf, sizeof(buf), &r);
		assert_int_equal(n, journal_rec_len(want));
		assert_int_equal(journal_decode(buf, n, &d, &len), JOURNAL_OK);
		assert_int_equal(d.text_len, want);
		assert_memory_equal(d.text, text, want);
	}
	r.text_len = 65535;
	assert_int_equal(journal_encode(buf, sizeof(buf), &r), journal_rec_len(JOURNAL_TEXT_MAX));

	/* A header claiming JOURNAL_TEXT_MAX + 1 bytes is bad even with room. */
	static uint8_t big[2 * JOURNAL_REC_MAX];
	r.text_len = JOURNAL_TEXT_MAX;
	size_t n = journal_encode(big, sizeof(big), &r);
	assert_true(n > 0);
	big[6] = (uint8_t)((JOURNAL_TEXT_MAX + 1) & 0xff);
	big[7] = (uint8_t)((JOURNAL_TEXT_MAX + 1) >> 8);
	assert_int_equal(journal_decode(big, sizeof(big), &d, &len), JOURNAL_BAD);
}

/* ---- scanning ---- */

#define NJREC 5

struct jfile {
	uint8_t buf[NJREC * JOURNAL_REC_MAX];
	size_t off[NJREC + 1]; /* off[i]: start of record i; off[NJREC]: end */
};

static void
build_journal(struct jfile *f)
{
	static const char *texts[NJREC] = {NULL, "421 4.7.0 try later", NULL, "250 ok", "x"};
	static const uint8_t types[NJREC] = {JOURNAL_HOLD, JOURNAL_DEFERRED, JOURNAL_RELEASE,
					     JOURNAL_DELIVERED, JOURNAL_FAILED};
	memset(f->buf, 0, sizeof(f->buf));
	size_t off = 0;
	for (int i = 0; i < NJREC; i++) {
		struct journal_rec r = rec(types[i], (uint64_t)i * 4096, 0, 1, texts[i]);
		f->off[i] = off;
		off += journal_encode(f->buf + off, sizeof(f->buf) - off, &r);
	}
	f->off[NJREC] = off;
}

struct seen {
	size_t n;
	size_t off[NJREC];
	size_t stop_after; /* stop after this many records; 0: never */
};

static int
seen_cb(void *arg, size_t off, const struct journal_rec *r)
{
	struct seen *s = arg;
	assert_true(s->n < NJREC);
	assert_int_equal(r->rec_off, s->n * 4096); /* in order, none skipped */
	s->off[s->n++] = off;
	return s->stop_after && s->n == s->stop_after;
}

static void
test_scan(void **state)
{
	static struct jfile f;
	struct seen s = {0};

	(void)state;
	build_journal(&f);
	assert_int_equal(journal_scan(f.buf, f.off[NJREC], seen_cb, &s), f.off[NJREC]);
	assert_int_equal(s.n, NJREC);
	for (int i = 0; i < NJREC; i++)
		assert_int_equal(s.off[i], f.off[i]);

	/* A zero tail (a file extended but never written) is the end. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(journal_scan(f.buf, sizeof(f.buf), seen_cb, &s), f.off[NJREC]);
	assert_int_equal(s.n, NJREC);
	struct journal_rec d;
	size_t len;
	assert_int_equal(journal_decode(f.buf + f.off[NJREC], JOURNAL_HDR_SIZE, &d, &len),
			 JOURNAL_END);
	assert_int_equal(journal_decode(f.buf, JOURNAL_HDR_SIZE - 1, &d, &len), JOURNAL_END);

	/* The callback stops the walk after a record. */
	memset(&s, 0, sizeof(s));
	s.stop_after = 2;
	assert_int_equal(journal_scan(f.buf, f.off[NJREC], seen_cb, &s), f.off[2]);
	assert_int_equal(s.n, 2);

	/* No callback, an empty file. */
	assert_int_equal(journal_scan(f.buf, f.off[NJREC], NULL, NULL), f.off[NJREC]);
	assert_int_equal(journal_scan(f.buf, 0, NULL, NULL), 0);
}

/* Cut the last record at every byte offset, with the rest of the file
 * absent or zero: the earlier records are all handed on, the torn one
 * never, and the scan ends exactly where it started (where ringmxd and
 * ringmx-spool truncate before appending). Garbage after a cut is the same. */
static void
test_torn_tail(void **state)
{
	static struct jfile f;
	static uint8_t work[sizeof(f.buf)];

	(void)state;
	build_journal(&f);
	size_t last = f.off[NJREC - 1], end = f.off[NJREC], full = end;
	/* The record's zero padding is the same whether written or not. */
	while (full > last && f.buf[full - 1] == 0)
		full--;
	assert_true(full < end); /* the fixture's last record is padded */
	for (size_t cut = last; cut <= end; cut++)
		for (int tail = 0; tail < 3; tail++) {
			struct seen s = {0};
			size_t size = tail == 0 ? cut : sizeof(work);
			memset(work, tail == 2 ? 0xA5 : 0, sizeof(work));
			memcpy(work, f.buf, cut);
			size_t got = journal_scan(work, size, seen_cb, &s);
			if (cut == end || (tail == 1 && cut >= full)) {
				assert_int_equal(got, end);
				assert_int_equal(s.n, NJREC);
			} else {
				assert_int_equal(got, last);
				assert_int_equal(s.n, NJREC - 1);
			}
		}

	/* A bad CRC in the middle ends the journal there too. */
	struct seen s = {0};
	f.buf[f.off[2] + 20] ^= 1;
	assert_int_equal(journal_scan(f.buf, f.off[NJREC], seen_cb, &s), f.off[2]);
	assert_int_equal(s.n, 2);
}

/* ---- state ---- */

static void
apply(struct journal_msg_state *st, uint8_t type, uint32_t first, uint32_t count,
      const char *text)
{
	struct journal_rec r = rec(type, 0, first, count, text);
	journal_state_apply(st, &r);
}

static void
test_state_ranges(void **state)
{
	uint8_t done[5] = {0};
	struct journal_msg_state st = {.done = done, .nrcpt = 5};

	(void)state;
	assert_false(journal_state_finished(&st));
	apply(&st, JOURNAL_DELIVERED, 1, 2, "250 ok");
	assert_memory_equal(done, ((uint8_t[]){0, JOURNAL_DELIVERED, JOURNAL_DELIVERED, 0, 0}), 5);
	assert_null(st.last_text); /* DELIVERED keeps no reason */
	/* Finished stays finished: a later FAILED does not rewrite 1 and 2. */
	apply(&st, JOURNAL_FAILED, 2, 2, "550 5.1.1 unknown");
	assert_memory_equal(done, ((uint8_t[]){0, 1, 1, JOURNAL_FAILED, 0}), 5);
	assert_int_equal(st.last_text_len, strlen("550 5.1.1 unknown"));
	assert_memory_equal(st.last_text, "550 5.1.1 unknown", st.last_text_len);
	assert_false(journal_state_finished(&st));
	/* Clamped: a range running past nrcpt, one starting past it. */
	apply(&st, JOURNAL_DELIVERED, 4, 1000, NULL);
	apply(&st, JOURNAL_FAILED, 7, 2, NULL);
	apply(&st, JOURNAL_FAILED, 0xFFFFFFF0u, 0x20, NULL); /* first + count wraps */
	assert_memory_equal(done, ((uint8_t[]){0, 1, 1, 2, JOURNAL_DELIVERED}), 5);
	assert_false(journal_state_finished(&st));
	apply(&st, JOURNAL_DELIVERED, 0, 0, NULL); /* empty range */
	assert_int_equal(done[0], 0);
	/* ALL ignores rcpt_first. */
	apply(&st, JOURNAL_FAILED, 3, JOURNAL_ALL_RCPTS, "expired");
	assert_memory_equal(done, ((uint8_t[]){JOURNAL_FAILED, 1, 1, 2, 1}), 5);
	assert_true(journal_state_finished(&st));
	assert_memory_equal(st.last_text, "expired", 7);

	uint8_t d2[3] = {0};
	struct journal_msg_state s2 = {.done = d2, .nrcpt = 3};
	apply(&s2, JOURNAL_DELIVERED, 0, JOURNAL_ALL_RCPTS, NULL);
	assert_true(journal_state_finished(&s2));
	assert_memory_equal(d2, ((uint8_t[]){1, 1, 1}), 3);
}

static void
test_state_flags(void **state)
{
	uint8_t done[2] = {0};
	struct journal_msg_state st = {.done = done, .nrcpt = 2};

	(void)state;
	apply(&st, JOURNAL_DEFERRED, 0, JOURNAL_ALL_RCPTS, "451 4.3.0 busy");
	assert_int_equal(st.attempts, 3);
	assert_int_equal(st.next_us, 1700000900000000ull);
	assert_memory_equal(st.last_text, "451 4.3.0 busy", st.last_text_len);
	assert_memory_equal(done, ((uint8_t[]){0, 0}), 2); /* deferring finishes nobody */
	assert_false(journal_state_finished(&st));

	/* An operator flush: DEFERRED with next_us 0, "due now". */
	struct journal_rec r = rec(JOURNAL_DEFERRED, 0, 0, JOURNAL_ALL_RCPTS, "flush requested");
	r.next_us = 0;
	r.attempts = 3;
	journal_state_apply(&st, &r);
	assert_int_equal(st.next_us, 0);
	assert_int_equal(st.attempts, 3);

	apply(&st, JOURNAL_HOLD, 0, JOURNAL_ALL_RCPTS, NULL);
	assert_true(st.held);
	apply(&st, JOURNAL_HOLD, 0, JOURNAL_ALL_RCPTS, NULL);
	assert_true(st.held);
	apply(&st, JOURNAL_RELEASE, 0, JOURNAL_ALL_RCPTS, NULL);
	assert_false(st.held);
	apply(&st, JOURNAL_HOLD, 0, JOURNAL_ALL_RCPTS, NULL);
	assert_true(st.held);
	assert_false(journal_state_finished(&st));
	apply(&st, JOURNAL_DELETE, 0, JOURNAL_ALL_RCPTS, NULL);
	assert_true(st.deleted);
	assert_true(journal_state_finished(&st));
	assert_memory_equal(done, ((uint8_t[]){0, 0}), 2);
	/* Delete is final: nothing clears it. */
	apply(&st, JOURNAL_RELEASE, 0, JOURNAL_ALL_RCPTS, NULL);
	assert_true(st.deleted);
}

/* Replaying a journal's records for one rec_off, as ringmxd and the tool
 * do: other messages' records do not count. */
struct replay {
	uint64_t rec_off;
	struct journal_msg_state *st;
};

static int
replay_cb(void *arg, size_t off, const struct journal_rec *r)
{
	struct replay *rp = arg;
	(void)off;
	if (r->rec_off == rp->rec_off)
		journal_state_apply(rp->st, r);
	return 0;
}

static void
test_state_replay(void **state)
{
	uint8_t buf[8 * JOURNAL_REC_MAX], done[2] = {0};
	struct journal_msg_state st = {.done = done, .nrcpt = 2};
	size_t off = 0;
	struct journal_rec recs[] = {
		rec(JOURNAL_DEFERRED, 64, 0, 2, "421 later"),
		rec(JOURNAL_DELIVERED, 128, 0, JOURNAL_ALL_RCPTS, NULL), /* another message */
		rec(JOURNAL_DELIVERED, 64, 1, 1, "250 ok"),
		rec(JOURNAL_HOLD, 64, 0, JOURNAL_ALL_RCPTS, NULL),
	};

	(void)state;
	for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++)
		off += journal_encode(buf + off, sizeof(buf) - off, &recs[i]);
	struct replay rp = {64, &st};
	assert_int_equal(journal_scan(buf, off, replay_cb, &rp), off);
	assert_memory_equal(done, ((uint8_t[]){0, JOURNAL_DELIVERED}), 2);
	assert_true(st.held);
	assert_int_equal(st.attempts, 3);
	assert_memory_equal(st.last_text, "421 later", 9); /* points into buf */
	assert_ptr_equal(st.last_text, (const char *)buf + JOURNAL_HDR_SIZE);
	assert_false(journal_state_finished(&st));
}

static void
test_names(void **state)
{
	uint64_t seq = 0;

	(void)state;
	assert_int_equal(journal_name_parse("00000000000000ff.jnl", &seq), 0);
	assert_int_equal(seq, 255);
	assert_int_equal(journal_name_parse("0123456789abcdef.jnl", &seq), 0);
	assert_int_equal(seq, 0x0123456789abcdefull);
	assert_int_equal(journal_name_parse("00000000000000ff.seg", &seq), -1);
	assert_int_equal(journal_name_parse("00000000000000FF.jnl", &seq), -1);
	assert_int_equal(journal_name_parse("00000000000000ff.jnl.tmp", &seq), -1);
	assert_int_equal(journal_name_parse("0000000000000ff.jnl", &seq), -1);
	assert_int_equal(journal_name_parse("000000000000000ff.jnl", &seq), -1);
	assert_int_equal(journal_name_parse(".jnl", &seq), -1);
	assert_int_equal(journal_name_parse("", &seq), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_text_max),
		cmocka_unit_test(test_scan),
		cmocka_unit_test(test_torn_tail),
		cmocka_unit_test(test_state_ranges),
		cmocka_unit_test(test_state_flags),
		cmocka_unit_test(test_state_replay),
		cmocka_unit_test(test_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
