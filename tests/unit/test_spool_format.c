/*
 * test_spool_format.c - the spool's on-disk record (spool_format.c): CRC32C
 * vectors for both implementations, encode/decode round trips, torn-tail
 * recovery at every cut offset of the last record, damage detection, and
 * queue-id uniqueness.
 * Owner: the spool module.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "qid.h"
#include "ringmx/spool_format.h"
#include "ringmx/spool_read.h"

static uint32_t
crc_with(uint32_t (*fn)(uint32_t, const void *, size_t), const void *p, size_t n)
{
	return ~fn(~0u, p, n);
}

static void
check_vector(const void *p, size_t n, uint32_t want)
{
	assert_int_equal(crc_with(spool_crc32c_update_sw, p, n), want);
	if (spool_crc32c_hw())
		assert_int_equal(crc_with(spool_crc32c_update_hw, p, n), want);
	assert_int_equal(spool_crc32c(p, n), want);
}

/* RFC 3720 (iSCSI) B.4 test vectors and the classic check value. */
static void
test_crc_vectors(void **state)
{
	uint8_t buf[32];

	(void)state;
	check_vector("123456789", 9, 0xE3069283u);
	check_vector("", 0, 0);
	memset(buf, 0, sizeof(buf));
	check_vector(buf, 32, 0x8A9136AAu);
	memset(buf, 0xff, sizeof(buf));
	check_vector(buf, 32, 0x62A8AB43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	check_vector(buf, 32, 0x46DD794Eu);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	check_vector(buf, 32, 0x113FDB5Cu);
}

/* Both implementations agree on every length and alignment, and
 * incremental updates equal one pass. */
static void
test_crc_hw_sw(void **state)
{
	/* Past twice 3 x 1360 bytes: the hardware path's three streams, once
	 * and twice, and the sequential rest, at every alignment. */
	uint8_t buf[9000];

	(void)state;
	srand(42);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)rand();
	for (size_t off = 0; off < 9; off++)
		for (size_t n = 0; n + off <= sizeof(buf); n += 1 + n / 7) {
			uint32_t sw = crc_with(spool_crc32c_update_sw, buf + off, n);
			if (spool_crc32c_hw())
				assert_int_equal(crc_with(spool_crc32c_update_hw, buf + off, n), sw);
			size_t h = n / 3;
			uint32_t c = spool_crc32c_update(~0u, buf + off, h);
			c = spool_crc32c_update(c, buf + off + h, n - h);
			assert_int_equal(~c, sw);
		}
}

/* ---- records ---- */

static size_t
make_env(uint8_t *env, size_t cap, const char *from, int nrcpt)
{
	size_t off = 0;
	uint8_t port[2] = {0x39, 0x30}; /* 12345 */
	uint8_t params[SPOOL_MAIL_PARAMS_LEN] = {0x10, 0x27, 0, 0, 0, 0, 0, 0,
						 SPOOL_MAIL_8BITMIME | SPOOL_MAIL_ESMTP};
	char r[64];

	assert_int_equal(spool_tlv_put(env, cap, &off, SPOOL_TLV_CLIENT_ADDR, "192.0.2.7", 9), 0);
	assert_int_equal(spool_tlv_put(env, cap, &off, SPOOL_TLV_CLIENT_PORT, port, 2), 0);
	assert_int_equal(spool_tlv_put(env, cap, &off, SPOOL_TLV_HELO, "client.test", 11), 0);
	assert_int_equal(spool_tlv_put(env, cap, &off, SPOOL_TLV_MAIL_FROM, from, strlen(from)), 0);
	assert_int_equal(spool_tlv_put(env, cap, &off, SPOOL_TLV_MAIL_PARAMS, params, 9), 0);
	assert_int_equal(spool_tlv_put(env, cap, &off, 999, "future", 6), 0); /* skipped */
	for (int i = 0; i < nrcpt; i++) {
		int n = snprintf(r, sizeof(r), "user%d@example.test", i);
		assert_int_equal(spool_tlv_put(env, cap, &off, SPOOL_TLV_RCPT, r, (size_t)n), 0);
	}
	return off;
}

