/* qid.c - see qid.h. */
#include "qid.h"

#include <assert.h>
#include <string.h>

static const char alphabet[32] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

void
qid_init(struct qid_gen *g, unsigned worker)
{
	assert(worker <= QID_MAX_WORKER);
	g->last_us = 0;
	g->worker = worker;
}

static void
encode(uint64_t v, char *out, int digits)
{
	for (int i = digits - 1; i >= 0; i--) {
		out[i] = alphabet[v & 31];
		v >>= 5;
	}
}

void
qid_next(struct qid_gen *g, uint64_t now_us, char *out)
{
	uint64_t t = now_us > g->last_us ? now_us : g->last_us + 1;
	g->last_us = t;
	encode(t, out, 11);
	encode(g->worker, out + 11, 2);
	out[QID_LEN] = '\0';
}

static int
decode(const char *s, int digits, uint64_t *v)
{
	uint64_t r = 0;
	for (int i = 0; i < digits; i++) {
		const char *p = s[i] ? memchr(alphabet, s[i], sizeof(alphabet)) : NULL;
		if (p == NULL)
			return -1;
		r = r << 5 | (uint64_t)(p - alphabet);
	}
	*v = r;
	return 0;
}

int
qid_parse(const char *s, uint64_t *time_us, unsigned *worker)
{
	uint64_t t, w;
	if (strlen(s) != QID_LEN || decode(s, 11, &t) < 0 || decode(s + 11, 2, &w) < 0)
		return -1;
	*time_us = t;
	*worker = (unsigned)w;
	return 0;
}
