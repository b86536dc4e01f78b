/*
 * proxy.c - PROXY protocol v1/v2 parser, trusted-proxy check and peer
 * formatting; contract and connection integration in include/ringmx/proxy.h,
 * operator docs in docs/proxy.md.
 *
 * Owner: the PROXY protocol module. Pure functions over caller memory: no
 * I/O, no allocation, no global state of its own (the CRC32C comes from
 * spool_format.c, whose lazily built tables are safe to race on).
 *
 * Strictness is the point: the header decides which address every log
 * line, Received: header and per-IP limit uses, so anything HAProxy's
 * specification does not allow is PROXY_BAD, never "repaired". The parser
 * is a single forward scan bounded by what it was given; running out of
 * bytes is NEED_MORE only while the bytes seen so far can still start a
 * valid header.
 */
/* The parser handles untrusted lengths: keep every narrowing explicit. */
#pragma GCC diagnostic warning "-Wconversion"
#pragma GCC diagnostic warning "-Wsign-conversion"

#include "ringmx/proxy.h"

#include <arpa/inet.h>
#include <assert.h>
#include <string.h>

#include "ringmx/smtp.h"
#include "ringmx/spool_format.h"

_Static_assert(PROXY_ADDR_TEXT_MAX <= sizeof(((struct smtp_peer *)0)->addr_text),
	       "smtp_peer.addr_text must hold proxy_addr_text()");
_Static_assert(PROXY_HDR_MAX >= PROXY_V1_MAX && PROXY_HDR_MAX <= PROXY_V2_WIRE_MAX,
	       "PROXY_HDR_MAX must hold any v1 header and fit the v2 length field");
_Static_assert(PROXY_HDR_MAX <= 65535, "proxy_parse() returns the length as int");

/* Longest textual addresses v1 may carry: "255.255.255.255" and
 * "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" (INET*_ADDRSTRLEN - 1). */
#define V1_ADDR4_MAX 15
#define V1_ADDR6_MAX 45
#define V1_PORT_MAX  5 /* "65535" */

/* ---- v1 ---- */

/*
 * A cursor over the header line. lim = min(n, PROXY_V1_MAX): the CRLF must
 * appear before lim, so the scan never looks further.
 */
struct v1 {
	const uint8_t *p;
	size_t n, lim, i;
};

/* The input ended inside the line: more may come, unless PROXY_V1_MAX
 * bytes are already there without a CRLF (spec 2.1: 107 bytes). */
static int
v1_short(const struct v1 *c)
{
	return c->n >= PROXY_V1_MAX ? PROXY_BAD : PROXY_NEED_MORE;
}

static int
v1_lit(struct v1 *c, const char *s)
{
	for (size_t k = 0; s[k] != '\0'; k++, c->i++) {
		if (c->i >= c->lim)
			return v1_short(c);
		if (c->p[c->i] != (uint8_t)s[k])
			return PROXY_BAD;
	}
	return 0;
}

static bool
is_digit(uint8_t ch)
{
	return ch >= '0' && ch <= '9';
}

static bool
v4_char(uint8_t ch)
{
	return is_digit(ch) || ch == '.';
}

static bool
v6_char(uint8_t ch)
{
	return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') || ch == ':' ||
	       ch == '.';
}

/*
 * One field of at most max characters from the class ok, ended by term
 * (consumed). The field is copied NUL-terminated into tok[max + 1].
 */
static int
v1_field(struct v1 *c, bool (*ok)(uint8_t), size_t max, uint8_t term, char *tok)
{
	size_t start = c->i;

	while (c->i < c->lim && ok(c->p[c->i])) {
		if (c->i - start == max)
			return PROXY_BAD;
		c->i++;
	}
	if (c->i >= c->lim)
		return v1_short(c);
	if (c->p[c->i] != term || c->i == start)
		return PROXY_BAD;
	memcpy(tok, c->p + start, c->i - start);
	tok[c->i - start] = '\0';
	c->i++;
	return 0;
}

