/*
 * test_proxy.c - the PROXY protocol parser (engine/conn/proxy.c): tables of
 * valid and invalid v1 and v2 headers (hand-built bytes, TLVs, LOCAL,
 * UNSPEC, the 107-byte v1 limit, PROXY_HDR_MAX), every prefix of every
 * input (NEED_MORE, or BAD once the prefix is already wrong, and never
 * back), trailing bytes left alone, inputs ending at a PROT_NONE guard page,
 * the trusted-network check and the peer formatter.
 * Owner: the PROXY protocol module.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/mman.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "ringmx/proxy.h"
#include "ringmx/smtp.h"
#include "ringmx/spool_format.h"

#define NEED PROXY_NEED_MORE
#define BAD  PROXY_BAD

/* ---- guard page: every parse reads input that ends right before a
 * PROT_NONE page, so reading p[n] faults ---- */

static uint8_t *guard_page;
#define GUARD_ROOM (3 * 4096 + 64)

static const uint8_t *
guarded(const void *p, size_t n)
{
	assert_true(n <= GUARD_ROOM);
	memcpy(guard_page - n, p, n);
	return guard_page - n;
}

static int
parse_g(const void *p, size_t n, struct proxy_hdr *h)
{
	return proxy_parse(guarded(p, n), n, h);
}

/*
 * The properties every input must have: the full input gives want; every
 * proper prefix gives NEED_MORE or BAD, and once a prefix is BAD every
 * longer one is (the caller drops the connection at the first BAD, so a
 * later "valid" would be a lie); a valid header followed by more bytes
 * still returns its own length; out is untouched unless the parse succeeds.
 */
static void
check_input(const char *name, const uint8_t *in, size_t len, int want, struct proxy_hdr *out)
{
	struct proxy_hdr h, canary;
	bool bad_seen = false;
	int rc;

	memset(&canary, 0xa5, sizeof(canary));
	for (size_t k = 0; k < len; k++) {
		memcpy(&h, &canary, sizeof(h));
		rc = parse_g(in, k, &h);
		if (rc != NEED && rc != BAD)
			fail_msg("%s: prefix %zu: got %d, want NEED_MORE or BAD", name, k, rc);
		if (want > 0 && rc != NEED)
			fail_msg("%s: prefix %zu of a valid header: got %d, want NEED_MORE", name, k,
				 rc);
		if (bad_seen && rc != BAD)
			fail_msg("%s: prefix %zu: BAD came back as %d", name, k, rc);
		bad_seen = rc == BAD;
		assert_memory_equal(&h, &canary, sizeof(h));
	}
	memcpy(&h, &canary, sizeof(h));
	rc = parse_g(in, len, &h);
	if (rc != want)
		fail_msg("%s: got %d, want %d", name, rc, want);
	if (bad_seen && rc != BAD)
		fail_msg("%s: full input %d after a BAD prefix", name, rc);
	if (rc <= 0) {
		assert_memory_equal(&h, &canary, sizeof(h));
		return;
	}
	/* SMTP (or a TLS ClientHello) pipelined behind the header is not ours. */
	{
		static const char tail[] = "EHLO client.test\r\n\x16\x03\x01\r\n\r\n";
		uint8_t buf[PROXY_HDR_MAX + sizeof(tail)];
		struct proxy_hdr h2;

		memcpy(buf, in, len);
		memcpy(buf + len, tail, sizeof(tail) - 1);
		for (size_t t = 1; t < sizeof(tail); t++) {
			rc = parse_g(buf, len + t, &h2);
			if (rc != want)
				fail_msg("%s: with %zu trailing bytes: got %d, want %d", name, t, rc,
					 want);
		}
	}
	/* Last, so that out's views point at exactly these bytes. */
	if (out != NULL)
		assert_int_equal(parse_g(in, len, out), want);
}

static void
check_str(const char *s, int want, struct proxy_hdr *out)
{
	check_input(s, (const uint8_t *)s, strlen(s), want, out);
}

static void
want_addr(const struct sockaddr_storage *ss, const char *text, unsigned port)
{
	char t[PROXY_ADDR_TEXT_MAX];
	uint16_t p;

	assert_int_equal(proxy_addr_text((const struct sockaddr *)ss, t, sizeof(t), &p), 0);
	assert_string_equal(t, text);
	assert_int_equal(p, port);
}

/* ---- v1 ---- */

struct v1case {
	const char *in;
	int want; /* 0: strlen(in) */
	enum proxy_family fam;
	const char *src, *dst;
	unsigned sport, dport;
};

/* The spec's worst case (2.1): exactly 107 bytes with the CRLF. */
#define V1_WORST                                                                                   \
	"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "                                   \
	"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"

