/*
 * spool_format.c - spool record encoding/decoding, CRC32C and segment
 * scanning; see include/ringmx/spool_format.h and docs/spool-format.md.
 *
 * Owner: the spool module. Linked into ringmxd, ringmx-spool and the unit
 * tests; pure functions over caller memory, no allocation, no I/O.
 */
#include "ringmx/spool_format.h"

#include <assert.h>
#include <string.h>

#include "le.h"

/* ---- CRC32C ---- */

/* Reflected Castagnoli polynomial. */
#define CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[8][256];
static int crc_table_ready;

static void
crc_table_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
		crc_table[0][i] = c;
	}
	/* Slicing-by-8 tables: eight bytes per step on the fallback path. */
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] =
				(crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
	__atomic_store_n(&crc_table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t
spool_crc32c_update_sw(uint32_t crc, const void *data, size_t n)
{
	const uint8_t *p = data;
	/* Racing initialisations write identical values, so a plain flag is
	 * enough; the atomic only keeps sanitizers quiet. */
	if (!__atomic_load_n(&crc_table_ready, __ATOMIC_ACQUIRE))
		crc_table_init();
	while (n >= 8) {
		uint32_t lo = crc ^ le_get32(p), hi = le_get32(p + 4);
		crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
		      crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
		      crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
		      crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
		p += 8;
		n -= 8;
	}
	while (n--)
		crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

#if defined(__x86_64__)
/* a * b modulo the polynomial, both in the reflected representation (bit
 * 31 is the coefficient of x^0). */
static uint32_t
crc_mulmod(uint32_t a, uint32_t b)
{
	uint32_t p = 0;
	for (uint32_t m = 1u << 31; m != 0 && a != 0; m >>= 1) {
		if (a & m) {
			p ^= b;
			a ^= m;
		}
		b = b & 1 ? (b >> 1) ^ CRC32C_POLY : b >> 1;
	}
	return p;
}

/* The crc32 instruction has a latency of three cycles and a throughput of
 * one: a single dependency chain runs at a third of its speed. So a buffer
 * is cut into three streams of CRC_LANE bytes, computed side by side, and
 * joined: crc(A B C) = crc(A) * x^(16L) + crc(B) * x^(8L) + crc(C), the
 * multiplications modulo the polynomial. L = 1360 fits three streams in
 * one 4 KiB staging chunk (4080 bytes). A product with a fixed factor is
 * linear in the other one, so it is four table lookups (crc_lane_mul). */
#define CRC_LANE 1360
static uint32_t crc_lane_mul[2][4][256]; /* [x^(8L), x^(16L)][byte of a][value] */
static int crc_lanes_ready;

static void
crc_lanes_init(void)
{
	/* x^(8L): the polynomial 1 run through L zero bytes. */
	uint32_t k[2], r = 1u << 31;
	for (size_t i = 0; i < 8 * CRC_LANE; i++)
		r = r & 1 ? (r >> 1) ^ CRC32C_POLY : r >> 1;
	k[0] = r;
	k[1] = crc_mulmod(r, r);
	for (int t = 0; t < 2; t++)
		for (int j = 0; j < 4; j++)
			for (uint32_t v = 0; v < 256; v++)
				crc_lane_mul[t][j][v] = crc_mulmod(v << (8 * j), k[t]);
	__atomic_store_n(&crc_lanes_ready, 1, __ATOMIC_RELEASE);
}

static inline uint32_t
crc_lane_times(int t, uint32_t a)
{
	return crc_lane_mul[t][0][a & 0xff] ^ crc_lane_mul[t][1][(a >> 8) & 0xff] ^
	       crc_lane_mul[t][2][(a >> 16) & 0xff] ^ crc_lane_mul[t][3][a >> 24];
}

/* The SSE4.2 crc32 instruction computes exactly CRC32C. The target
 * attribute lets this one function use it without -msse4.2 for the whole
 * build; it is only called after the cpuid check. */
__attribute__((target("sse4.2"))) uint32_t
spool_crc32c_update_hw(uint32_t crc, const void *data, size_t n)
{
	const uint8_t *p = data;
	uint64_t c = crc;
	if (n >= 3 * CRC_LANE && !__atomic_load_n(&crc_lanes_ready, __ATOMIC_ACQUIRE))
		crc_lanes_init(); /* racing initialisations store the same values */
	while (n >= 3 * CRC_LANE) {
		uint64_t c1 = 0, c2 = 0;
		for (size_t i = 0; i < CRC_LANE; i += 8) {
			uint64_t v0, v1, v2;
			memcpy(&v0, p + i, 8);
			memcpy(&v1, p + CRC_LANE + i, 8);
			memcpy(&v2, p + 2 * CRC_LANE + i, 8);
			c = __builtin_ia32_crc32di(c, v0);
			c1 = __builtin_ia32_crc32di(c1, v1);
			c2 = __builtin_ia32_crc32di(c2, v2);
		}
		c = crc_lane_times(1, (uint32_t)c) ^ crc_lane_times(0, (uint32_t)c1) ^ (uint32_t)c2;
		p += 3 * CRC_LANE;
		n -= 3 * CRC_LANE;
	}
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, p, 8); /* unaligned load; x86 is little-endian */
		c = __builtin_ia32_crc32di(c, v);
		p += 8;
		n -= 8;
	}
	uint32_t c32 = (uint32_t)c;
	while (n--)
		c32 = __builtin_ia32_crc32qi(c32, *p++);
	return c32;
}

bool
spool_crc32c_hw(void)
{
	return __builtin_cpu_supports("sse4.2");
}
#else
uint32_t
spool_crc32c_update_hw(uint32_t crc, const void *data, size_t n)
{
	return spool_crc32c_update_sw(crc, data, n);
}

bool
spool_crc32c_hw(void)
{
	return false;
}
#endif

uint32_t
spool_crc32c_update(uint32_t crc, const void *p, size_t n)
{
	/* -1 unknown, 0 table, 1 instruction. */
	static int hw = -1;
	int h = __atomic_load_n(&hw, __ATOMIC_RELAXED);
	if (h < 0) {
		h = spool_crc32c_hw() ? 1 : 0;
		__atomic_store_n(&hw, h, __ATOMIC_RELAXED);
	}
	return h ? spool_crc32c_update_hw(crc, p, n) : spool_crc32c_update_sw(crc, p, n);
}

uint32_t
spool_crc32c(const void *p, size_t n)
{
	return ~spool_crc32c_update(~0u, p, n);
}

/* ---- headers ---- */

void
spool_hdr_encode(uint8_t *out, const struct spool_hdr *h)
{
	memset(out, 0, SPOOL_HDR_SIZE);
	le_put32(out + 0, h->magic);
	le_put16(out + 4, h->version);
	le_put16(out + 6, h->flags);
	le_put64(out + 8, h->rec_len);
	le_put32(out + SPOOL_CRC_OFF, h->crc);
	/* 20..23 reserved */
	memcpy(out + 24, h->qid, strnlen(h->qid, SPOOL_QID_FIELD));
	le_put64(out + 40, h->received_us);
	le_put32(out + 48, h->env_len);
	/* 52..55 reserved */
	le_put64(out + 56, h->msg_len);
}

void
spool_hdr_decode(const uint8_t *p, struct spool_hdr *h)
{
	h->magic = le_get32(p);
	h->version = le_get16(p + 4);
	h->flags = le_get16(p + 6);
	h->rec_len = le_get64(p + 8);
	h->crc = le_get32(p + SPOOL_CRC_OFF);
	memcpy(h->qid, p + 24, SPOOL_QID_FIELD);
	h->qid[SPOOL_QID_FIELD] = '\0';
	h->received_us = le_get64(p + 40);
	h->env_len = le_get32(p + 48);
	h->msg_len = le_get64(p + 56);
}

void
spool_hdr_set_crc(uint8_t *hdr, uint32_t crc)
{
	le_put32(hdr + SPOOL_CRC_OFF, crc);
}

int
spool_tlv_put(uint8_t *out, size_t cap, size_t *off, unsigned type, const void *v, size_t len)
{
	if (len > SPOOL_TLV_VALUE_MAX || *off > cap || cap - *off < SPOOL_TLV_HDR + len)
		return -1;
	le_put16(out + *off, (uint16_t)type);
	le_put16(out + *off + 2, (uint16_t)len);
	if (len)
		memcpy(out + *off + SPOOL_TLV_HDR, v, len);
	*off += SPOOL_TLV_HDR + len;
	return 0;
}

size_t
spool_rec_encode(uint8_t *buf, size_t cap, const char *qid, uint64_t received_us,
		 const uint8_t *env, size_t env_len, const uint8_t *msg, size_t msg_len)
{
	uint64_t len = spool_rec_len(env_len, msg_len);
	if (len > cap)
		return 0;
	struct spool_hdr h = {
		.magic = SPOOL_REC_MAGIC,
		.version = SPOOL_REC_VERSION,
		.rec_len = len,
		.received_us = received_us,
		.env_len = (uint32_t)env_len,
		.msg_len = msg_len,
	};
	size_t ql = strnlen(qid, SPOOL_QID_FIELD);
	memcpy(h.qid, qid, ql);
	h.qid[ql] = '\0';
	spool_hdr_encode(buf, &h);
	if (env_len)
		memcpy(buf + SPOOL_HDR_SIZE, env, env_len);
	if (msg_len)
		memcpy(buf + SPOOL_HDR_SIZE + env_len, msg, msg_len);
	memset(buf + SPOOL_HDR_SIZE + env_len + msg_len, 0,
	       (size_t)len - SPOOL_HDR_SIZE - env_len - msg_len);
	spool_hdr_set_crc(buf, spool_crc32c(buf, (size_t)len));
	return (size_t)len;
}

void
spool_pad_encode(uint8_t *buf, size_t len)
{
	assert(len >= SPOOL_HDR_SIZE && len % SPOOL_REC_ALIGN == 0);
	struct spool_hdr h = {
		.magic = SPOOL_REC_MAGIC,
		.version = SPOOL_REC_VERSION,
		.flags = SPOOL_REC_PAD,
		.rec_len = len,
		.msg_len = len - SPOOL_HDR_SIZE,
	};
	spool_hdr_encode(buf, &h);
	memset(buf + SPOOL_HDR_SIZE, 0, len - SPOOL_HDR_SIZE);
	spool_hdr_set_crc(buf, spool_crc32c(buf, len));
}

static bool
all_zero(const uint8_t *p, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

enum spool_rec_status
spool_rec_check(const uint8_t *p, uint64_t avail, struct spool_hdr *h)
{
	if (avail < SPOOL_HDR_SIZE)
		return all_zero(p, avail) ? SPOOL_REC_END : SPOOL_REC_SHORT;
	spool_hdr_decode(p, h);
	if (h->magic == 0 && all_zero(p, SPOOL_HDR_SIZE))
		return SPOOL_REC_END;
	if (h->magic != SPOOL_REC_MAGIC || h->version != SPOOL_REC_VERSION ||
	    h->env_len > SPOOL_ENV_MAX || h->msg_len > SPOOL_MSG_MAX ||
	    h->rec_len != spool_rec_len(h->env_len, h->msg_len))
		return SPOOL_REC_BAD;
	if (h->rec_len > avail)
		return SPOOL_REC_SHORT;
	/* CRC with the crc field taken as zero: three pieces, no copy. */
	static const uint8_t zero4[4];
	uint32_t c = spool_crc32c_update(~0u, p, SPOOL_CRC_OFF);
	c = spool_crc32c_update(c, zero4, 4);
	c = spool_crc32c_update(c, p + SPOOL_CRC_OFF + 4, (size_t)h->rec_len - SPOOL_CRC_OFF - 4);
	if (~c != h->crc)
		return SPOOL_REC_BAD;
	return SPOOL_REC_OK;
}

/* ---- envelopes ---- */

int
spool_tlv_next(struct spool_tlv_iter *it, unsigned *type, const uint8_t **val, size_t *len)
{
	if (it->off == it->len)
		return 0;
	if (it->len - it->off < SPOOL_TLV_HDR)
		return -1;
	size_t l = le_get16(it->p + it->off + 2);
	if (it->len - it->off - SPOOL_TLV_HDR < l)
		return -1;
	*type = le_get16(it->p + it->off);
	*val = it->p + it->off + SPOOL_TLV_HDR;
	*len = l;
	it->off += SPOOL_TLV_HDR + l;
	return 1;
}

int
spool_env_parse(const uint8_t *p, size_t len, struct spool_envelope *out)
{
	struct spool_tlv_iter it = {p, len, 0};
	const uint8_t *v;
	unsigned type;
	size_t n;
	int r;
	bool from = false;

	memset(out, 0, sizeof(*out));
	while ((r = spool_tlv_next(&it, &type, &v, &n)) > 0) {
		switch (type) {
		case SPOOL_TLV_CLIENT_ADDR:
			out->client_addr = v;
			out->client_addr_len = n;
			break;
		case SPOOL_TLV_CLIENT_PORT:
			if (n != 2)
				return -1;
			out->client_port = le_get16(v);
			break;
		case SPOOL_TLV_HELO:
			out->helo = v;
			out->helo_len = n;
			break;
		case SPOOL_TLV_MAIL_FROM:
			out->from = v;
			out->from_len = n;
			from = true;
			break;
		case SPOOL_TLV_MAIL_PARAMS:
			if (n != SPOOL_MAIL_PARAMS_LEN)
				return -1;
			out->size_declared = le_get64(v);
			out->mail_flags = v[8];
			break;
		case SPOOL_TLV_RCPT:
			out->nrcpt++;
			break;
		case SPOOL_TLV_HOLD:
			out->hold = v;
			out->hold_len = n;
			break;
		default:
			break; /* a later version's fact: skip */
		}
	}
	return r < 0 || !from ? -1 : 0;
}

/* ---- segments ---- */

/* Does the header at p (SPOOL_HDR_SIZE readable bytes) look valid, CRC
 * aside? */
static bool
hdr_plausible(const struct spool_hdr *h)
{
	return h->magic == SPOOL_REC_MAGIC && h->version == SPOOL_REC_VERSION &&
	       h->env_len <= SPOOL_ENV_MAX && h->msg_len <= SPOOL_MSG_MAX &&
	       h->rec_len == spool_rec_len(h->env_len, h->msg_len);
}

/* The first 8-aligned offset in [from, end) holding a valid record, or end. */
static uint64_t
resync(const uint8_t *map, uint64_t size, uint64_t from, uint64_t end)
{
	struct spool_hdr h;
	for (uint64_t o = from; o < end; o += SPOOL_REC_ALIGN) {
		/* The magic first: the CRC only runs where a record may start. */
		if (size - o < SPOOL_HDR_SIZE || le_get32(map + o) != SPOOL_REC_MAGIC)
			continue;
		if (spool_rec_check(map + o, size - o, &h) == SPOOL_REC_OK)
			return o;
	}
	return end;
}

void
spool_seg_scan(const uint8_t *map, uint64_t size,
	       int (*fn)(void *arg, uint64_t off, const struct spool_hdr *h, const uint8_t *rec),
	       spool_dmg_fn dmg, void *arg, struct spool_scan *out)
{
	uint64_t off = 0;
	struct spool_hdr h;

	memset(out, 0, sizeof(*out));
	for (;;) {
		assert(off <= size && off % SPOOL_REC_ALIGN == 0);
		enum spool_rec_status st = spool_rec_check(map + off, size - off, &h);
		if (st == SPOOL_REC_OK && (h.flags & SPOOL_REC_PAD)) {
			out->pad_bytes += h.rec_len;
			off += h.rec_len;
			continue;
		}
		if (st == SPOOL_REC_OK) {
			out->records++;
			out->bytes += h.rec_len;
			int stop = fn != NULL ? fn(arg, off, &h, map + off) : 0;
			off += h.rec_len;
			if (stop) {
				out->valid_end = off;
				out->end = SPOOL_SCAN_CLEAN;
				return;
			}
			continue;
		}
		/* Where does the data end? */
		uint64_t z = size;
		while (z > off && map[z - 1] == 0)
			z--;
		out->valid_end = off;
		if (z == off) {
			out->end = SPOOL_SCAN_CLEAN; /* zeros or EOF */
			return;
		}
		bool hdr_ok = st != SPOOL_REC_END && size - off >= SPOOL_HDR_SIZE && hdr_plausible(&h);
		/* Only one record may have been cut short: buffered writes
		 * within a segment are issued one at a time, so a crash leaves
		 * at most one partial write, and a buffered write fills its
		 * range front to back. (Direct writes, several in flight, may
		 * leave a hole before later records after a power loss: that
		 * is reported as damage, set aside, the records after it
		 * kept.) */
		if (z - off < SPOOL_HDR_SIZE || (hdr_ok && z - off <= h.rec_len)) {
			out->end = SPOOL_SCAN_TORN;
			return;
		}
		/* Damage, with more data after it. */
		uint64_t next;
		if (hdr_ok) {
			/* The header holds (its rec_len ends before the data
			 * does): the CRC failed on this record only. */
			next = off + h.rec_len;
		} else {
			uint64_t lim = (z + SPOOL_REC_ALIGN - 1) & ~(uint64_t)(SPOOL_REC_ALIGN - 1);
			next = resync(map, size, off + SPOOL_REC_ALIGN, lim < size ? lim : size);
		}
		if (out->damaged++ == 0)
			out->first_damage = off;
		if (next >= z) {
			/* Nothing valid after it: damaged to the end. */
			out->damaged_bytes += z - off;
			if (dmg != NULL)
				dmg(arg, off, z - off);
			out->end = SPOOL_SCAN_DAMAGED;
			out->valid_end = size;
			return;
		}
		out->damaged_bytes += next - off;
		if (dmg != NULL)
			dmg(arg, off, next - off);
		off = next;
	}
}

int
spool_seg_name_parse(const char *name, uint64_t *seq)
{
	uint64_t v = 0;
	size_t i;
	for (i = 0; i < 16; i++) {
		char c = name[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else
			return -1;
		v = v << 4 | d;
	}
	if (strcmp(name + 16, ".seg") != 0)
		return -1;
	*seq = v;
	return 0;
}