/* Decimal 0..65535 without sign or leading zeros ("0" itself is fine). */
static int
v1_port(struct v1 *c, uint8_t term, in_port_t *port)
{
	char tok[V1_PORT_MAX + 1];
	unsigned v = 0;
	int rc = v1_field(c, is_digit, V1_PORT_MAX, term, tok);

	if (rc != 0)
		return rc;
	if (tok[0] == '0' && tok[1] != '\0')
		return PROXY_BAD;
	for (const char *d = tok; *d != '\0'; d++)
		v = v * 10 + (unsigned)(*d - '0');
	if (v > 65535)
		return PROXY_BAD;
	*port = htons((uint16_t)v);
	return 0;
}

/* "SRC DST " for family fam, strictly (inet_pton: no leading zeros in
 * IPv4 octets, no zone ids, no IPv4 in a TCP6 line and vice versa). */
static int
v1_addr(struct v1 *c, int fam, void *dst)
{
	char tok[V1_ADDR6_MAX + 1];
	int rc = fam == AF_INET ? v1_field(c, v4_char, V1_ADDR4_MAX, ' ', tok)
				: v1_field(c, v6_char, V1_ADDR6_MAX, ' ', tok);

	if (rc != 0)
		return rc;
	return inet_pton(fam, tok, dst) == 1 ? 0 : PROXY_BAD;
}

/* "UNKNOWN" was read: "\r\n", or " " and anything up to CRLF. The ignored
 * part may hold no CR or LF of its own (a bare LF never ends the line). */
static int
v1_unknown(struct v1 *c)
{
	if (c->i >= c->lim)
		return v1_short(c);
	if (c->p[c->i] == ' ') {
		for (c->i++; c->i < c->lim; c->i++)
			if (c->p[c->i] == '\r' || c->p[c->i] == '\n')
				break;
		if (c->i >= c->lim)
			return v1_short(c);
	}
	return v1_lit(c, "\r\n");
}

static int
v1_parse(const uint8_t *p, size_t n, struct proxy_hdr *h)
{
	struct v1 c = {p, n, n < PROXY_V1_MAX ? n : PROXY_V1_MAX, 0};
	struct sockaddr_in *s4 = (struct sockaddr_in *)&h->src, *d4 = (struct sockaddr_in *)&h->dst;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&h->src,
			    *d6 = (struct sockaddr_in6 *)&h->dst;
	int rc, fam;

	h->version = 1;
	h->command = PROXY_CMD_PROXY;
	if ((rc = v1_lit(&c, "PROXY ")) != 0)
		return rc;
	if (c.i >= c.lim)
		return v1_short(&c);
	if (p[c.i] == 'U') {
		if ((rc = v1_lit(&c, "UNKNOWN")) != 0 || (rc = v1_unknown(&c)) != 0)
			return rc;
		h->family = PROXY_FAM_UNKNOWN;
		return (int)c.i;
	}
	if ((rc = v1_lit(&c, "TCP")) != 0)
		return rc;
	if (c.i >= c.lim)
		return v1_short(&c);
	if (p[c.i] == '4')
		fam = AF_INET;
	else if (p[c.i] == '6')
		fam = AF_INET6;
	else
		return PROXY_BAD;
	c.i++;
	if ((rc = v1_lit(&c, " ")) != 0)
		return rc;
	if (fam == AF_INET) {
		h->family = PROXY_FAM_TCP4;
		s4->sin_family = d4->sin_family = AF_INET;
		if ((rc = v1_addr(&c, fam, &s4->sin_addr)) != 0 ||
		    (rc = v1_addr(&c, fam, &d4->sin_addr)) != 0 ||
		    (rc = v1_port(&c, ' ', &s4->sin_port)) != 0 ||
		    (rc = v1_port(&c, '\r', &d4->sin_port)) != 0)
			return rc;
	} else {
		h->family = PROXY_FAM_TCP6;
		s6->sin6_family = d6->sin6_family = AF_INET6;
		if ((rc = v1_addr(&c, fam, &s6->sin6_addr)) != 0 ||
		    (rc = v1_addr(&c, fam, &d6->sin6_addr)) != 0 ||
		    (rc = v1_port(&c, ' ', &s6->sin6_port)) != 0 ||
		    (rc = v1_port(&c, '\r', &d6->sin6_port)) != 0)
			return rc;
	}
	if ((rc = v1_lit(&c, "\n")) != 0)
		return rc;
	assert(c.i <= PROXY_V1_MAX);
	return (int)c.i;
}