static const struct v1case v1_valid[] = {
	{"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", 0, PROXY_FAM_TCP4, "192.0.2.1",
	 "198.51.100.2", 56324, 25},
	{"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n", 0, PROXY_FAM_TCP4, "255.255.255.255",
	 "0.0.0.0", 65535, 0},
	{"PROXY TCP6 2001:db8::1 2001:db8::2 40000 2526\r\n", 0, PROXY_FAM_TCP6, "IPv6:2001:db8::1",
	 "IPv6:2001:db8::2", 40000, 2526},
	{"PROXY TCP6 ::1 ::1 1 1\r\n", 0, PROXY_FAM_TCP6, "IPv6:::1", "IPv6:::1", 1, 1},
	{"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ::ffff:192.0.2.1 9 10\r\n", 0,
	 PROXY_FAM_TCP6, "IPv6:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "IPv6:::ffff:192.0.2.1", 9,
	 10},
	{"PROXY TCP6 2001:DB8::A 2001:db8::b 1 2\r\n", 0, PROXY_FAM_TCP6, "IPv6:2001:db8::a",
	 "IPv6:2001:db8::b", 1, 2},
	{"PROXY UNKNOWN\r\n", 0, PROXY_FAM_UNKNOWN, NULL, NULL, 0, 0},
	{"PROXY UNKNOWN \r\n", 0, PROXY_FAM_UNKNOWN, NULL, NULL, 0, 0},
	{"PROXY UNKNOWN whatever\t the\x01 sender\xff says\r\n", 0, PROXY_FAM_UNKNOWN, NULL, NULL,
	 0, 0},
	{V1_WORST, 107, PROXY_FAM_UNKNOWN, NULL, NULL, 0, 0},
};

static const char *const v1_invalid[] = {
	/* line ends */
	"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\rX",
	"PROXY UNKNOWN\n",
	"PROXY UNKNOWN x\ny\r\n",
	"PROXY UNKNOWN x\ry\r\n",
	"PROXY UNKNOWN\r\r\n",
	/* 108 bytes: one over */
	("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655355\r\n"),
	/* keyword and protocol */
	"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
	"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
	"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
	"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
	"PROXY UNKNOWNX\r\n",
	"PROXY unknown\r\n",
	"PROXY \r\n",
	"PROXY\r\n",
	"PROXY TCP4\r\n",
	"PROXY TCP4 \r\n",
	"PROXYTCP4 192.0.2.1 198.51.100.2 1 2\r\n",
	/* spacing */
	"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
	"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
	"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 1  2\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
	"PROXY TCP4 192.0.2.1\t198.51.100.2 1 2\r\n",
	" PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
	/* fields: missing, extra, trailing garbage */
	"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 1 2x\r\n",
	/* addresses */
	"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
	"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
	"PROXY TCP6 2001:db8::1 192.0.2.1 1 2\r\n",
	"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
	"PROXY TCP4 192.0.2 198.51.100.2 1 2\r\n",
	"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",
	"PROXY TCP4 192.0.2.1. 198.51.100.2 1 2\r\n",
	"PROXY TCP4 1.2.3.4.5 198.51.100.2 1 2\r\n",
	"PROXY TCP4 0x7f.0.0.1 198.51.100.2 1 2\r\n",
	"PROXY TCP4 1192.168.100.200 198.51.100.2 1 2\r\n",
	"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
	"PROXY TCP6 [::1] ::1 1 2\r\n",
	"PROXY TCP6 2001:db8:::1 ::1 1 2\r\n",
	"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.2555 ::1 1 2\r\n",
	"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
	/* ports */
	"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 1 00\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 1 99999\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 100000 2\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
	"PROXY TCP4 192.0.2.1 198.51.100.2 0x1 2\r\n",
	/* not a header at all */
	"EHLO client.test\r\n",
	"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
	"GET / HTTP/1.0\r\n\r\n",
	"PX",
};

static void
test_v1_valid(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(v1_valid) / sizeof(v1_valid[0]); i++) {
		const struct v1case *c = &v1_valid[i];
		int want = c->want ? c->want : (int)strlen(c->in);
		struct proxy_hdr h;

		check_str(c->in, want, &h);
		assert_int_equal(h.version, 1);
		assert_int_equal(h.command, PROXY_CMD_PROXY);
		assert_int_equal(h.family, c->fam);
		assert_null(h.tlv.p);
		if (c->src != NULL) {
			want_addr(&h.src, c->src, c->sport);
			want_addr(&h.dst, c->dst, c->dport);
		} else {
			assert_int_equal(h.src.ss_family, AF_UNSPEC);
			assert_int_equal(h.dst.ss_family, AF_UNSPEC);
		}
	}
	assert_int_equal(strlen(V1_WORST), PROXY_V1_MAX);
}

static void
test_v1_invalid(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(v1_invalid) / sizeof(v1_invalid[0]); i++)
		check_str(v1_invalid[i], BAD, NULL);
	/* Strings with a NUL inside. */
	check_input("NUL in UNKNOWN", (const uint8_t *)"PROXY UNKNOWN \0\r\n", 17, 17, NULL);
	check_input("NUL in keyword", (const uint8_t *)"PROXY\0TCP4", 10, BAD, NULL);
	check_input("NUL after DPORT",
		    (const uint8_t *)"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\0\r\n", 40, BAD, NULL);
}

