/*
 * relay_msg.c - the relay's in-memory messages: building one from a
 * durable spool record (its envelope, recipients routed to jobs, the
 * journal's state applied) and the block pool they live in. Objects and
 * ownership: relay.c; shared declarations: relay_internal.h.
 *
 * Ownership rules
 *  - A message is one block: the struct rmsg, its envelope copy (the
 *    addresses point into it), the recipient table, the jobs and every
 *    per-job array (recipient indices, states, the client core's recipient
 *    list). It belongs to its segment's list from rmsg_load() until
 *    msg_destroy(); jobs and the client core only borrow from it.
 *  - Blocks come from per-relay free lists of two sizes, refilled a slab
 *    (RELAY_SLAB_SIZE) at a time and never returned before exit: after the
 *    backlog's high point no message costs an allocation. A message larger
 *    than the big block (many recipients or next hops, a huge envelope) is
 *    a malloc of its own, counted (relay_msg_large).
 *  - The envelope is first copied into the relay's scratch buffer (the
 *    mapped bytes are read only under the SIGBUS guard), parsed and
 *    routed there, and then into the block, whose size it decides.
 *  - Per-recipient reply texts of permanent failures (for the bounce) are
 *    separate allocations: the failure path, not the delivery path.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_QMGR
#include "relay_internal.h"

static const uint32_t pool_size[RELAY_POOL_CLASSES] = {RELAY_MSG_SMALL, RELAY_MSG_BIG};

static size_t
align8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

/* A block of at least n bytes, zeroed; *cls is its class (or
 * RELAY_POOL_CLASSES: malloc'd). */
static void *
pool_get(struct relay *r, size_t n, uint8_t *cls)
{
	unsigned c = 0;
	while (c < RELAY_POOL_CLASSES && n > pool_size[c])
		c++;
	*cls = (uint8_t)c;
	if (c == RELAY_POOL_CLASSES) {
		r->env.stats->relay_msg_large++;
		return relay_xcalloc(1, n);
	}
	struct rpool *p = &r->pool[c];
	if (p->free == NULL) {
		char *slab = relay_xcalloc(1, RELAY_SLAB_SIZE);
		struct rslab *s = relay_xcalloc(1, sizeof(*s));
		s->mem = slab;
		s->next = r->slabs;
		r->slabs = s;
		r->env.stats->relay_msg_slabs++;
		for (size_t off = 0; off + pool_size[c] <= RELAY_SLAB_SIZE; off += pool_size[c]) {
			void **b = (void **)(slab + off);
			*b = p->free;
			p->free = b;
		}
	}
	void **b = p->free;
	p->free = *b;
	memset(b, 0, pool_size[c]);
	return b;
}

static void
pool_put(struct relay *r, void *b, uint8_t cls)
{
	if (cls == RELAY_POOL_CLASSES) {
		free(b);
		return;
	}
	*(void **)b = r->pool[cls].free;
	r->pool[cls].free = b;
}

void
relay_pool_init(struct relay *r)
{
	/* One slab of each size up front: the first messages of a run
	 * allocate nothing. */
	for (uint8_t c = 0; c < RELAY_POOL_CLASSES; c++) {
		uint8_t got;
		void *b = pool_get(r, pool_size[c], &got);
		assert(got == c);
		pool_put(r, b, got);
	}
}

void
relay_pool_fini(struct relay *r)
{
	for (struct rslab *s = r->slabs, *n; s != NULL; s = n) {
		n = s->next;
		free(s->mem);
		free(s);
	}
	r->slabs = NULL;
	free(r->envbuf);
}

void
msg_destroy(struct relay *r, struct rmsg *m)
{
	for (uint32_t i = 0; i < m->njobs; i++) {
		struct rjob *j = &m->jobs[i];
		for (uint32_t k = 0; k < j->n; k++)
			free(j->rtext[k]);
	}
	pool_put(r, m, m->pool_cls);
}

/* What routing keeps per recipient, in the scratch area after the
 * envelope: its next hop and where its address is in the envelope. */
struct rroute {
	struct rhop *hop;
	uint32_t off, len;
};

