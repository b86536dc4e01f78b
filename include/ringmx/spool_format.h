/*
 * spool_format.h - the on-disk spool record: encoding, decoding, CRC32C and
 * segment scanning, shared by ringmxd (engine/spool/spool.c) and the ringmx-spool
 * tool. docs/spool-format.md is the normative description; keep it in step.
 *
 * Owner: the spool module (engine/spool/spool.c, engine/spool/spool_format.c,
 * tools/ringmx-spool.c, tests/unit/test_spool_format.c).
 *
 * A segment file is a sequence of records starting at offset 0, each padded
 * to SPOOL_REC_ALIGN bytes; the space after the last record is zero
 * (preallocated with fallocate). All integers are little-endian.
 *
 *   record  = header (SPOOL_HDR_SIZE) | envelope (env_len) | message (msg_len)
 *             | zero padding to a multiple of 8
 *   header  = magic u32 | version u16 | flags u16 | rec_len u64 | crc32c u32
 *             | reserved u32 | qid char[16] | received_us u64 | env_len u32
 *             | reserved u32 | msg_len u64
 *   envelope = TLV*: type u16 | len u16 | value[len]
 *
 * The CRC32C (Castagnoli) covers the whole record (rec_len bytes, padding
 * included) with the crc32c field taken as zero.
 *
 * Nothing here allocates or does I/O: functions work on caller memory.
 */
#ifndef RINGMX_SPOOL_FORMAT_H
#define RINGMX_SPOOL_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPOOL_REC_MAGIC   0x52534D52u /* "RMSR" as bytes on disk */
#define SPOOL_REC_VERSION 1
#define SPOOL_HDR_SIZE    64
#define SPOOL_REC_ALIGN   8
#define SPOOL_QID_FIELD   16 /* queue id, NUL padded */
#define SPOOL_CRC_OFF     16 /* byte offset of the crc32c field */
/* flags: a filler record (no envelope, msg_len zero bytes) that ends a
 * direct write on a 4 KiB boundary (spool_io = direct, docs/spool-format.md).
 * Readers skip it: spool_seg_scan() neither counts nor reports it. */
#define SPOOL_REC_PAD     0x0001u
/* Largest envelope accepted by readers. A record claiming more is damage,
 * not a reason to read gigabytes. recipient_limit alone would allow more
 * (1000000 x 256 bytes): ringmxd refuses the RCPT that would go past this
 * with 452 4.5.3 (smtp_conf.envelope_limit), so it never writes one. */
#define SPOOL_ENV_MAX (64u << 20)
/* Largest message a reader believes (message_size_limit's ceiling is 1 TiB,
 * but a record must also fit the segment, which is checked separately). */
#define SPOOL_MSG_MAX (1ull << 40)

/* Envelope TLV types. Readers skip types they do not know, so later
 * versions may add facts (TLS, authentication) without a version bump. */
enum spool_tlv {
	SPOOL_TLV_CLIENT_ADDR = 1, /* text: "192.0.2.1" or "IPv6:2001:db8::1" */
	SPOOL_TLV_CLIENT_PORT = 2, /* u16 */
	SPOOL_TLV_HELO = 3,        /* text as given by HELO/EHLO */
	SPOOL_TLV_MAIL_FROM = 4,   /* reverse-path without <>, empty for <> */
	SPOOL_TLV_MAIL_PARAMS = 5, /* u64 SIZE= (0: none) | u8 SPOOL_MAIL_* flags */
	SPOOL_TLV_RCPT = 6,        /* forward-path without <>, once per recipient */
	/* text: why a content filter quarantined the message (a milter's
	 * SMFIR_QUARANTINE). The relay keeps it on hold until an operator
	 * releases it (a JOURNAL_RELEASE record lifts it). */
	SPOOL_TLV_HOLD = 7,
};
#define SPOOL_TLV_HDR 4
#define SPOOL_TLV_VALUE_MAX 65535