/* No CRLF within 107 bytes: NEED_MORE up to 106 bytes, BAD from 107 on,
 * whatever comes later. */
static void
test_v1_no_crlf(void **state)
{
	uint8_t buf[300];
	struct proxy_hdr h;

	(void)state;
	memcpy(buf, "PROXY UNKNOWN ", 14);
	memset(buf + 14, 'x', sizeof(buf) - 14);
	for (size_t n = 0; n <= sizeof(buf); n++)
		assert_int_equal(parse_g(buf, n, &h), n < PROXY_V1_MAX ? NEED : BAD);
	/* CRLF at 105..106 ends a 107-byte line; at 106..107 it is too late. */
	buf[105] = '\r';
	buf[106] = '\n';
	assert_int_equal(parse_g(buf, 200, &h), 107);
	buf[105] = 'x';
	buf[106] = '\r';
	buf[107] = '\n';
	assert_int_equal(parse_g(buf, 107, &h), BAD);
	assert_int_equal(parse_g(buf, 200, &h), BAD);
	/* 106 bytes, CR last: still waiting for the LF. */
	assert_int_equal(parse_g(buf, 106, &h), NEED);
}

/* Two headers back to back: only the first is consumed. */
static void
test_v1_two_headers(void **state)
{
	static const char two[] = "PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n"
				  "PROXY TCP4 192.0.2.9 198.51.100.9 3 4\r\n";
	struct proxy_hdr h;

	(void)state;
	assert_int_equal(parse_g(two, sizeof(two) - 1, &h), 39);
	want_addr(&h.src, "192.0.2.1", 1);
}

/* ---- v2 builders ---- */

static const uint8_t sig[PROXY_V2_SIG_LEN] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					      0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/* A v2 header: fixed part, address block, then body[blen] (TLVs). The
 * length field is computed unless len_override >= 0. */
static size_t
v2(uint8_t *b, uint8_t vc, uint8_t fam, const void *addr, size_t alen, const void *body,
   size_t blen, int len_override)
{
	size_t len = alen + blen;

	memcpy(b, sig, sizeof(sig));
	b[12] = vc;
	b[13] = fam;
	if (len_override >= 0)
		len = (size_t)len_override;
	b[14] = (uint8_t)(len >> 8);
	b[15] = (uint8_t)len;
	if (alen)
		memcpy(b + 16, addr, alen);
	if (blen)
		memcpy(b + 16 + alen, body, blen);
	return 16 + alen + blen;
}

static size_t
tlv(uint8_t *b, uint8_t type, const void *v, size_t n)
{
	b[0] = type;
	b[1] = (uint8_t)(n >> 8);
	b[2] = (uint8_t)n;
	if (n)
		memcpy(b + 3, v, n);
	return 3 + n;
}

/* 192.0.2.1:56324 -> 198.51.100.2:25 */
static const uint8_t addr4[12] = {192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x00, 0x19};
/* [2001:db8::1]:40000 -> [2001:db8::2]:2526 */
static const uint8_t addr6[36] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
				  0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
				  0x9c, 0x40, 0x09, 0xde};

/* Store a correct CRC32C into the 4-byte value at b[vo] of the header
 * b[0..total). */
static void
crc_fix(uint8_t *b, size_t total, size_t vo)
{
	uint32_t c;

	memset(b + vo, 0, 4);
	c = spool_crc32c(b, total);
	b[vo] = (uint8_t)(c >> 24);
	b[vo + 1] = (uint8_t)(c >> 16);
	b[vo + 2] = (uint8_t)(c >> 8);
	b[vo + 3] = (uint8_t)c;
}

static void
want_view(struct proxy_view v, const char *s)
{
	if (s == NULL) {
		assert_null(v.p);
		return;
	}
	assert_non_null(v.p);
	assert_int_equal(v.n, strlen(s));
	assert_memory_equal(v.p, s, v.n);
}

/* ---- v2 valid ---- */

