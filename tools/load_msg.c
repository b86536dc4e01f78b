/*
 * tools/load_msg.c - message material for ringmx-load: body templates, --from/--to
 * patterns and the FNV-1a checksum carried in X-Ringmx-Load-Sum.
 *
 * Ownership: ringmx-load (issue 4). Everything here runs once at startup on the main
 * thread (load_body_build, load_pattern_parse) or is a pure function called on the hot
 * path without allocating (load_pattern_fmt).
 *
 * Why templates: the issue forbids per-message allocation and per-message body work.
 * One template of --size MAX bytes is built and shared read-only by all threads; a
 * message body is a prefix of it plus a 2-3 byte tail (see struct load_variant), sent
 * straight from the template with an iovec. The per-message unique headers live in
 * per-connection buffers (load_engine.c).
 */
#include "load.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t load_fnv1a64(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* Accepts at most one %d; %% is a literal percent. Anything else after % is refused so
 * a typo such as %s does not silently end up on the wire. */
int load_pattern_parse(struct load_pattern *p, const char *s)
{
	memset(p, 0, sizeof(*p));
	char *dst = p->pre;
	size_t *len = &p->pre_len;
	for (; *s; s++) {
		char ch = *s;
		if (ch == '%') {
			s++;
			if (*s == 'd' && !p->has_num) {
				p->has_num = true;
				dst = p->post;
				len = &p->post_len;
				continue;
			}
			if (*s != '%')
				return -EINVAL;
		}
		if ((unsigned char)ch <= ' ' || ch == '<' || ch == '>' || ch == 0x7f)
			return -EINVAL; /* would break the MAIL/RCPT command line */
		if (*len >= LOAD_PATTERN_MAX)
			return -E2BIG;
		dst[(*len)++] = ch;
	}
	return 0;
}

/* Writes the address for sequence number n into dst, which must hold
 * 2 * LOAD_PATTERN_MAX + 20 bytes. Returns the length (no NUL written). */
size_t load_pattern_fmt(char *dst, const struct load_pattern *p, uint64_t n)
{
	memcpy(dst, p->pre, p->pre_len);
	size_t o = p->pre_len;
	if (p->has_num)
		o += utoa(dst + o, n);
	memcpy(dst + o, p->post, p->post_len);
	return o + p->post_len;
}

/* 78 printable characters + CRLF per line. Lines start with 'L', never '.', and hold
 * no '.' at all, so no dot-stuffing is needed for DATA however the body is cut (see
 * tail below): load_tx.c lends it to the client core as a piece it need not read
 * (smtpc_piece.nostuff). */
static void fill_template(char *t, size_t n)
{
	size_t o = 0;
	for (unsigned line = 0; o < n; line++) {
		char l[80];
		int k = snprintf(l, sizeof(l), "L%07u ringmx-load ", line);
		for (int j = k; j < 78; j++)
			l[j] = (char)('a' + (unsigned)(line + (unsigned)j) % 26u);
		l[78] = '\r';
		l[79] = '\n';
		size_t take = n - o < 80 ? n - o : 80;
		memcpy(t + o, l, take);
		o += take;
	}
}

/* Body of size s = template[0, prefix) + tail, ending in CRLF. If cutting at s-2 would
 * leave a lone CR at the end, cut one byte earlier and add "Z\r\n" instead: no bare CR
 * or LF ever reaches the wire. */
static void variant_init(struct load_variant *v, const char *t, size_t s)
{
	v->size = s;
	v->prefix = s - 2;
	memcpy(v->tail, "\r\n", 3);
	v->tail_len = 2;
	if (v->prefix > 0 && t[v->prefix - 1] == '\r') {
		v->prefix = s - 3;
		memcpy(v->tail, "Z\r\n", 4);
		v->tail_len = 3;
	}
}

int load_body_build(struct load_body *b, uint64_t min, uint64_t max)
{
	memset(b, 0, sizeof(*b));
	if (min < 2)
		min = 2;
	if (max < min)
		max = min;
	b->tmpl_len = (size_t)max;
	b->tmpl = malloc(b->tmpl_len);
	if (!b->tmpl)
		return -ENOMEM;
	fill_template(b->tmpl, b->tmpl_len);
	uint64_t span = max - min;
	b->nv = span + 1 < LOAD_SIZE_VARIANTS ? (unsigned)(span + 1) : LOAD_SIZE_VARIANTS;
	/* Sizes ascend, so prefixes never go backwards: one pass of FNV over the template
	 * yields every variant's checksum. */
	uint64_t h = LOAD_FNV_INIT;
	size_t pos = 0;
	for (unsigned i = 0; i < b->nv; i++) {
		uint64_t s = b->nv == 1 ? min : min + span * i / (b->nv - 1);
		struct load_variant *v = &b->v[i];
		variant_init(v, b->tmpl, (size_t)s);
		h = load_fnv1a64(h, b->tmpl + pos, v->prefix - pos);
		pos = v->prefix;
		uint64_t sum = load_fnv1a64(h, v->tail, v->tail_len);
		snprintf(v->sum_hex, sizeof(v->sum_hex), "%016llx", (unsigned long long)sum);
	}
	return 0;
}

void load_body_free(struct load_body *b)
{
	free(b->tmpl);
	b->tmpl = NULL;
}