static void
test_round_trip(void **state)
{
	uint8_t env[1024], buf[4096];
	const char *msg = "Received: from x\r\n\tby y; date\r\nSubject: s\r\n\r\nbody\r\n";
	struct spool_hdr h;
	struct spool_envelope e;

	(void)state;
	size_t el = make_env(env, sizeof(env), "a@sender.test", 3);
	size_t n = spool_rec_encode(buf, sizeof(buf), "1K1AR1NF0VG00", 1234567890123456ull, env,
				    el, (const uint8_t *)msg, strlen(msg));
	assert_int_equal(n, spool_rec_len(el, strlen(msg)));
	assert_int_equal(n % SPOOL_REC_ALIGN, 0);
	assert_int_equal(memcmp(buf, "RMSR", 4), 0); /* magic as bytes */
	assert_int_equal(spool_rec_check(buf, n, &h), SPOOL_REC_OK);
	assert_string_equal(h.qid, "1K1AR1NF0VG00");
	assert_int_equal(h.received_us, 1234567890123456ull);
	assert_int_equal(h.env_len, el);
	assert_int_equal(h.msg_len, strlen(msg));
	assert_int_equal(h.rec_len, n);
	assert_memory_equal(buf + SPOOL_HDR_SIZE + el, msg, strlen(msg));

	assert_int_equal(spool_env_parse(buf + SPOOL_HDR_SIZE, h.env_len, &e), 0);
	assert_int_equal(e.client_addr_len, 9);
	assert_memory_equal(e.client_addr, "192.0.2.7", 9);
	assert_int_equal(e.client_port, 12345);
	assert_memory_equal(e.helo, "client.test", 11);
	assert_memory_equal(e.from, "a@sender.test", 13);
	assert_int_equal(e.size_declared, 10000);
	assert_int_equal(e.mail_flags, SPOOL_MAIL_8BITMIME | SPOOL_MAIL_ESMTP);
	assert_int_equal(e.nrcpt, 3);

	/* Recipients in order. */
	struct spool_tlv_iter it = {buf + SPOOL_HDR_SIZE, h.env_len, 0};
	unsigned type, k = 0;
	const uint8_t *v;
	size_t vl;
	while (spool_tlv_next(&it, &type, &v, &vl) > 0)
		if (type == SPOOL_TLV_RCPT) {
			char want[64];
			snprintf(want, sizeof(want), "user%u@example.test", k++);
			assert_int_equal(vl, strlen(want));
			assert_memory_equal(v, want, vl);
		}
	assert_int_equal(k, 3);

	/* Null sender, empty message. */
	el = make_env(env, sizeof(env), "", 1);
	n = spool_rec_encode(buf, sizeof(buf), "X", 1, env, el, NULL, 0);
	assert_int_equal(spool_rec_check(buf, n, &h), SPOOL_REC_OK);
	assert_int_equal(spool_env_parse(buf + SPOOL_HDR_SIZE, h.env_len, &e), 0);
	assert_int_equal(e.from_len, 0);

	/* Every single-bit flip anywhere is caught. */
	n = spool_rec_encode(buf, sizeof(buf), "1K1AR1NF0VG00", 7, env, el, (const uint8_t *)msg,
			     strlen(msg));
	for (size_t i = 0; i < n * 8; i++) {
		buf[i / 8] ^= (uint8_t)(1u << (i % 8));
		assert_int_not_equal(spool_rec_check(buf, n, &h), SPOOL_REC_OK);
		buf[i / 8] ^= (uint8_t)(1u << (i % 8));
	}
	assert_int_equal(spool_rec_check(buf, n, &h), SPOOL_REC_OK);
	assert_int_equal(spool_rec_check(buf, n - 8, &h), SPOOL_REC_SHORT);

	/* Malformed envelopes. */
	uint8_t bad[8] = {SPOOL_TLV_HELO, 0, 10, 0, 'a', 'b', 'c', 'd'};
	assert_int_equal(spool_env_parse(bad, sizeof(bad), &e), -1);
	uint8_t noport[6] = {SPOOL_TLV_CLIENT_PORT, 0, 2, 0, 1, 2};
	assert_int_equal(spool_env_parse(noport, 6, &e), -1); /* no MAIL_FROM */
	assert_int_equal(spool_tlv_put(env, 8, &(size_t){0}, 1, "0123456789", 10), -1);
}

/* ---- segments ---- */

#define SEG_SIZE 65536
#define NREC 4