/* ---- v2 ---- */

static uint16_t
be16(const uint8_t *p)
{
	return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int
proxy_tlv_next(const uint8_t *area, size_t len, size_t *off, struct proxy_tlv *tlv)
{
	size_t o = *off;
	uint16_t l;

	if (o == len)
		return 0;
	if (o > len || len - o < 3)
		return PROXY_BAD;
	l = be16(area + o + 1);
	if (len - o - 3 < l)
		return PROXY_BAD;
	tlv->type = area[o];
	tlv->len = l;
	tlv->value = area + o + 3;
	*off = o + 3 + l;
	return 1;
}

/* A recognised TLV may appear once: two ALPNs or two CRCs would leave
 * the meaning to whichever reader looks first. */
static int
view_set(struct proxy_view *v, const struct proxy_tlv *t)
{
	if (v->p != NULL)
		return PROXY_BAD;
	v->p = t->value;
	v->n = t->len;
	return 0;
}

/* PP2_TYPE_SSL: client u8, verify u32, then sub-TLVs tiling the rest. */
static int
v2_ssl(struct proxy_hdr *h, const struct proxy_tlv *t)
{
	struct proxy_tlv s;
	size_t off = 0;
	int rc;

	if (h->ssl || t->len < 5)
		return PROXY_BAD;
	h->ssl = true;
	h->ssl_client = t->value[0];
	h->ssl_verify = be32(t->value + 1);
	h->ssl_sub.p = t->value + 5;
	h->ssl_sub.n = (size_t)t->len - 5;
	while ((rc = proxy_tlv_next(h->ssl_sub.p, h->ssl_sub.n, &off, &s)) == 1) {
		struct proxy_view *v = NULL;

		switch (s.type) {
		case PP2_SUBTYPE_SSL_VERSION: v = &h->ssl_version; break;
		case PP2_SUBTYPE_SSL_CN: v = &h->ssl_cn; break;
		case PP2_SUBTYPE_SSL_CIPHER: v = &h->ssl_cipher; break;
		case PP2_SUBTYPE_SSL_SIG_ALG: v = &h->ssl_sig_alg; break;
		case PP2_SUBTYPE_SSL_KEY_ALG: v = &h->ssl_key_alg; break;
		default: break; /* unknown sub-TLVs are skipped */
		}
		if (v != NULL && view_set(v, &s) != 0)
			return PROXY_BAD;
	}
	return rc;
}

/* Spec 2.2.3: CRC32C over the whole header with the checksum's own four
 * bytes taken as zero, stored big-endian. */
static bool
v2_crc_ok(const uint8_t *p, size_t total, const struct proxy_tlv *t)
{
	static const uint8_t zero[4];
	size_t vo = (size_t)(t->value - p);
	uint32_t crc;

	assert(t->len == 4 && vo + 4 <= total);
	crc = spool_crc32c_update(~0u, p, vo);
	crc = spool_crc32c_update(crc, zero, sizeof(zero));
	crc = spool_crc32c_update(crc, p + vo + 4, total - vo - 4);
	return ~crc == be32(t->value);
}

static int
v2_tlvs(const uint8_t *p, size_t total, struct proxy_hdr *h)
{
	struct proxy_tlv t;
	size_t off = 0;
	bool crc_seen = false;
	int rc;

	while ((rc = proxy_tlv_next(h->tlv.p, h->tlv.n, &off, &t)) == 1) {
		switch (t.type) {
		case PP2_TYPE_ALPN: rc = view_set(&h->alpn, &t); break;
		case PP2_TYPE_AUTHORITY: rc = view_set(&h->authority, &t); break;
		case PP2_TYPE_NETNS: rc = view_set(&h->netns, &t); break;
		case PP2_TYPE_UNIQUE_ID:
			rc = t.len > PP2_UNIQUE_ID_MAX ? PROXY_BAD : view_set(&h->unique_id, &t);
			break;
		case PP2_TYPE_CRC32C:
			rc = crc_seen || t.len != 4 || !v2_crc_ok(p, total, &t) ? PROXY_BAD : 0;
			crc_seen = true;
			break;
		case PP2_TYPE_SSL: rc = v2_ssl(h, &t); break;
		default: rc = 0; break; /* NOOP and unknown types are skipped */
		}
		if (rc != 0)
			return PROXY_BAD;
	}
	h->crc32c = crc_seen;
	return rc; /* 0: the TLVs tile the area exactly */
}

static int
v2_parse(const uint8_t *p, size_t n, struct proxy_hdr *h)
{
	size_t total, alen;
	uint16_t len;

	/* Each byte of the fixed part is judged as soon as it arrives, so a
	 * non-header is refused without waiting for 16 bytes. */
	if (memcmp(p, PROXY_V2_SIG, n < PROXY_V2_SIG_LEN ? n : PROXY_V2_SIG_LEN) != 0)
		return PROXY_BAD;
	if (n <= 12)
		return PROXY_NEED_MORE;
	if ((p[12] & 0xf0) != 0x20 || (p[12] & 0x0f) > 1)
		return PROXY_BAD; /* version 2; command LOCAL or PROXY */
	if (n <= 13)
		return PROXY_NEED_MORE;
	switch (p[13]) {
	case 0x00: alen = 0; h->family = PROXY_FAM_UNSPEC; break;
	case 0x11: alen = PROXY_V2_ADDR_TCP4; h->family = PROXY_FAM_TCP4; break;
	case 0x21: alen = PROXY_V2_ADDR_TCP6; h->family = PROXY_FAM_TCP6; break;
	default: return PROXY_BAD; /* UDP, UNIX, unknown: not for SMTP */
	}
	if (n < PROXY_V2_FIXED)
		return PROXY_NEED_MORE;
	len = be16(p + 14);
	total = PROXY_V2_FIXED + (size_t)len;
	if (total > PROXY_HDR_MAX || len < alen)
		return PROXY_BAD;
	if (n < total)
		return PROXY_NEED_MORE;

	h->version = 2;
	h->command = (p[12] & 0x0f) == 1 ? PROXY_CMD_PROXY : PROXY_CMD_LOCAL;
	if (h->family == PROXY_FAM_TCP4) {
		struct sockaddr_in *s = (struct sockaddr_in *)&h->src, *d = (struct sockaddr_in *)&h->dst;

		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, p + 16, 4);
		memcpy(&d->sin_addr, p + 20, 4);
		memcpy(&s->sin_port, p + 24, 2); /* network order on the wire and in sockaddr */
		memcpy(&d->sin_port, p + 26, 2);
	} else if (h->family == PROXY_FAM_TCP6) {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&h->src,
				    *d = (struct sockaddr_in6 *)&h->dst;

		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, p + 16, 16);
		memcpy(&d->sin6_addr, p + 32, 16);
		memcpy(&s->sin6_port, p + 48, 2);
		memcpy(&d->sin6_port, p + 50, 2);
	}
	h->tlv.p = p + PROXY_V2_FIXED + alen;
	h->tlv.n = len - alen;
	if (v2_tlvs(p, total, h) != 0)
		return PROXY_BAD;
	return (int)total;
}