static void
test_v2_basic(void **state)
{
	uint8_t b[256];
	struct proxy_hdr h;
	size_t n;

	(void)state;
	n = v2(b, 0x21, 0x11, addr4, 12, NULL, 0, -1);
	check_input("v2 TCP4", b, n, 28, &h);
	assert_int_equal(h.version, 2);
	assert_int_equal(h.command, PROXY_CMD_PROXY);
	assert_int_equal(h.family, PROXY_FAM_TCP4);
	want_addr(&h.src, "192.0.2.1", 56324);
	want_addr(&h.dst, "198.51.100.2", 25);
	assert_int_equal(h.tlv.n, 0);
	assert_false(h.crc32c);
	assert_false(h.ssl);

	n = v2(b, 0x21, 0x21, addr6, 36, NULL, 0, -1);
	check_input("v2 TCP6", b, n, 52, &h);
	assert_int_equal(h.family, PROXY_FAM_TCP6);
	want_addr(&h.src, "IPv6:2001:db8::1", 40000);
	want_addr(&h.dst, "IPv6:2001:db8::2", 2526);

	/* LOCAL (HAProxy health check): UNSPEC, no addresses. */
	n = v2(b, 0x20, 0x00, NULL, 0, NULL, 0, -1);
	check_input("v2 LOCAL", b, n, 16, &h);
	assert_int_equal(h.command, PROXY_CMD_LOCAL);
	assert_int_equal(h.family, PROXY_FAM_UNSPEC);
	assert_int_equal(h.src.ss_family, AF_UNSPEC);

	/* LOCAL carrying addresses: parsed, but they are not the client's. */
	n = v2(b, 0x20, 0x11, addr4, 12, NULL, 0, -1);
	check_input("v2 LOCAL TCP4", b, n, 28, &h);
	assert_int_equal(h.command, PROXY_CMD_LOCAL);
	assert_int_equal(h.family, PROXY_FAM_TCP4);

	/* PROXY with UNSPEC: no addresses, keep the real peer. */
	n = v2(b, 0x21, 0x00, NULL, 0, NULL, 0, -1);
	check_input("v2 PROXY UNSPEC", b, n, 16, &h);
	assert_int_equal(h.command, PROXY_CMD_PROXY);
	assert_int_equal(h.family, PROXY_FAM_UNSPEC);
}