struct seg_fixture {
	uint8_t *seg;
	uint64_t off[NREC + 1]; /* off[i]: start of record i; off[NREC]: end */
};

static void
build_segment(struct seg_fixture *f)
{
	uint8_t env[1024], msg[3000];
	f->seg = calloc(1, SEG_SIZE);
	assert_non_null(f->seg);
	uint64_t off = 0;
	for (int i = 0; i < NREC; i++) {
		size_t ml = 100 + (size_t)i * 700;
		for (size_t j = 0; j < ml; j++)
			msg[j] = (uint8_t)("abcdefgh\r\n"[j % 10] + (j % 7 == 0 ? i : 0));
		size_t el = make_env(env, sizeof(env), "s@example.test", i + 1);
		char qid[16];
		snprintf(qid, sizeof(qid), "ID%d", i);
		f->off[i] = off;
		off += spool_rec_encode(f->seg + off, SEG_SIZE - off, qid, (uint64_t)i, env, el, msg,
					ml);
	}
	f->off[NREC] = off;
}

static int
count_cb(void *arg, uint64_t off, const struct spool_hdr *h, const uint8_t *rec)
{
	uint64_t *n = arg;
	(void)off;
	(void)rec;
	char want[16];
	snprintf(want, sizeof(want), "ID%llu", (unsigned long long)*n);
	assert_string_equal(h->qid, want); /* in order, none skipped */
	(*n)++;
	return 0;
}

/* Cut the last record at every offset (the rest zero, as in a preallocated
 * file, or the file ending there): the earlier records survive, the torn
 * one is never handed on, and the tail is torn, not damage. */
static void
test_torn_tail(void **state)
{
	struct seg_fixture f;
	uint8_t *work = malloc(SEG_SIZE);
	struct spool_scan sc;

	(void)state;
	build_segment(&f);
	uint64_t last = f.off[NREC - 1], end = f.off[NREC], full = end;
	/* The record's zero padding is the same whether written or not. */
	while (full > last && f.seg[full - 1] == 0)
		full--;
	for (uint64_t cut = last; cut <= end; cut++) {
		for (int eof = 0; eof < 2; eof++) {
			uint64_t size = eof ? cut : SEG_SIZE;
			uint64_t n = 0;
			memset(work, 0, SEG_SIZE);
			memcpy(work, f.seg, cut);
			spool_seg_scan(work, size, count_cb, NULL, &n, &sc);
			if (cut >= full && !(eof && cut < end)) {
				assert_int_equal(n, NREC);
				assert_int_equal(sc.end, SPOOL_SCAN_CLEAN);
				assert_int_equal(sc.valid_end, end);
				continue;
			}
			assert_int_equal(n, NREC - 1);
			assert_int_equal(sc.records, NREC - 1);
			assert_int_equal(sc.valid_end, last);
			/* Cut exactly at a record boundary: a clean end. */
			assert_int_equal(sc.end, cut == last ? SPOOL_SCAN_CLEAN : SPOOL_SCAN_TORN);
		}
	}
	free(work);
	free(f.seg);
}

/* What a scan saw: the qids of the records, and the damaged ranges. */
struct seen {
	char qid[16][SPOOL_QID_FIELD + 1];
	unsigned nrec;
	uint64_t doff[16], dlen[16];
	unsigned ndmg;
};

static int
seen_rec(void *arg, uint64_t off, const struct spool_hdr *h, const uint8_t *rec)
{
	struct seen *v = arg;
	(void)off;
	(void)rec;
	assert_true(v->nrec < 16);
	memcpy(v->qid[v->nrec++], h->qid, sizeof(v->qid[0]));
	return 0;
}

static void
seen_dmg(void *arg, uint64_t off, uint64_t len)
{
	struct seen *v = arg;
	assert_true(v->ndmg < 16);
	v->doff[v->ndmg] = off;
	v->dlen[v->ndmg++] = len;
}

static void
scan_seen(const uint8_t *seg, uint64_t size, struct seen *v, struct spool_scan *sc)
{
	memset(v, 0, sizeof(*v));
	spool_seg_scan(seg, size, seen_rec, seen_dmg, v, sc);
	assert_int_equal(sc->records, v->nrec);
	assert_int_equal(sc->damaged, v->ndmg);
}