int
proxy_parse(const uint8_t *p, size_t n, struct proxy_hdr *out)
{
	struct proxy_hdr h;
	int rc;

	assert(p != NULL || n == 0);
	assert(out != NULL);
	if (n == 0)
		return PROXY_NEED_MORE;
	/* Parse into a local so that out is untouched unless we succeed. */
	memset(&h, 0, sizeof(h));
	if (p[0] == 'P')
		rc = v1_parse(p, n, &h);
	else if (p[0] == '\r')
		rc = v2_parse(p, n, &h);
	else
		rc = PROXY_BAD; /* neither signature: not a PROXY header */
	assert(rc == PROXY_BAD || rc == PROXY_NEED_MORE || (rc > 0 && (size_t)rc <= n));
	assert(rc <= PROXY_HDR_MAX);
	if (rc > 0)
		*out = h;
	return rc;
}

/* ---- trust ---- */

static bool
cidr_match(const struct proxy_cidr *c, const uint8_t *a)
{
	unsigned full = c->prefix / 8u, bits = c->prefix % 8u;

	if (memcmp(c->addr, a, full) != 0)
		return false;
	if (bits == 0)
		return true;
	return ((c->addr[full] ^ a[full]) & (uint8_t)(0xffu << (8u - bits))) == 0;
}