/* Every TLV type we know plus unknown ones, and a valid CRC32C. */
static void
test_v2_tlvs(void **state)
{
	uint8_t body[512], ssl[128], b[600];
	size_t bn = 0, sn = 0, n, crc_vo;
	struct proxy_hdr h;
	struct proxy_tlv t;
	size_t off = 0;
	unsigned seen = 0;
	static const uint8_t types[] = {PP2_TYPE_ALPN,      PP2_TYPE_AUTHORITY, PP2_TYPE_NOOP,
					PP2_TYPE_UNIQUE_ID, 0xe0,               PP2_TYPE_SSL,
					PP2_TYPE_NETNS,     PP2_TYPE_CRC32C};

	(void)state;
	ssl[0] = PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN;
	memset(ssl + 1, 0, 4); /* verify = 0: certificate verified */
	sn = 5;
	sn += tlv(ssl + sn, PP2_SUBTYPE_SSL_VERSION, "TLSv1.3", 7);
	sn += tlv(ssl + sn, PP2_SUBTYPE_SSL_CN, "client.example", 14);
	sn += tlv(ssl + sn, 0x2f, "future", 6); /* unknown sub-TLV: skipped */
	sn += tlv(ssl + sn, PP2_SUBTYPE_SSL_CIPHER, "TLS_AES_256_GCM_SHA384", 22);

	bn += tlv(body + bn, PP2_TYPE_ALPN, "smtp", 4);
	bn += tlv(body + bn, PP2_TYPE_AUTHORITY, "mx.example.test", 15);
	bn += tlv(body + bn, PP2_TYPE_NOOP, "\0\0\0", 3);
	bn += tlv(body + bn, PP2_TYPE_UNIQUE_ID, "id-42", 5);
	bn += tlv(body + bn, 0xe0, "custom", 6); /* PP2_TYPE_MIN_CUSTOM: skipped */
	bn += tlv(body + bn, PP2_TYPE_SSL, ssl, sn);
	bn += tlv(body + bn, PP2_TYPE_NETNS, "blue", 4);
	crc_vo = 16 + 12 + bn + 3;
	bn += tlv(body + bn, PP2_TYPE_CRC32C, "\0\0\0\0", 4);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	crc_fix(b, n, crc_vo);

	check_input("v2 TLVs", b, n, (int)n, &h);
	want_addr(&h.src, "192.0.2.1", 56324);
	assert_int_equal(h.tlv.n, bn);
	want_view(h.alpn, "smtp");
	want_view(h.authority, "mx.example.test");
	want_view(h.unique_id, "id-42");
	want_view(h.netns, "blue");
	assert_true(h.crc32c);
	assert_true(h.ssl);
	assert_int_equal(h.ssl_client, PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN);
	assert_int_equal(h.ssl_verify, 0);
	want_view(h.ssl_version, "TLSv1.3");
	want_view(h.ssl_cn, "client.example");
	want_view(h.ssl_cipher, "TLS_AES_256_GCM_SHA384");
	want_view(h.ssl_sig_alg, NULL);
	want_view(h.ssl_key_alg, NULL);

	/* The iterator sees every TLV in order, unknown ones included. */
	for (size_t i = 0; proxy_tlv_next(h.tlv.p, h.tlv.n, &off, &t) == 1; i++) {
		assert_true(i < sizeof(types));
		assert_int_equal(t.type, types[i]);
		seen++;
	}
	assert_int_equal(seen, sizeof(types));
	assert_int_equal(off, h.tlv.n);
	off = 0;
	seen = 0;
	while (proxy_tlv_next(h.ssl_sub.p, h.ssl_sub.n, &off, &t) == 1)
		seen++;
	assert_int_equal(seen, 4);

	/* A wrong CRC, in any bit, is refused; so is a flipped payload byte. */
	for (unsigned bit = 0; bit < 32; bit++) {
		b[crc_vo + bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_equal(parse_g(b, n, &h), BAD);
		b[crc_vo + bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	b[16] ^= 1; /* source address */
	check_input("v2 CRC mismatch", b, n, BAD, NULL);
	b[16] ^= 1;
	assert_int_equal(parse_g(b, n, &h), (int)n);
}

/* TLVs after UNSPEC (HAProxy LOCAL health checks may carry some), a
 * zero-length TLV, limits: UNIQUE_ID 128, header exactly PROXY_HDR_MAX. */
static void
test_v2_edges(void **state)
{
	static uint8_t b[PROXY_HDR_MAX + 16], body[PROXY_HDR_MAX];
	uint8_t id[PP2_UNIQUE_ID_MAX + 1];
	struct proxy_hdr h;
	size_t bn, n;

	(void)state;
	bn = tlv(body, PP2_TYPE_NOOP, NULL, 0);
	n = v2(b, 0x20, 0x00, NULL, 0, body, bn, -1);
	check_input("v2 LOCAL + empty NOOP", b, n, 19, &h);
	assert_int_equal(h.tlv.n, 3);

	bn = tlv(body, PP2_TYPE_AUTHORITY, NULL, 0);
	n = v2(b, 0x21, 0x00, NULL, 0, body, bn, -1);
	check_input("v2 UNSPEC + empty AUTHORITY", b, n, 19, &h);
	assert_non_null(h.authority.p);
	assert_int_equal(h.authority.n, 0);

	memset(id, 'u', sizeof(id));
	bn = tlv(body, PP2_TYPE_UNIQUE_ID, id, PP2_UNIQUE_ID_MAX);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 UNIQUE_ID 128", b, n, (int)n, &h);
	assert_int_equal(h.unique_id.n, PP2_UNIQUE_ID_MAX);
	bn = tlv(body, PP2_TYPE_UNIQUE_ID, id, PP2_UNIQUE_ID_MAX + 1);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 UNIQUE_ID 129", b, n, BAD, NULL);

	/* Exactly PROXY_HDR_MAX: one NOOP fills it. */
	bn = PROXY_HDR_MAX - 16 - 12;
	memset(body, 0, sizeof(body));
	tlv(body, PP2_TYPE_NOOP, NULL, 0);
	body[1] = (uint8_t)((bn - 3) >> 8);
	body[2] = (uint8_t)(bn - 3);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	assert_int_equal(n, PROXY_HDR_MAX);
	assert_int_equal(parse_g(b, n, &h), PROXY_HDR_MAX);
	for (size_t k = 16; k < n; k += 97)
		assert_int_equal(parse_g(b, k, &h), NEED);
	/* One byte more is refused as soon as the fixed part says so. */
	bn++;
	body[1] = (uint8_t)((bn - 3) >> 8);
	body[2] = (uint8_t)(bn - 3);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	assert_int_equal(parse_g(b, 15, &h), NEED);
	assert_int_equal(parse_g(b, 16, &h), BAD);
	assert_int_equal(parse_g(b, n, &h), BAD);
	/* The largest declared length on the wire. */
	n = v2(b, 0x21, 0x11, addr4, 12, NULL, 0, 0xffff);
	assert_int_equal(parse_g(b, 16, &h), BAD);
}

/* ---- v2 invalid ---- */

static void
test_v2_invalid(void **state)
{
	uint8_t b[512], body[256];
	struct proxy_hdr h;
	size_t n, bn;
	static const uint8_t bad_vc[] = {0x01, 0x11, 0x31, 0xf1, 0x22, 0x2f, 0x02, 0x12};
	static const uint8_t bad_fam[] = {0x01, 0x02, 0x10, 0x12, 0x13, 0x20, 0x22,
					  0x31, 0x32, 0x41, 0xff};
	char name[64];

	(void)state;
	/* Signature: every byte matters, and is judged as soon as it arrives. */
	for (size_t i = 0; i < PROXY_V2_SIG_LEN; i++) {
		n = v2(b, 0x21, 0x11, addr4, 12, NULL, 0, -1);
		b[i] ^= 0x40;
		snprintf(name, sizeof(name), "v2 signature byte %zu", i);
		check_input(name, b, n, BAD, NULL);
		assert_int_equal(parse_g(b, i + 1, &h), BAD);
	}
	/* Version must be 2, command LOCAL or PROXY. */
	for (size_t i = 0; i < sizeof(bad_vc); i++) {
		n = v2(b, bad_vc[i], 0x11, addr4, 12, NULL, 0, -1);
		snprintf(name, sizeof(name), "v2 ver/cmd %#x", bad_vc[i]);
		check_input(name, b, n, BAD, NULL);
		assert_int_equal(parse_g(b, 13, &h), BAD);
	}
	/* Families other than TCP over IPv4/IPv6 (and UNSPEC), for both
	 * commands: UDP, UNIX, unknown. */
	for (size_t i = 0; i < sizeof(bad_fam); i++) {
		for (uint8_t vc = 0x20; vc <= 0x21; vc++) {
			n = v2(b, vc, bad_fam[i], addr6, 36, NULL, 0, -1);
			snprintf(name, sizeof(name), "v2 cmd %#x family %#x", vc, bad_fam[i]);
			check_input(name, b, n, BAD, NULL);
			assert_int_equal(parse_g(b, 14, &h), BAD);
		}
	}
	/* Length shorter than the address block. */
	n = v2(b, 0x21, 0x11, addr4, 12, NULL, 0, 11);
	check_input("v2 TCP4 len 11", b, n, BAD, NULL);
	assert_int_equal(parse_g(b, 16, &h), BAD);
	n = v2(b, 0x21, 0x21, addr6, 36, NULL, 0, 35);
	check_input("v2 TCP6 len 35", b, n, BAD, NULL);
	n = v2(b, 0x21, 0x21, addr6, 12, NULL, 0, 12); /* a TCP4-sized block */
	check_input("v2 TCP6 with 12-byte block", b, n, BAD, NULL);
	n = v2(b, 0x20, 0x11, addr4, 0, NULL, 0, 0); /* LOCAL is not exempt */
	check_input("v2 LOCAL TCP4 len 0", b, n, BAD, NULL);

	/* TLVs must tile the rest exactly. */
	bn = tlv(body, PP2_TYPE_NOOP, "abc", 3);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn - 1, -1); /* value overruns */
	check_input("v2 TLV overrun", b, n, BAD, NULL);
	n = v2(b, 0x21, 0x11, addr4, 12, body, 2, -1); /* half a TLV header */
	check_input("v2 TLV header cut", b, n, BAD, NULL);
	n = v2(b, 0x21, 0x11, addr4, 12, body, 1, -1);
	check_input("v2 one stray byte", b, n, BAD, NULL);
	body[2] = 0xff; /* length 255 in a 6-byte area */
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 TLV len 255", b, n, BAD, NULL);
	/* Declared length cuts the TCP6 block's TLV; the bytes are there. */
	bn = tlv(body, PP2_TYPE_ALPN, "smtp", 4);
	n = v2(b, 0x21, 0x21, addr6, 36, body, bn, 36 + 5);
	check_input("v2 length inside a TLV", b, 16 + 36 + 5, BAD, NULL);

	/* Recognised TLVs: sizes and duplicates. */
	bn = tlv(body, PP2_TYPE_CRC32C, "\0\0\0", 3);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 CRC32C len 3", b, n, BAD, NULL);
	bn = tlv(body, PP2_TYPE_CRC32C, "\0\0\0\0", 4);
	bn += tlv(body + bn, PP2_TYPE_CRC32C, "\0\0\0\0", 4);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	crc_fix(b, n, 16 + 12 + 3);
	check_input("v2 two CRC32C", b, n, BAD, NULL);
	bn = tlv(body, PP2_TYPE_ALPN, "a", 1);
	bn += tlv(body + bn, PP2_TYPE_ALPN, "b", 1);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 two ALPN", b, n, BAD, NULL);
	bn = tlv(body, PP2_TYPE_SSL, "\x01\0\0\0", 4);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 SSL len 4", b, n, BAD, NULL);
	bn = tlv(body, PP2_TYPE_SSL, "\x01\0\0\0\0\x21\0\x09TLS", 11);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 SSL sub-TLV overrun", b, n, BAD, NULL);
	bn = tlv(body, PP2_TYPE_SSL, "\x01\0\0\0\0\x22\0\x01x\x22\0\x01y", 13);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 SSL two CN", b, n, BAD, NULL);
	bn = tlv(body, PP2_TYPE_SSL, "\x01\0\0\0\0", 5);
	bn += tlv(body + bn, PP2_TYPE_SSL, "\x01\0\0\0\0", 5);
	n = v2(b, 0x21, 0x11, addr4, 12, body, bn, -1);
	check_input("v2 two SSL", b, n, BAD, NULL);
}

/* v1 and v2 signatures do not mix. */
static void
test_mixed(void **state)
{
	uint8_t b[64];
	struct proxy_hdr h;

	(void)state;
	assert_int_equal(parse_g("", 0, &h), NEED);
	assert_int_equal(parse_g("P", 1, &h), NEED);
	assert_int_equal(parse_g("\r", 1, &h), NEED);
	assert_int_equal(parse_g("\r\n\r\n\0\r\nQUIT\n", 12, &h), NEED);
	assert_int_equal(parse_g("\r\nPROXY", 7, &h), BAD);
	assert_int_equal(parse_g("\n", 1, &h), BAD);
	assert_int_equal(parse_g("\0", 1, &h), BAD);
	memcpy(b, "PROXY ", 6);
	memcpy(b + 6, sig, sizeof(sig));
	assert_int_equal(parse_g(b, 18, &h), BAD);
}

/* The caller's loop: bytes arrive one at a time (or in odd chunks), the
 * whole carry is re-parsed each time. */
static void
test_rescan(void **state)
{
	static const char v1[] = "PROXY TCP6 2001:db8::1 2001:db8::2 40000 2526\r\nEHLO x\r\n";
	uint8_t b[128];
	struct proxy_hdr h;
	size_t n, len = 0;
	int rc = NEED;

	(void)state;
	for (size_t step = 1; step <= 7; step++) {
		for (len = 0, rc = NEED; rc == NEED && len < sizeof(v1) - 1;) {
			len += step;
			if (len > sizeof(v1) - 1)
				len = sizeof(v1) - 1;
			rc = parse_g(v1, len, &h);
		}
		assert_int_equal(rc, 47);
		assert_true(len < 47 + step);
	}
	n = v2(b, 0x21, 0x21, addr6, 36, NULL, 0, -1);
	memcpy(b + n, "EHLO x\r\n", 8);
	for (len = 1, rc = NEED; rc == NEED; len++)
		rc = parse_g(b, len, &h);
	assert_int_equal(rc, 52);
	assert_int_equal(len - 1, 52);
}

/* ---- trust ---- */

static struct proxy_cidr
cidr(const char *a, unsigned prefix)
{
	struct proxy_cidr c;

	memset(&c, 0, sizeof(c));
	c.prefix = (uint8_t)prefix;
	if (strchr(a, ':') != NULL) {
		c.family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, a, c.addr), 1);
	} else {
		c.family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, a, c.addr), 1);
	}
	return c;
}