enum {
	SPOOL_MAIL_SMTPUTF8 = 1u << 0, /* MAIL ... SMTPUTF8 */
	SPOOL_MAIL_8BITMIME = 1u << 1, /* MAIL ... BODY=8BITMIME */
	SPOOL_MAIL_ESMTP = 1u << 2,    /* the client used EHLO */
};
#define SPOOL_MAIL_PARAMS_LEN 9

struct spool_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t flags; /* 0, or SPOOL_REC_PAD */
	uint64_t rec_len;
	uint32_t crc;
	char qid[SPOOL_QID_FIELD + 1]; /* decoded: always NUL terminated */
	uint64_t received_us;          /* wall clock, microseconds since the epoch */
	uint32_t env_len;
	uint64_t msg_len;
};

/* ---- CRC32C ---- */

/* Raw update (no pre/post inversion): crc = spool_crc32c_update(~0u, ...),
 * result ~crc. Uses the SSE4.2 crc32 instruction when the CPU has it. */
uint32_t spool_crc32c_update(uint32_t crc, const void *p, size_t n);
/* The table implementation, for tests and CPUs without SSE4.2. */
uint32_t spool_crc32c_update_sw(uint32_t crc, const void *p, size_t n);
/* The hardware implementation; only call it if spool_crc32c_hw() is true. */
uint32_t spool_crc32c_update_hw(uint32_t crc, const void *p, size_t n);
bool spool_crc32c_hw(void);
/* Finished CRC32C of a buffer: CRC32C("123456789") == 0xE3069283. */
uint32_t spool_crc32c(const void *p, size_t n);

/* ---- records ---- */

static inline uint64_t
spool_rec_len(uint64_t env_len, uint64_t msg_len)
{
	uint64_t n = SPOOL_HDR_SIZE + env_len + msg_len;
	return (n + SPOOL_REC_ALIGN - 1) & ~(uint64_t)(SPOOL_REC_ALIGN - 1);
}

/* Write the header into out[SPOOL_HDR_SIZE] (crc as given in h). */
void spool_hdr_encode(uint8_t *out, const struct spool_hdr *h);
/* Decode a header; no checks besides what decoding needs. */
void spool_hdr_decode(const uint8_t *p, struct spool_hdr *h);
/* Store crc into an encoded header. */
void spool_hdr_set_crc(uint8_t *hdr, uint32_t crc);

/* Append one TLV at out+*off (cap bytes in total). Returns 0, or -1 if it
 * does not fit or len > SPOOL_TLV_VALUE_MAX. */
int spool_tlv_put(uint8_t *out, size_t cap, size_t *off, unsigned type, const void *v,
		  size_t len);

/* Encode a whole record into buf (cap >= spool_rec_len()). env is the
 * encoded envelope. Computes the CRC. Returns rec_len or 0 if cap is short.
 * Used by tests and tools; the engine builds records across chunks. */
size_t spool_rec_encode(uint8_t *buf, size_t cap, const char *qid, uint64_t received_us,
			const uint8_t *env, size_t env_len, const uint8_t *msg, size_t msg_len);

/* Encode a filler record (SPOOL_REC_PAD) of exactly len bytes into buf:
 * len >= SPOOL_HDR_SIZE and a multiple of SPOOL_REC_ALIGN. */
void spool_pad_encode(uint8_t *buf, size_t len);

/* Is the record at p (avail bytes readable) valid? */
enum spool_rec_status {
	SPOOL_REC_OK = 0,
	SPOOL_REC_END,   /* SPOOL_HDR_SIZE zero bytes (or fewer left, all zero): no more records */
	SPOOL_REC_SHORT, /* header fine, but the record runs past avail */
	SPOOL_REC_BAD,   /* wrong magic/version/lengths, or CRC mismatch */
};
enum spool_rec_status spool_rec_check(const uint8_t *p, uint64_t avail, struct spool_hdr *h);

/* ---- envelopes ---- */

struct spool_tlv_iter {
	const uint8_t *p;
	size_t len, off;
};
/* Next TLV: 1 and fills type/val/len, 0 at the end, -1 if malformed. */
int spool_tlv_next(struct spool_tlv_iter *it, unsigned *type, const uint8_t **val,
		   size_t *len);