bool
proxy_trusted(const struct proxy_trust *t, const struct sockaddr *peer)
{
	uint8_t a[16];
	sa_family_t fam;

	assert(t != NULL && peer != NULL);
	if (peer->sa_family == AF_INET) {
		memcpy(a, &((const struct sockaddr_in *)(const void *)peer)->sin_addr, 4);
		fam = AF_INET;
	} else if (peer->sa_family == AF_INET6) {
		const struct in6_addr *x = &((const struct sockaddr_in6 *)(const void *)peer)->sin6_addr;

		/* A dual-stack [::] listener shows IPv4 clients as ::ffff:a.b.c.d;
		 * operators write 127.0.0.0/8 for them. */
		if (IN6_IS_ADDR_V4MAPPED(x)) {
			memcpy(a, x->s6_addr + 12, 4);
			fam = AF_INET;
		} else {
			memcpy(a, x->s6_addr, 16);
			fam = AF_INET6;
		}
	} else {
		return false;
	}
	assert(t->n <= PROXY_TRUST_MAX);
	for (size_t i = 0; i < t->n; i++)
		if (t->net[i].family == fam && cidr_match(&t->net[i], a))
			return true;
	return false;
}

/* ---- formatting ---- */

/* The dotted quad of a, NUL-terminated, in 16 bytes. Not inet_ntop():
 * glibc formats it through sprintf, which made it the most expensive step
 * of setting up a connection (about 1,700 instructions against 60). */
static void
ipv4_text(const struct in_addr *a, char *text)
{
	const uint8_t *b = (const uint8_t *)&a->s_addr; /* network order */
	size_t n = 0;

	for (size_t i = 0; i < 4; i++) {
		unsigned v = b[i];

		if (v >= 100) {
			text[n++] = (char)('0' + v / 100);
			v %= 100;
			text[n++] = (char)('0' + v / 10);
			v %= 10;
		} else if (v >= 10) {
			text[n++] = (char)('0' + v / 10);
			v %= 10;
		}
		text[n++] = (char)('0' + v);
		text[n++] = i < 3 ? '.' : '\0';
	}
}

int
proxy_addr_text(const struct sockaddr *sa, char *text, size_t cap, uint16_t *port)
{
	uint16_t pt = 0;
	int rc = 0;

	assert(sa != NULL && text != NULL && cap >= PROXY_ADDR_TEXT_MAX);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;

		ipv4_text(&s4->sin_addr, text);
		pt = ntohs(s4->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;

		/* RFC 5321 4.1.3 IPv6 literal body, the form conn.c's peer_fill()
		 * writes for Received: and logs. */
		memcpy(text, "IPv6:", 5);
		inet_ntop(AF_INET6, &s6->sin6_addr, text + 5, (socklen_t)(cap - 5));
		pt = ntohs(s6->sin6_port);
	} else {
		memcpy(text, "unknown", sizeof("unknown"));
		rc = -1;
	}
	if (port != NULL)
		*port = pt;
	return rc;
}

bool
proxy_peer_apply(const struct proxy_hdr *hdr, struct smtp_peer *peer)
{
	assert(hdr != NULL && peer != NULL);
	if (hdr->command != PROXY_CMD_PROXY ||
	    (hdr->family != PROXY_FAM_TCP4 && hdr->family != PROXY_FAM_TCP6))
		return false;
	memset(peer, 0, sizeof(*peer));
	peer->addr = hdr->src;
	proxy_addr_text((const struct sockaddr *)&peer->addr, peer->addr_text,
			sizeof(peer->addr_text), &peer->port);
	return true;
}
