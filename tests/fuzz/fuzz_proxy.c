/*
 * fuzz_proxy.c - libFuzzer target for proxy_parse() and proxy_tlv_next()
 * (engine/conn/proxy.c). Owner: the PROXY protocol module.
 *
 * Byte 0 picks how the rest is framed, so that mutations reach past the
 * signatures: 0 raw; 1 after "PROXY "; 2 after the v2 signature; 3 a v2
 * header whose length field is made to match the input (ver/cmd and family
 * from the next two bytes), which drives the TLV code. The header is built
 * in an exact-size heap block so ASan flags any over-read.
 *
 * Invariants: the result is BAD, NEED_MORE or a length within the input
 * and PROXY_HDR_MAX; BAD stays BAD when bytes are appended and NEED_MORE
 * holds for every shorter prefix; an accepted header re-parsed from a copy
 * of exactly its own bytes gives the same result, every proper prefix of it
 * is NEED_MORE, its views lie inside it and its TLV areas tile exactly.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringmx/proxy.h"
#include "ringmx/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t v2sig[PROXY_V2_SIG_LEN] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
						0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static uint8_t *
dup_exact(const uint8_t *p, size_t n)
{
	uint8_t *b = malloc(n ? n : 1);

	assert(b != NULL);
	if (n)
		memcpy(b, p, n);
	return b;
}

static void
view_in(struct proxy_view v, const uint8_t *base, size_t len)
{
	if (v.p == NULL) {
		assert(v.n == 0);
		return;
	}
	assert(v.p >= base && v.p + v.n <= base + len);
}

static void
same_view(struct proxy_view a, const uint8_t *ba, struct proxy_view b, const uint8_t *bb)
{
	assert((a.p == NULL) == (b.p == NULL));
	assert(a.n == b.n);
	if (a.p != NULL)
		assert(a.p - ba == b.p - bb);
}

static void
same_hdr(const struct proxy_hdr *a, const uint8_t *ba, const struct proxy_hdr *b,
	 const uint8_t *bb)
{
	assert(a->version == b->version && a->command == b->command && a->family == b->family);
	assert(memcmp(&a->src, &b->src, sizeof(a->src)) == 0);
	assert(memcmp(&a->dst, &b->dst, sizeof(a->dst)) == 0);
	assert(a->crc32c == b->crc32c && a->ssl == b->ssl);
	assert(a->ssl_client == b->ssl_client && a->ssl_verify == b->ssl_verify);
	same_view(a->tlv, ba, b->tlv, bb);
	same_view(a->alpn, ba, b->alpn, bb);
	same_view(a->authority, ba, b->authority, bb);
	same_view(a->unique_id, ba, b->unique_id, bb);
	same_view(a->netns, ba, b->netns, bb);
	same_view(a->ssl_sub, ba, b->ssl_sub, bb);
	same_view(a->ssl_version, ba, b->ssl_version, bb);
	same_view(a->ssl_cn, ba, b->ssl_cn, bb);
	same_view(a->ssl_cipher, ba, b->ssl_cipher, bb);
	same_view(a->ssl_sig_alg, ba, b->ssl_sig_alg, bb);
	same_view(a->ssl_key_alg, ba, b->ssl_key_alg, bb);
}

static void
tiles(struct proxy_view v)
{
	struct proxy_tlv t;
	size_t off = 0;
	int rc;

	while ((rc = proxy_tlv_next(v.p, v.n, &off, &t)) == 1)
		assert(t.value >= v.p && t.value + t.len <= v.p + v.n);
	assert(rc == 0 && off == v.n);
}

/* An accepted header: check it from a copy of exactly its bytes. */
static void
accepted(const uint8_t *buf, int rc, const struct proxy_hdr *h)
{
	size_t len = (size_t)rc;
	uint8_t *copy = dup_exact(buf, len);
	struct proxy_hdr h2, tmp;
	struct smtp_peer peer;
	char text[PROXY_ADDR_TEXT_MAX];

	assert(h->version == 1 || h->version == 2);
	assert(h->version == 2 || len <= PROXY_V1_MAX);
	assert(proxy_parse(copy, len, &h2) == rc);
	same_hdr(h, buf, &h2, copy);
	/* Every proper prefix is incomplete (all of them for small headers,
	 * a sample for big ones, to keep executions fast). */
	for (size_t k = 0; k < len; k += len <= 256 ? 1 : 1 + len / 64)
		assert(proxy_parse(copy, k, &tmp) == PROXY_NEED_MORE);
	assert(proxy_parse(copy, len - 1, &tmp) == PROXY_NEED_MORE);

	view_in(h2.tlv, copy, len);
	view_in(h2.alpn, copy, len);
	view_in(h2.authority, copy, len);
	view_in(h2.unique_id, copy, len);
	view_in(h2.netns, copy, len);
	view_in(h2.ssl_sub, copy, len);
	view_in(h2.ssl_cn, copy, len);
	if (h2.version == 2)
		tiles(h2.tlv);
	else
		assert(h2.tlv.p == NULL);
	if (h2.ssl)
		tiles(h2.ssl_sub);
	assert(h2.unique_id.n <= PP2_UNIQUE_ID_MAX);
	if (h2.family == PROXY_FAM_TCP4)
		assert(h2.src.ss_family == AF_INET && h2.dst.ss_family == AF_INET);
	else if (h2.family == PROXY_FAM_TCP6)
		assert(h2.src.ss_family == AF_INET6 && h2.dst.ss_family == AF_INET6);
	else
		assert(h2.src.ss_family == AF_UNSPEC && h2.dst.ss_family == AF_UNSPEC);
	(void)proxy_addr_text((const struct sockaddr *)&h2.src, text, sizeof(text), NULL);
	assert(strlen(text) < sizeof(text));
	memset(&peer, 0, sizeof(peer));
	if (proxy_peer_apply(&h2, &peer))
		assert(peer.addr_text[0] != '\0' && h2.command == PROXY_CMD_PROXY);
	free(copy);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_hdr h, tmp;
	uint8_t *buf, *more;
	size_t n = 0, body;
	int rc;

	if (size < 1 || size > 2 * PROXY_HDR_MAX)
		return 0;
	body = size - 1;
	buf = malloc(body + PROXY_V2_FIXED + 8);
	assert(buf != NULL);
	switch (data[0] & 3) {
	case 0:
		break;
	case 1:
		memcpy(buf, "PROXY ", 6);
		n = 6;
		break;
	case 2:
		memcpy(buf, v2sig, sizeof(v2sig));
		n = sizeof(v2sig);
		break;
	case 3:
		if (body < 2 || body - 2 > 0xffff)
			break;
		memcpy(buf, v2sig, sizeof(v2sig));
		buf[12] = data[1];
		buf[13] = data[2];
		buf[14] = (uint8_t)((body - 2) >> 8);
		buf[15] = (uint8_t)(body - 2);
		memcpy(buf + 16, data + 3, body - 2);
		n = 16 + body - 2;
		body = 0;
		break;
	}
	memcpy(buf + n, data + 1, body);
	n += body;
	/* Exact-size copy: the parser must not read past n. */
	more = dup_exact(buf, n);
	rc = proxy_parse(more, n, &h);
	assert(rc == PROXY_BAD || rc == PROXY_NEED_MORE || (rc > 0 && (size_t)rc <= n));
	assert(rc <= PROXY_HDR_MAX);
	if (rc > 0) {
		accepted(more, rc, &h);
	} else if (rc == PROXY_BAD) {
		/* BAD is final: appending bytes never rescues it. */
		buf[n] = data[size - 1];
		assert(proxy_parse(buf, n + 1, &tmp) == PROXY_BAD);
	} else if (n > 0) {
		/* NEED_MORE: every shorter prefix was NEED_MORE too. */
		assert(proxy_parse(more, n - 1, &tmp) == PROXY_NEED_MORE);
	}
	free(more);
	free(buf);
	return 0;
}