/* The record's envelope in r->envbuf, with room after it for a struct
 * rroute per recipient (a recipient's TLV is at least its header, so
 * there are at most n / SPOOL_TLV_HDR); grown to the largest seen. */
static int
env_copy(struct relay *r, const uint8_t *src, size_t n)
{
	size_t need = align8(n) + (n / SPOOL_TLV_HDR + 1) * sizeof(struct rroute);
	if (need > r->envbuf_cap) {
		size_t cap = r->envbuf_cap ? r->envbuf_cap : 4096;
		while (cap < need)
			cap *= 2;
		free(r->envbuf);
		r->envbuf = relay_xcalloc(1, cap);
		r->envbuf_cap = cap;
	}
	return relay_map_read(r->envbuf, src, n);
}

/* Build the in-memory message for the record at off, with the journal's
 * state applied (st may be NULL: nothing journaled). Returns NULL if the
 * record is unusable (logged) or already finished. Only the header is
 * checked: every record arrives here CRC-checked already, by the spool that
 * just wrote it or by spool_seg_scan() at recovery (no second CRC pass over
 * every message). */
struct rmsg *
rmsg_load(struct relay *r, struct rseg *s, uint64_t off, const struct journal_msg_state *st)
{
	struct spool_hdr h;
	uint8_t hdr[SPOOL_HDR_SIZE];
	bool ok = off + SPOOL_HDR_SIZE <= s->maplen;
	if (ok && relay_map_read(hdr, s->map + off, sizeof(hdr)) < 0) {
		log_err("relay: w%u/%016" PRIx64 ".seg: the record at offset %" PRIu64
		        " is unreadable (I/O error); left in the spool",
		        s->wdir, s->seq, off);
		return NULL;
	}
	if (ok) {
		spool_hdr_decode(hdr, &h);
		ok = h.magic == SPOOL_REC_MAGIC && h.version == SPOOL_REC_VERSION &&
		     h.rec_len == spool_rec_len(h.env_len, h.msg_len) &&
		     h.rec_len <= s->maplen - off;
	}
	if (!ok) {
		log_err("relay: w%u/%016" PRIx64 ".seg: no valid record at offset %" PRIu64,
		        s->wdir, s->seq, off);
		return NULL;
	}
	const uint8_t *rec = s->map + off;
	if (env_copy(r, rec + SPOOL_HDR_SIZE, h.env_len) < 0) {
		log_err("relay: %s: the envelope at offset %" PRIu64 " of w%u/%016" PRIx64
		        ".seg is unreadable (I/O error); left in the spool",
		        h.qid, off, s->wdir, s->seq);
		return NULL;
	}
	const uint8_t *envs = r->envbuf;
	struct spool_envelope env;
	if (spool_env_parse(envs, h.env_len, &env) < 0 || env.nrcpt == 0) {
		log_err("relay: %s: malformed envelope; left in the spool", h.qid);
		return NULL;
	}
	/* Routing first: it decides how many jobs there are, and so the size
	 * of the block. */
	uint32_t nrcpt = env.nrcpt;
	struct rroute *rt = (struct rroute *)(r->envbuf + align8(h.env_len));
	struct spool_tlv_iter it = {.p = envs, .len = h.env_len};
	unsigned type;
	const uint8_t *v;
	size_t vlen;
	uint32_t k = 0;
	while (spool_tlv_next(&it, &type, &v, &vlen) == 1)
		if (type == SPOOL_TLV_RCPT && k < nrcpt) {
			const char *at = memrchr(v, '@', vlen);
			const char *dom = at != NULL ? at + 1 : "";
			size_t dlen = at != NULL ? vlen - (size_t)(at + 1 - (const char *)v) : 0;
			rt[k++] = (struct rroute){.hop = rhop_for(r, dom, dlen),
			                          .off = (uint32_t)(v - envs),
			                          .len = (uint32_t)vlen};
		}
	uint32_t pending = 0;
	struct rhop *seen[CONFIG_MAX_HOPS + 1];
	uint32_t nseen = 0;
	for (k = 0; k < nrcpt; k++) {
		if (st != NULL && st->done[k] != 0)
			continue;
		pending++;
		bool dup = false;
		for (uint32_t i = 0; i < nseen; i++)
			dup |= seen[i] == rt[k].hop;
		if (!dup && nseen < CONFIG_MAX_HOPS + 1)
			seen[nseen++] = rt[k].hop;
	}
	uint32_t njobs = nseen;
	if (pending == 0 || (st != NULL && st->deleted))
		return NULL;

	/* The block: 8-aligned arrays first, then the 4-byte ones, then
	 * the bytes. Every job's arrays are a slice of one array each. */
	size_t o_rcpt = align8(sizeof(struct rmsg));
	size_t o_jobs = o_rcpt + (size_t)nrcpt * sizeof(struct raddr);
	size_t o_trc = o_jobs + (size_t)njobs * sizeof(struct rjob);
	size_t o_rtext = o_trc + (size_t)pending * sizeof(struct smtpc_rcpt);
	size_t o_ri = o_rtext + (size_t)pending * sizeof(char *);
	size_t o_tk = o_ri + (size_t)pending * sizeof(uint32_t);
	size_t o_done = o_tk + (size_t)pending * sizeof(uint32_t);
	size_t o_rs = o_done + nrcpt;
	size_t o_env = o_rs + pending;
	uint8_t cls;
	uint8_t *blk = pool_get(r, o_env + h.env_len, &cls);
	struct rmsg *m = (struct rmsg *)blk;
	m->pool_cls = cls;
	m->done = blk + o_done;
	m->env = blk + o_env;
	memcpy(m->env, envs, h.env_len);
	m->seg = s;
	m->off = off;
	m->rec_len = h.rec_len;
	memcpy(m->qid, h.qid, sizeof(m->qid));
	m->received_us = h.received_us;
	m->from = (const char *)m->env + ((const uint8_t *)env.from - envs);
	m->from_len = env.from_len;
	m->flags = env.mail_flags;
	m->body = rec + SPOOL_HDR_SIZE + h.env_len;
	m->body_len = h.msg_len;
	m->nrcpt = nrcpt;
	m->rcpt = (struct raddr *)(blk + o_rcpt);
	for (k = 0; k < nrcpt; k++)
		m->rcpt[k] = (struct raddr){.p = (const char *)m->env + rt[k].off, .len = rt[k].len};
	if (st != NULL) {
		memcpy(m->done, st->done, nrcpt);
		m->held = st->held;
	}
	/* Quarantined by a content filter: held from the start, in every run,
	 * until an operator's RELEASE. */
	if (env.hold != NULL && (st == NULL || !st->released)) {
		if (!m->held && st == NULL)
			log_info("%s: held: quarantined by a milter (%.*s); ringmx-spool release %s "
			         "to deliver it",
			         m->qid, (int)(env.hold_len > 200 ? 200 : env.hold_len),
			         (const char *)env.hold, m->qid);
		m->held = true;
	}
	m->jobs = (struct rjob *)(blk + o_jobs);
	m->njobs = m->jobs_left = njobs;
	uint32_t used = 0;
	for (uint32_t i = 0; i < njobs; i++) {
		struct rjob *j = &m->jobs[i];
		j->m = m;
		j->hop = seen[i];
		j->t.kind = T_JOB;
		j->attempts = st != NULL ? st->attempts : 0;
		j->trc = (struct smtpc_rcpt *)(blk + o_trc) + used;
		j->rtext = (char **)(blk + o_rtext) + used;
		j->ri = (uint32_t *)(blk + o_ri) + used;
		j->tk = (uint32_t *)(blk + o_tk) + used;
		j->rs = blk + o_rs + used;
		for (k = 0; k < nrcpt; k++)
			if (m->done[k] == 0 && rt[k].hop == seen[i])
				j->ri[j->n++] = k;
		used += j->n;
	}
	assert(used == pending);
	m->next = s->msgs;
	if (s->msgs != NULL)
		s->msgs->prev = m;
	else
		s->msgs_tail = m;
	s->msgs = m;
	s->pending++;
	r->backlog_msgs++;
	r->backlog_bytes += m->rec_len;
	return m;
}