/* The decoded envelope; text fields point into the record (not NUL
 * terminated). Recipients: iterate again with SPOOL_TLV_RCPT. */
struct spool_envelope {
	const uint8_t *client_addr;
	size_t client_addr_len;
	uint16_t client_port;
	const uint8_t *helo;
	size_t helo_len;
	const uint8_t *from;
	size_t from_len;
	uint64_t size_declared;
	unsigned mail_flags;
	unsigned nrcpt;
	const uint8_t *hold; /* SPOOL_TLV_HOLD's reason, NULL without one */
	size_t hold_len;
};
/* 0, or -1 if malformed (bad TLV framing, a fixed-size field of the wrong
 * length, no MAIL_FROM). */
int spool_env_parse(const uint8_t *p, size_t len, struct spool_envelope *out);

/* ---- segments ---- */

/* How a segment's data ends (damage in the middle is counted separately,
 * in spool_scan.damaged). */
enum spool_scan_end {
	SPOOL_SCAN_CLEAN = 0, /* records (or damaged ranges), then zeros or EOF */
	SPOOL_SCAN_TORN,      /* an incomplete last record, then only zeros/EOF */
	SPOOL_SCAN_DAMAGED,   /* damage running to the end: no valid record after it */
};

struct spool_scan {
	enum spool_scan_end end;
	/* TORN: where the incomplete record starts (truncate there). CLEAN:
	 * after the last record or damaged range (only zeros follow).
	 * DAMAGED: the end of the data (nothing may be cut off). */
	uint64_t valid_end;
	uint64_t records;       /* good records (filler records not counted) */
	uint64_t bytes;         /* sum of rec_len of the good records */
	uint64_t pad_bytes;     /* sum of rec_len of the filler records */
	uint64_t damaged;       /* damaged ranges (the last may run to the end) */
	uint64_t damaged_bytes; /* their length */
	uint64_t first_damage;  /* offset of the first damaged range, if any */
};

/* Called for every damaged range [off, off + len) of a segment. */
typedef void (*spool_dmg_fn)(void *arg, uint64_t off, uint64_t len);

/* Walk a segment's bytes (e.g. a copy of the file), calling fn for every
 * valid record and dmg (may be NULL) for every damaged range, in file
 * order. fn may stop the scan by returning non-zero (then end is CLEAN and
 * valid_end is after that record).
 *
 * At an offset off that holds no valid record:
 *  - torn tail: let Z be the offset after the last non-zero byte; if
 *    [off, Z) could be a prefix of one record (shorter than a header, or
 *    no longer than the length its valid-looking header claims), the
 *    record was cut short by a crash: end TORN, valid_end = off;
 *  - damage: otherwise. The scan resynchronises: if the header at off
 *    looks valid (magic, version, lengths) and only the CRC fails, the
 *    damaged range is that record's rec_len bytes; else it runs to the
 *    next 8-aligned offset that holds a valid record (magic, version,
 *    lengths and CRC), or to Z (end DAMAGED). The walk goes on there.
 * Bytes inside a record whose header looks valid are never searched for
 * records: a message may contain anything, even a valid record. Filler
 * records (SPOOL_REC_PAD) are stepped over: fn never sees them. */
void spool_seg_scan(const uint8_t *map, uint64_t size,
		    int (*fn)(void *arg, uint64_t off, const struct spool_hdr *h,
			      const uint8_t *rec),
		    spool_dmg_fn dmg, void *arg, struct spool_scan *out);

/* Where ringmxd sets the bytes of damaged ranges aside at recovery:
 * SPOOL_DIR/damaged/w<N>-<seq 16 hex>-<offset 16 hex>.bin. */
#define SPOOL_DAMAGED_DIR "damaged"

/* "w<N>/<seq 16 hex>.seg": parse the file name part. 0 or -1. */
int spool_seg_name_parse(const char *name, uint64_t *seq);

#endif