/* A destroyed record in the middle, followed by good ones, is damage: the
 * scan names the damaged range and finds every record after it again
 * (issue 11: the records after the damage are acknowledged mail). */
static void
test_damage(void **state)
{
	struct seg_fixture f;
	struct spool_scan sc;
	struct seen v;

	(void)state;
	build_segment(&f);
	/* A flipped byte inside record 1's message: the header still holds,
	 * so exactly that record is the damaged range. */
	f.seg[f.off[1] + 200] ^= 0x20;
	scan_seen(f.seg, SEG_SIZE, &v, &sc);
	assert_int_equal(v.nrec, NREC - 1);
	assert_string_equal(v.qid[0], "ID0");
	assert_string_equal(v.qid[1], "ID2");
	assert_string_equal(v.qid[2], "ID3");
	assert_int_equal(v.ndmg, 1);
	assert_int_equal(v.doff[0], f.off[1]);
	assert_int_equal(v.dlen[0], f.off[2] - f.off[1]);
	assert_int_equal(sc.first_damage, f.off[1]);
	assert_int_equal(sc.damaged_bytes, f.off[2] - f.off[1]);
	assert_int_equal(sc.end, SPOOL_SCAN_CLEAN);
	assert_int_equal(sc.valid_end, f.off[NREC]);
	f.seg[f.off[1] + 200] ^= 0x20;

	/* A zeroed header (a lost write) before good ones: found again by
	 * searching forward for the next valid record. */
	memset(f.seg + f.off[2], 0, SPOOL_HDR_SIZE);
	scan_seen(f.seg, SEG_SIZE, &v, &sc);
	assert_int_equal(v.nrec, NREC - 1);
	assert_string_equal(v.qid[2], "ID3");
	assert_int_equal(v.ndmg, 1);
	assert_int_equal(v.doff[0], f.off[2]);
	assert_int_equal(v.dlen[0], f.off[3] - f.off[2]);
	assert_int_equal(sc.end, SPOOL_SCAN_CLEAN);
	free(f.seg);

	/* A garbled header: the search goes to the next valid record. */
	build_segment(&f);
	memset(f.seg + f.off[0] + 4, 0xA5, 12);
	scan_seen(f.seg, SEG_SIZE, &v, &sc);
	assert_int_equal(v.nrec, NREC - 1);
	assert_string_equal(v.qid[0], "ID1");
	assert_int_equal(v.ndmg, 1);
	assert_int_equal(v.doff[0], 0);
	assert_int_equal(v.dlen[0], f.off[1]);
	/* ... which must be valid: with record 1 damaged too, the range
	 * runs to record 2. */
	f.seg[f.off[1] + 300] ^= 1;
	scan_seen(f.seg, SEG_SIZE, &v, &sc);
	assert_int_equal(v.nrec, 2);
	assert_string_equal(v.qid[0], "ID2");
	assert_int_equal(v.ndmg, 1);
	assert_int_equal(v.dlen[0], f.off[2]);
	free(f.seg);

	/* Garbage where the zeros should be, after the last record: damage
	 * to the end, nothing to truncate. */
	build_segment(&f);
	f.seg[SEG_SIZE - 1] = 1;
	scan_seen(f.seg, SEG_SIZE, &v, &sc);
	assert_int_equal(v.nrec, NREC);
	assert_int_equal(sc.end, SPOOL_SCAN_DAMAGED);
	assert_int_equal(v.ndmg, 1);
	assert_int_equal(v.doff[0], f.off[NREC]);
	assert_int_equal(v.dlen[0], SEG_SIZE - f.off[NREC]);
	assert_int_equal(sc.valid_end, SEG_SIZE);
	free(f.seg);

	/* A bit flip in the last record is never handed on (it looks like a
	 * torn tail: the two cannot be told apart). */
	build_segment(&f);
	f.seg[f.off[NREC - 1] + 100] ^= 1;
	scan_seen(f.seg, SEG_SIZE, &v, &sc);
	assert_int_equal(v.nrec, NREC - 1);
	assert_int_equal(sc.end, SPOOL_SCAN_TORN);
	assert_int_equal(sc.valid_end, f.off[NREC - 1]);
	free(f.seg);

	/* An empty (all zero) segment is clean with no records. */
	uint8_t *z = calloc(1, 4096);
	spool_seg_scan(z, 4096, NULL, NULL, NULL, &sc);
	assert_int_equal(sc.end, SPOOL_SCAN_CLEAN);
	assert_int_equal(sc.records, 0);
	assert_int_equal(sc.damaged, 0);
	free(z);
}