static bool
trusted(const struct proxy_trust *t, const char *a)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(a, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, a, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, a, &s4->sin_addr), 1);
	}
	return proxy_trusted(t, (const struct sockaddr *)&ss);
}

static void
test_trusted(void **state)
{
	struct proxy_trust t;
	struct sockaddr_un un;

	(void)state;
	memset(&t, 0, sizeof(t));
	assert_false(trusted(&t, "127.0.0.1")); /* empty: nobody */
	t.net[t.n++] = cidr("127.0.0.0", 8);
	t.net[t.n++] = cidr("::1", 128);
	t.net[t.n++] = cidr("192.168.1.128", 25);
	t.net[t.n++] = cidr("2001:db8::", 32);
	t.net[t.n++] = cidr("10.1.2.3", 32);
	t.net[t.n++] = cidr("fc00::", 7);

	assert_true(trusted(&t, "127.0.0.1"));
	assert_true(trusted(&t, "127.255.255.254"));
	assert_false(trusted(&t, "128.0.0.1"));
	assert_false(trusted(&t, "126.255.255.255"));
	assert_true(trusted(&t, "::1"));
	assert_false(trusted(&t, "::2"));
	assert_false(trusted(&t, "::")); /* unspecified is not loopback */
	assert_true(trusted(&t, "192.168.1.128"));
	assert_true(trusted(&t, "192.168.1.255"));
	assert_false(trusted(&t, "192.168.1.127"));
	assert_true(trusted(&t, "2001:db8:ffff::1"));
	assert_false(trusted(&t, "2001:db9::1"));
	assert_true(trusted(&t, "10.1.2.3"));
	assert_false(trusted(&t, "10.1.2.4"));
	assert_true(trusted(&t, "fd12::1"));
	assert_true(trusted(&t, "fc00::1")); /* /7 covers fc00::/8 too */
	assert_false(trusted(&t, "fe00::1"));
	/* Dual-stack listener: IPv4 clients arrive v4-mapped. */
	assert_true(trusted(&t, "::ffff:127.0.0.1"));
	assert_true(trusted(&t, "::ffff:192.168.1.200"));
	assert_false(trusted(&t, "::ffff:192.168.1.1"));
	/* IPv4 networks do not match IPv6 addresses that merely contain the bits. */
	assert_false(trusted(&t, "7f00::1"));
	/* Neither family. */
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	assert_false(proxy_trusted(&t, (const struct sockaddr *)&un));

	/* Everything. */
	memset(&t, 0, sizeof(t));
	t.net[t.n++] = cidr("0.0.0.0", 0);
	assert_true(trusted(&t, "203.0.113.7"));
	assert_true(trusted(&t, "::ffff:203.0.113.7"));
	assert_false(trusted(&t, "2001:db8::1"));
	t.net[t.n++] = cidr("::", 0);
	assert_true(trusted(&t, "2001:db8::1"));
}

