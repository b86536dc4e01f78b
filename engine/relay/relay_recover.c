/*
 * relay_recover.c - the relay at start-up: what the spool holds (every
 * segment of this worker, and of workers that no longer exist), read with
 * pread and matched with its journal, becomes the queue. Runs before the
 * loop starts, so its reads may block. Objects and ownership: relay.c;
 * shared declarations: relay_internal.h.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_QMGR
#include "relay_internal.h"

/* ---- start-up: what the spool holds ---- */

struct scan_rec {
	uint64_t off;
	struct journal_msg_state st;
};

struct scan_ctx {
	struct scan_rec *v;
	size_t n, cap;
	uint64_t maplen;
	const uint8_t *map;
	uint64_t unusable; /* valid records whose envelope cannot be parsed */
};

static int
scan_rec_cb(void *arg, uint64_t off, const struct spool_hdr *h, const uint8_t *rec)
{
	struct scan_ctx *sc = arg;
	struct spool_envelope env;
	if (spool_env_parse(rec + SPOOL_HDR_SIZE, h->env_len, &env) < 0) {
		log_err("relay: %s: malformed envelope at offset %" PRIu64 "; left in the spool",
		        h->qid, off);
		sc->unusable++;
		return 0;
	}
	if (sc->n == sc->cap) {
		sc->cap = sc->cap ? sc->cap * 2 : 256;
		sc->v = realloc(sc->v, sc->cap * sizeof(*sc->v));
		if (sc->v == NULL)
			panic("relay: out of memory");
	}
	struct scan_rec *sr = &sc->v[sc->n++];
	memset(sr, 0, sizeof(*sr));
	sr->off = off;
	sr->st.nrcpt = env.nrcpt;
	sr->st.done = relay_xcalloc(env.nrcpt ? env.nrcpt : 1, 1);
	return 0;
}

static int
scan_jnl_cb(void *arg, size_t off, const struct journal_rec *jr)
{
	struct scan_ctx *sc = arg;
	(void)off;
	size_t lo = 0, hi = sc->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (sc->v[mid].off < jr->rec_off)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < sc->n && sc->v[lo].off == jr->rec_off)
		journal_state_apply(&sc->v[lo].st, jr);
	return 0;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Read one segment and its journal; queue what is not finished. */