/* A message may contain a valid record (someone mails a spool segment).
 * When the record around it is damaged but its header holds, the scan
 * skips the whole record: the one inside is never taken for mail. */
static void
test_damage_inner_record(void **state)
{
	uint8_t *seg = calloc(1, SEG_SIZE), env[256], inner[512], msg[1024];
	struct spool_scan sc;
	struct seen v;

	(void)state;
	size_t el = make_env(env, sizeof(env), "s@example.test", 1);
	size_t il = spool_rec_encode(inner, sizeof(inner), "INNER", 1, env, el,
				     (const uint8_t *)"forged\r\n", 8);
	assert_true(il > 0);
	/* Place the inner record at an 8-aligned file offset. */
	size_t pad = (8 - (SPOOL_HDR_SIZE + el) % 8) % 8;
	memset(msg, 'x', sizeof(msg));
	memcpy(msg + pad + 64, inner, il);
	size_t off = spool_rec_encode(seg, SEG_SIZE, "OUTER", 1, env, el, msg, sizeof(msg));
	assert_int_equal((SPOOL_HDR_SIZE + el + pad + 64) % 8, 0);
	off += spool_rec_encode(seg + off, SEG_SIZE - off, "AFTER", 2, env, el, msg, 100);
	scan_seen(seg, SEG_SIZE, &v, &sc);
	assert_int_equal(v.nrec, 2); /* the inner record is message bytes */
	seg[SPOOL_HDR_SIZE + el + 10] ^= 1; /* damage the outer message */
	scan_seen(seg, SEG_SIZE, &v, &sc);
	assert_int_equal(v.nrec, 1);
	assert_string_equal(v.qid[0], "AFTER");
	assert_int_equal(v.ndmg, 1);
	free(seg);
}

/* spool_read_file: what it cannot read becomes SPOOL_READ_POISON and is
 * counted, nothing is fatal; a file shorter than asked reads as zeros
 * after its end. (No bad sector can be made here: pread on a directory
 * fails too, with EISDIR, which takes the same path.) */
/* spool_io = direct ends every write on a 4 KiB boundary with a filler
 * record: the scan steps over it (never handed on, not counted as mail),
 * whatever its length (a header alone, or a block and more), and a filler
 * that is damaged is damage like any record. */
static void
test_pad_records(void **state)
{
	uint8_t env[256], msg[500];
	static const size_t pads[] = {SPOOL_HDR_SIZE, 72, 4032, 4096 + 56};
	(void)state;
	for (size_t k = 0; k < sizeof(pads) / sizeof(pads[0]); k++) {
		uint8_t *seg = calloc(1, 16384);
		assert_non_null(seg);
		size_t el = make_env(env, sizeof(env), "s@example.test", 1), off = 0;
		memset(msg, 'm', sizeof(msg));
		off += spool_rec_encode(seg, 16384, "ID0", 1, env, el, msg, sizeof(msg));
		uint64_t pad_at = off;
		spool_pad_encode(seg + off, pads[k]);
		off += pads[k];
		uint64_t second = off;
		off += spool_rec_encode(seg + off, 16384 - off, "ID1", 2, env, el, msg, 100);

		struct spool_hdr h;
		assert_int_equal(spool_rec_check(seg + pad_at, 16384 - pad_at, &h), SPOOL_REC_OK);
		assert_int_equal(h.flags, SPOOL_REC_PAD);
		assert_int_equal(h.rec_len, pads[k]);
		assert_int_equal(h.env_len, 0);

		struct seen v;
		struct spool_scan sc;
		scan_seen(seg, 16384, &v, &sc);
		assert_int_equal(v.nrec, 2);
		assert_string_equal(v.qid[0], "ID0");
		assert_string_equal(v.qid[1], "ID1");
		assert_int_equal(sc.pad_bytes, pads[k]);
		assert_int_equal(sc.bytes, off - pads[k]);
		assert_int_equal(sc.end, SPOOL_SCAN_CLEAN);
		assert_int_equal(sc.valid_end, off);

		/* One flipped byte in the filler: a damaged range, the record
		 * after it found again. */
		seg[pad_at + pads[k] - 1] ^= 1;
		scan_seen(seg, 16384, &v, &sc);
		assert_int_equal(v.nrec, 2);
		assert_int_equal(v.ndmg, 1);
		assert_int_equal(v.doff[0], pad_at);
		assert_int_equal(v.doff[0] + v.dlen[0], second);
		free(seg);
	}
}