/* ---- formatting and the peer ---- */

static void
test_addr_text(void **state)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	char t[PROXY_ADDR_TEXT_MAX];
	uint16_t port = 1;

	(void)state;
	memset(&ss, 0, sizeof(ss));
	s4->sin_family = AF_INET;
	s4->sin_port = htons(2525);
	inet_pton(AF_INET, "127.0.0.1", &s4->sin_addr);
	assert_int_equal(proxy_addr_text((struct sockaddr *)&ss, t, sizeof(t), &port), 0);
	assert_string_equal(t, "127.0.0.1");
	assert_int_equal(port, 2525);
	/* The hand-made dotted quad against inet_ntop(), every digit count
	 * in every position. */
	static const uint8_t oct[] = {0, 1, 9, 10, 42, 99, 100, 101, 199, 200, 250, 255};
	for (size_t i = 0; i < 4 * sizeof(oct); i++) {
		uint8_t b[4] = {oct[i % sizeof(oct)], oct[(i * 5 + 1) % sizeof(oct)],
				oct[(i * 7 + 2) % sizeof(oct)], oct[(i / 4) % sizeof(oct)]};
		char want[INET_ADDRSTRLEN];

		memcpy(&s4->sin_addr, b, 4);
		inet_ntop(AF_INET, &s4->sin_addr, want, sizeof(want));
		assert_int_equal(proxy_addr_text((struct sockaddr *)&ss, t, sizeof(t), NULL), 0);
		assert_string_equal(t, want);
	}

	memset(&ss, 0, sizeof(ss));
	s6->sin6_family = AF_INET6;
	s6->sin6_port = htons(65535);
	inet_pton(AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &s6->sin6_addr);
	assert_int_equal(proxy_addr_text((struct sockaddr *)&ss, t, sizeof(t), NULL), 0);
	assert_string_equal(t, "IPv6:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	inet_pton(AF_INET6, "::1", &s6->sin6_addr);
	assert_int_equal(proxy_addr_text((struct sockaddr *)&ss, t, sizeof(t), &port), 0);
	assert_string_equal(t, "IPv6:::1");
	assert_int_equal(port, 65535);

	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNIX;
	assert_int_equal(proxy_addr_text((struct sockaddr *)&ss, t, sizeof(t), &port), -1);
	assert_string_equal(t, "unknown");
	assert_int_equal(port, 0);
}