static void
recover_seg(struct relay *r, unsigned wdir, uint64_t seq, uint64_t *msgs, uint64_t *held)
{
	struct rseg *s = rseg_map(r, wdir, seq);
	if (s == NULL)
		return;
	/* Not closed until every record is loaded: a message that finishes
	 * at once (no route, null sender) must not let the segment go while
	 * its other records are still being read. */
	struct scan_ctx sc = {.map = s->map, .maplen = s->maplen};
	struct spool_scan res;
	/* Scanned from a copy read with pread (recovery runs before the event
	 * loop): a bad sector is then damage for its bytes, not a SIGBUS. The
	 * messages are then read from the mapping, under relay_map_guard. */
	char spath[CONFIG_PATH_MAX + 64];
	rseg_path(r, s, "seg", spath, sizeof(spath));
	uint64_t bad = 0, bad_off = 0;
	uint8_t *copy = NULL;
	int sfd = open(spath, O_RDONLY | O_CLOEXEC);
	if (sfd >= 0) {
		copy = spool_read_file(sfd, s->maplen, &bad, &bad_off);
		close(sfd);
	}
	if (copy == NULL) {
		log_err("relay: reading %s: %s; left for the next start", spath, strerror(errno));
		s->keep = true;
		s->closed = true;
		return;
	}
	spool_seg_scan(copy, s->maplen, scan_rec_cb, NULL, &sc, &res);
	free(copy);
	if (bad > 0) {
		log_err("relay: %s: %" PRIu64 " bytes unreadable (I/O error), the first at offset "
		        "%" PRIu64 "; the segment is kept",
		        spath, bad, bad_off);
		s->keep = true;
	}
	/* Never deleted while any of its bytes was not read as a record:
	 * a damaged range may hold acknowledged mail only a person can
	 * recover (the spool set its bytes aside and logged it), and a
	 * record that cannot be loaded is still mail. The records around
	 * the damage are delivered as usual. */
	if (res.damaged > 0 || res.end != SPOOL_SCAN_CLEAN || sc.unusable > 0) {
		s->keep = true;
		log_err("relay: w%u/%016" PRIx64 ".seg: %" PRIu64 " damaged range%s (%" PRIu64
		        " bytes)%s%s, %" PRIu64 " unusable records: the segment is kept, never "
		        "removed by ringmxd (see ringmx-spool verify); its %zu other records are "
		        "delivered",
		        wdir, seq, res.damaged, res.damaged == 1 ? "" : "s", res.damaged_bytes,
		        res.end == SPOOL_SCAN_TORN ? ", an incomplete last record" : "",
		        res.end == SPOOL_SCAN_DAMAGED ? " reaching the end" : "", sc.unusable,
		        sc.n);
	}

	char path[CONFIG_PATH_MAX + 64];
	rseg_path(r, s, "jnl", path, sizeof(path));
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		struct stat st;
		if (fstat(fd, &st) == 0 && st.st_size > 0) {
			size_t len = (size_t)st.st_size;
			uint8_t *buf = malloc(len);
			ssize_t got = buf != NULL ? pread(fd, buf, len, 0) : -1;
			if (got > 0) {
				size_t end = journal_scan(buf, (size_t)got, scan_jnl_cb, &sc);
				s->jpos = end;
				if (end < (size_t)got) {
					log_warn("relay: %s: torn tail at %zu (a crash while "
					         "appending); "
					         "truncated",
					         path, end);
					if (ftruncate(fd, (off_t)end) < 0)
						log_err("relay: truncate %s: %s", path,
						        strerror(errno));
				}
			}
			free(buf);
		}
		close(fd);
	}
	for (size_t i = 0; i < sc.n; i++) {
		struct scan_rec *sr = &sc.v[i];
		if (!journal_state_finished(&sr->st)) {
			struct rmsg *m = rmsg_load(r, s, sr->off, &sr->st);
			if (m != NULL) {
				(*msgs)++;
				if (m->held)
					(*held)++;
				rmsg_start(r, m, sr->st.next_us);
			} else {
				s->keep = true; /* unfinished and unusable (logged) */
			}
		}
		free(sr->st.done);
	}
	free(sc.v);
	s->closed = true;
	rseg_maybe_delete(r, s);
}

static void
recover_dir(struct relay *r, unsigned wdir, bool own, uint64_t *msgs, uint64_t *held,
            uint64_t *segs)
{
	char dir[CONFIG_PATH_MAX + 16];
	snprintf(dir, sizeof(dir), "%s/w%u", r->dir, wdir);
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	uint64_t *seqs = NULL, *jseqs = NULL;
	size_t n = 0, cap = 0, nj = 0, jcap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t seq;
		if (spool_seg_name_parse(de->d_name, &seq) == 0) {
			if (own && seq >= r->env.first_seq)
				continue; /* the spool's, in use */
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				seqs = realloc(seqs, cap * sizeof(*seqs));
				if (seqs == NULL)
					panic("relay: out of memory");
			}
			seqs[n++] = seq;
		} else if (journal_name_parse(de->d_name, &seq) == 0) {
			if (nj == jcap) {
				jcap = jcap ? jcap * 2 : 64;
				jseqs = realloc(jseqs, jcap * sizeof(*jseqs));
				if (jseqs == NULL)
					panic("relay: out of memory");
			}
			jseqs[nj++] = seq;
		}
	}
	closedir(d);
	if (n > 1)
		qsort(seqs, n, sizeof(*seqs), cmp_u64);
	/* A journal whose segment is gone: the segment was deleted and the
	 * crash came before its journal went. */
	for (size_t i = 0; i < nj; i++) {
		if ((n > 0 && bsearch(&jseqs[i], seqs, n, sizeof(*seqs), cmp_u64) != NULL) ||
		    (own && jseqs[i] >= r->env.first_seq))
			continue;
		char path[CONFIG_PATH_MAX + 64];
		snprintf(path, sizeof(path), "%s/%016" PRIx64 ".jnl", dir, jseqs[i]);
		if (unlink(path) == 0)
			log_info(
			    "relay: removed %s (its segment was already delivered and removed)",
			    path);
	}
	for (size_t i = 0; i < n; i++)
		recover_seg(r, wdir, seqs[i], msgs, held);
	*segs += n;
	free(seqs);
	free(jseqs);
}