static void
test_read_file(void **state)
{
	char path[] = "/tmp/ringmx-read-XXXXXX";
	uint64_t bad, bad_off;

	(void)state;
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	uint8_t data[10000];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
	uint8_t *b = spool_read_file(fd, sizeof(data), &bad, &bad_off);
	assert_non_null(b);
	assert_int_equal(bad, 0);
	assert_memory_equal(b, data, sizeof(data));
	free(b);
	/* Asked for more than the file holds (it was cut short). */
	b = spool_read_file(fd, 20000, &bad, &bad_off);
	assert_non_null(b);
	assert_int_equal(bad, 0);
	assert_memory_equal(b, data, sizeof(data));
	for (size_t i = sizeof(data); i < 20000; i++)
		assert_int_equal(b[i], 0);
	free(b);
	close(fd);
	unlink(path);

	int dfd = open("/tmp", O_RDONLY | O_DIRECTORY);
	assert_true(dfd >= 0);
	b = spool_read_file(dfd, 3 * SPOOL_READ_BLOCK, &bad, &bad_off);
	assert_non_null(b);
	assert_int_equal(bad, 3 * SPOOL_READ_BLOCK);
	assert_int_equal(bad_off, 0);
	for (size_t i = 0; i < 3 * SPOOL_READ_BLOCK; i++)
		assert_int_equal(b[i], SPOOL_READ_POISON);
	/* Poison is never a record, nor the end of a segment. */
	struct spool_scan sc;
	spool_seg_scan(b, 3 * SPOOL_READ_BLOCK, NULL, NULL, NULL, &sc);
	assert_int_equal(sc.records, 0);
	assert_int_not_equal(sc.end, SPOOL_SCAN_CLEAN);
	free(b);
	close(dfd);
}

static void
test_seg_names(void **state)
{
	uint64_t seq;

	(void)state;
	assert_int_equal(spool_seg_name_parse("00000000000000ff.seg", &seq), 0);
	assert_int_equal(seq, 255);
	assert_int_equal(spool_seg_name_parse("00000000000000FF.seg", &seq), -1);
	assert_int_equal(spool_seg_name_parse("00000000000000ff.seg.tmp", &seq), -1);
	assert_int_equal(spool_seg_name_parse("0000000000000ff.seg", &seq), -1);
	assert_int_equal(spool_seg_name_parse("..", &seq), -1);
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

/* Queue ids: unique within a worker at any arrival rate, across workers,
 * and across a restart (a new generator, the clock moved on). */
static void
test_qid_unique(void **state)
{
	enum { PER = 5000, WORKERS = 3 };
	static char ids[2 * WORKERS * PER][QID_LEN + 1];
	size_t n = 0;

	(void)state;
	for (int run = 0; run < 2; run++)
		for (unsigned w = 0; w < WORKERS; w++) {
			struct qid_gen g;
			qid_init(&g, w);
			/* All in the same few microseconds: the generator steps. */
			uint64_t t = 1700000000000000ull + (uint64_t)run * 1000000u;
			for (int i = 0; i < PER; i++)
				qid_next(&g, t + (uint64_t)(i / 100), ids[n++]);
		}
	qsort(ids, n, sizeof(ids[0]), cmp_str);
	for (size_t i = 1; i < n; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(strlen(ids[i]), QID_LEN); /* fits SPOOL_QID_FIELD */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc_vectors),
		cmocka_unit_test(test_crc_hw_sw),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_torn_tail),
		cmocka_unit_test(test_damage),
		cmocka_unit_test(test_damage_inner_record),
		cmocka_unit_test(test_pad_records),
		cmocka_unit_test(test_seg_names),
		cmocka_unit_test(test_read_file),
		cmocka_unit_test(test_qid_unique),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