static void
test_peer_apply(void **state)
{
	struct smtp_peer peer, orig;
	struct proxy_hdr h;
	uint8_t b[64];
	size_t n;

	(void)state;
	memset(&orig, 0, sizeof(orig));
	orig.addr.ss_family = AF_INET;
	strcpy(orig.addr_text, "127.0.0.1");
	orig.port = 33333;

	peer = orig;
	check_str("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", 44, &h);
	assert_true(proxy_peer_apply(&h, &peer));
	assert_string_equal(peer.addr_text, "192.0.2.1");
	assert_int_equal(peer.port, 56324);
	assert_int_equal(peer.addr.ss_family, AF_INET);

	peer = orig;
	n = v2(b, 0x21, 0x21, addr6, 36, NULL, 0, -1);
	assert_int_equal(parse_g(b, n, &h), 52);
	assert_true(proxy_peer_apply(&h, &peer));
	assert_string_equal(peer.addr_text, "IPv6:2001:db8::1");
	assert_int_equal(peer.port, 40000);

	/* LOCAL, UNKNOWN, UNSPEC: the real peer stays. */
	peer = orig;
	n = v2(b, 0x20, 0x11, addr4, 12, NULL, 0, -1);
	assert_int_equal(parse_g(b, n, &h), 28);
	assert_false(proxy_peer_apply(&h, &peer));
	assert_memory_equal(&peer, &orig, sizeof(peer));
	check_str("PROXY UNKNOWN\r\n", 15, &h);
	assert_false(proxy_peer_apply(&h, &peer));
	assert_memory_equal(&peer, &orig, sizeof(peer));
	n = v2(b, 0x21, 0x00, NULL, 0, NULL, 0, -1);
	assert_int_equal(parse_g(b, n, &h), 16);
	assert_false(proxy_peer_apply(&h, &peer));
	assert_memory_equal(&peer, &orig, sizeof(peer));
}

static int
setup(void **state)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t room = ((GUARD_ROOM + (size_t)page - 1) / (size_t)page) * (size_t)page;
	uint8_t *map;

	(void)state;
	map = mmap(NULL, room + (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	if (map == MAP_FAILED || mprotect(map + room, (size_t)page, PROT_NONE) != 0)
		return -1;
	guard_page = map + room;
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v1_valid),   cmocka_unit_test(test_v1_invalid),
		cmocka_unit_test(test_v1_no_crlf), cmocka_unit_test(test_v1_two_headers),
		cmocka_unit_test(test_v2_basic),   cmocka_unit_test(test_v2_tlvs),
		cmocka_unit_test(test_v2_edges),   cmocka_unit_test(test_v2_invalid),
		cmocka_unit_test(test_mixed),      cmocka_unit_test(test_rescan),
		cmocka_unit_test(test_trusted),    cmocka_unit_test(test_addr_text),
		cmocka_unit_test(test_peer_apply),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