int
relay_open(struct relay **out, const struct config *cfg, const struct relay_env *env, char *err,
           size_t errlen)
{
	struct relay *r = relay_xcalloc(1, sizeof(*r));
	r->env = *env;
	r->cfg = cfg;
	r->now = 1;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	r->now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	r->wheel = relay_xcalloc(1, sizeof(*r->wheel));
	timer_wheel_init(r->wheel, r->now);
	if (snprintf(r->dir, sizeof(r->dir), "%s", cfg->spool_dir) >= (int)sizeof(r->dir)) {
		snprintf(err, errlen, "relay: spool_dir too long");
		free(r->wheel);
		free(r);
		return -ENAMETOOLONG;
	}
	rhop_sync(r);
	r->tlsctx = relay_tls_ctx_new(&cfg->relay, err, errlen);
	if (r->tlsctx == NULL && err[0] != '\0') {
		free(r->wheel);
		free(r);
		return -EINVAL;
	}
	r->tls_mode = cfg->relay.tls;
	snprintf(r->tls_ca, sizeof(r->tls_ca), "%s", cfg->relay.tls_ca_file);
	relay_map_guard_install();
	r->hits = relay_xcalloc(RELAY_CMD_HITS_MAX, sizeof(*r->hits));
	relay_pool_init(r);
	rdir_open(r, env->worker);

	uint64_t msgs = 0, held = 0, segs = 0;
	recover_dir(r, env->worker, true, &msgs, &held, &segs);
	/* Directories of workers that no longer exist (workers was lowered):
	 * worker i adopts w<M> for every M >= workers with M % workers == i. */
	DIR *d = opendir(r->dir);
	if (d != NULL) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			char *end;
			if (de->d_name[0] != 'w' || de->d_name[1] < '0' || de->d_name[1] > '9')
				continue;
			unsigned long m = strtoul(de->d_name + 1, &end, 10);
			if (*end != '\0' || m < env->nworkers || m % env->nworkers != env->worker)
				continue;
			recover_dir(r, (unsigned)m, false, &msgs, &held, &segs);
		}
		closedir(d);
	}
	if (msgs > 0 || segs > 0)
		log_notice("relay: %" PRIu64 " messages (%" PRIu64 " bytes) to deliver from %" PRIu64
		         " segments, %" PRIu64 " on hold",
		         msgs, r->backlog_bytes, segs, held);
	*out = r;
	return 0;
}

void
relay_set_conf(struct relay *r, const struct config *cfg)
{
	r->cfg = cfg;
	rhop_sync(r);
	/* Jobs queued for a next hop that is gone are routed again now (the
	 * gone hop opens no connection); waiting ones are when their timer
	 * fires, active ones when their attempt ends. */
	for (struct rhop *h = r->hops; h != NULL; h = h->next) {
		while (h->gone && h->qhead != NULL) {
			struct rjob *j = h->qhead;
			rhop_dequeue(j);
			rhop_enqueue(r, j);
		}
		if (h->gone && h->phead != NULL)
			probe_reroute(r, h); /* probes too: sessions wait on them */
	}
	/* A new client context when relay_tls or the CA file changed (or on
	 * every reload for verify: the CA bundle may have been replaced).
	 * Sessions in progress keep the old one (wolfSSL counts references). */
	if (cfg->relay.tls != r->tls_mode || cfg->relay.tls == RELAY_TLS_VERIFY ||
	    strcmp(cfg->relay.tls_ca_file, r->tls_ca) != 0) {
		char err[CONFIG_ERR_MAX];
		struct relay_tls_ctx *n = relay_tls_ctx_new(&cfg->relay, err, sizeof(err));
		if (n == NULL && err[0] != '\0') {
			log_err("relay: %s; keeping the previous TLS settings", err);
			return;
		}
		relay_tls_ctx_free(r->tlsctx);
		r->tlsctx = n;
		r->tls_mode = cfg->relay.tls;
		snprintf(r->tls_ca, sizeof(r->tls_ca), "%s", cfg->relay.tls_ca_file);
	}
}
