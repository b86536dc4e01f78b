/*
 * tools/load_engine.c - one worker of ringmx-load: an io_uring ring driving many SMTP
 * client connections (the connections are in load_conn.c, the messages in
 * load_tx.c; what they share in load_internal.h).
 *
 * Ownership: ringmx-load (issue 4). Each worker thread owns one ring, one provided
 * buffer ring and a fixed array of connections, all allocated in load_thread_main()
 * before the first connect; the hot path never allocates.
 *
 * Loop (liburing examples/proxy.c __event_loop): housekeeping (timeouts, reconnect
 * back-off, --rate dispatch) -> flush every dirty connection (at most ONE send per
 * connection per loop, built from whatever replies arrived in the last batch) -> re-arm
 * stopped receives -> io_uring_submit_and_wait_timeout -> handle the CQE batch ->
 * return provided buffers with one advance.
 *
 * Receive: multishot recv with a provided buffer ring, registered by hand because
 * liburing 2.3 has no io_uring_setup_buf_ring (pattern of examples/io_uring-udp.c at
 * tag liburing-2.3). Why not a plain recv per connection: a client with N connections
 * would prepare and submit one recv SQE per reply batch per connection, and keep N
 * receive buffers pinned; multishot arms once per connection lifetime, and since every
 * buffer is parsed and handed back within the CQE that delivered it, the pool only has
 * to cover the replies of one batch (2 buffers per connection is generous). ENOBUFS is
 * flow control: the connection goes on a re-arm list (liburing#1275).
 */
#include "load_internal.h"

#include <errno.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

uint64_t load_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

void die_oom(void)
{
	fprintf(stderr, "ringmx-load: out of memory\n");
	abort();
}

/* ---- SQEs ---- */

/* When the SQ is full, submit what is queued and retry (TigerBeetle enqueue). */
struct io_uring_sqe *eng_sqe(struct eng *e)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
	if (!sqe) {
		io_uring_submit(&e->ring);
		sqe = io_uring_get_sqe(&e->ring);
		if (!sqe) {
			fprintf(stderr, "ringmx-load: no SQE after submit\n");
			abort();
		}
	}
	return sqe;
}

/* ---- lists: fixed arrays of n pointers, a flag on the conn prevents duplicates ---- */

void dirty_push(struct eng *e, struct conn *c)
{
	if (!c->dirty) {
		c->dirty = true;
		e->dirty[e->ndirty++] = c;
	}
}

void rearm_push(struct eng *e, struct conn *c)
{
	if (!c->rearm) {
		c->rearm = true;
		e->rearm[e->nrearm++] = c;
	}
}

/* c->waiting: the connection waits for a --rate slot; c->idle: it is in the list. A
 * connection closed while waiting leaves a stale entry that is skipped on pop, and the
 * membership flag keeps the list within n entries. */
void idle_push(struct eng *e, struct conn *c)
{
	c->waiting = true;
	if (!c->idle) {
		c->idle = true;
		e->idle[e->nidle++] = c;
	}
}

/* ---- budget ---- */

bool budget_take(struct eng *e)
{
	if (e->stopping)
		return false;
	if (e->budget == UINT64_MAX)
		return true;
	if (e->budget == 0)
		return false;
	e->budget--;
	return true;
}

void budget_return(struct eng *e, struct conn *c)
{
	if (c->reserved && e->budget != UINT64_MAX)
		e->budget++;
	c->reserved = false;
}

/* ---- CQE handlers ---- */

void buf_recycle(struct eng *e, unsigned bid)
{
	io_uring_buf_ring_add(e->br, e->bufs + (size_t)bid * RECV_BUF_SIZE, RECV_BUF_SIZE,
	                      (unsigned short)bid, io_uring_buf_ring_mask(e->br_entries),
	                      (int)e->br_pending++);
}

static void eng_prefetch(struct eng *e, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	enum op op = (enum op)(ud >> 56);
	uint32_t idx = (uint32_t)ud;
	if (idx >= e->n || (op != OP_RECV && op != OP_SEND && op != OP_CONNECT))
		return;
	/* Replies run the client core; a send or a connect touches less. */
	conn_prefetch(&e->conns[idx], op == OP_RECV);
	if (cqe->flags & IORING_CQE_F_BUFFER)
		__builtin_prefetch(e->bufs + (size_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT) *
		                                 RECV_BUF_SIZE);
}

static void eng_cqe(struct eng *e, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	enum op op = (enum op)(ud >> 56);
	uint32_t gen = (uint32_t)(ud >> 32) & 0xffffffu;
	uint32_t idx = (uint32_t)ud;
	if (op == OP_CANCEL || op == OP_CLOSE)
		return; /* nothing waits on these; close errors on a dead socket are moot */
	struct conn *c = &e->conns[idx];
	if ((c->gen & 0xffffffu) != gen) {
		e->t->st.stale_cqes++;
		if (cqe->flags & IORING_CQE_F_BUFFER)
			buf_recycle(e, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		return;
	}
	switch (op) {
	case OP_CONNECT:
		c->connecting = false;
		conn_on_connect(e, c, cqe->res);
		break;
	case OP_RECV:
		conn_on_recv(e, c, cqe);
		break;
	case OP_SEND:
		conn_on_send(e, c, cqe->res);
		break;
	default:
		break;
	}
	conn_finalize(e, c);
}

/* ---- housekeeping ---- */

static void eng_housekeeping(struct eng *e)
{
	const struct load_opts *o = e->o;
	if (!e->stopping && (__atomic_load_n(&load_run.stop, __ATOMIC_RELAXED) ||
	                     (load_run.deadline_ns && e->now >= load_run.deadline_ns))) {
		e->stopping = true;
		e->stop_ns = e->now;
	}
	bool drain_over = e->stopping && e->now > e->stop_ns + (uint64_t)(o->timeout * (double)NS);
	if (e->now >= e->next_tick || drain_over) {
		e->next_tick = e->now + TICK_NS;
		for (unsigned i = 0; i < e->n; i++) {
			struct conn *c = &e->conns[i];
			if ((c->phase == P_OPEN || c->phase == P_CONNECTING) && c->deadline &&
			    e->now >= c->deadline)
				conn_close(e, c, WHY_TIMEOUT);
			else if (drain_over && (c->phase == P_OPEN || c->phase == P_CONNECTING))
				conn_close(e, c, conn_waits(c) ? WHY_TIMEOUT : WHY_OK);
			else if (c->phase == P_FREE && e->now >= c->backoff_until) {
				if (e->stopping)
					conn_retire(e, c);
				else
					conn_connect(e, c);
			}
		}
	}
	/* Idle connections: start due messages under --rate; QUIT once stopping. */
	while (e->nidle) {
		struct conn *c = e->idle[e->nidle - 1];
		if (!c->waiting || c->phase != P_OPEN) {
			e->nidle--;
			c->idle = false;
			c->waiting = false;
			continue;
		}
		bool budget_left = c->reserved || e->budget > 0;
		if (!e->stopping && budget_left && e->rate_next > e->now)
			break; /* nothing due yet */
		e->nidle--;
		c->idle = false;
		c->waiting = false;
		dirty_push(e, c); /* its flush decides: start, or QUIT (load_tx.c) */
	}
}

static void eng_publish(struct eng *e)
{
	struct load_thread *t = e->t;
	__atomic_store_n(&t->pub_accepted, t->st.accepted, __ATOMIC_RELAXED);
	__atomic_store_n(&t->pub_done, t->st.accepted + t->st.rejected + t->st.failed, __ATOMIC_RELAXED);
	__atomic_store_n(&t->pub_inflight, e->inflight, __ATOMIC_RELAXED);
	__atomic_store_n(&t->pub_errors, t->st.rejected + t->st.failed + t->st.connect_errors +
	                 t->st.timeouts + t->st.session_errors, __ATOMIC_RELAXED);
}

static uint64_t eng_wait_ns(struct eng *e)
{
	uint64_t until = e->next_tick;
	if (e->rate_step && e->nidle && e->rate_next < until)
		until = e->rate_next;
	return until > e->now ? until - e->now : 0;
}

/* ---- setup ---- */

static unsigned pow2_at_least(unsigned v)
{
	unsigned p = 1;
	while (p < v)
		p <<= 1;
	return p;
}

static int eng_ring_init(struct eng *e)
{
	unsigned n = e->n ? e->n : 1;
	unsigned sq = pow2_at_least(n * 2 < 256 ? 256 : (n * 2 > 4096 ? 4096 : n * 2));
	unsigned cq = pow2_at_least(n * 8 < 4096 ? 4096 : n * 8);
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	/* SINGLE_ISSUER (6.0) + DEFER_TASKRUN (6.1): completions run only when this thread
	 * waits, in one batch; CQSIZE: multishot recv must never overflow the CQ; CLAMP
	 * caps our sizes at the kernel limits. */
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
	          IORING_SETUP_CLAMP;
	p.cq_entries = cq;
	int ret = io_uring_queue_init_params(sq, &e->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
		p.cq_entries = cq;
		ret = io_uring_queue_init_params(sq, &e->ring, &p);
	}
	if (ret < 0)
		return ret;
	io_uring_register_ring_fd(&e->ring); /* 5.18; an optimisation only */

	/* Provided buffer ring by hand (liburing 2.3): one mmap holding the ring entries
	 * followed by the buffers, init, register, then add every buffer. */
	e->br_entries = pow2_at_least(n * 2 < 256 ? 256 : n * 2);
	if (e->br_entries > 32768)
		e->br_entries = 32768;
	size_t ring_bytes = (size_t)e->br_entries * sizeof(struct io_uring_buf);
	e->br_map_len = ring_bytes + (size_t)e->br_entries * RECV_BUF_SIZE;
	void *mem = mmap(NULL, e->br_map_len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED)
		return -ENOMEM;
	e->br = mem;
	e->bufs = (char *)mem + ring_bytes;
	io_uring_buf_ring_init(e->br);
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)e->br;
	reg.ring_entries = e->br_entries;
	reg.bgid = BGID;
	ret = io_uring_register_buf_ring(&e->ring, &reg, 0);
	if (ret < 0)
		return ret;
	for (unsigned i = 0; i < e->br_entries; i++)
		io_uring_buf_ring_add(e->br, e->bufs + (size_t)i * RECV_BUF_SIZE, RECV_BUF_SIZE,
		                      (unsigned short)i, io_uring_buf_ring_mask(e->br_entries), (int)i);
	io_uring_buf_ring_advance(e->br, (int)e->br_entries);
	return 0;
}

/* The connections and their blocks (output buffer, envelopes: load_conn.c), in one
 * mapping with transparent huge pages asked for: a completion touches a dozen lines of
 * its connection spread over three 4 KiB pages, and with hundreds of connections the
 * page walks cost more than the misses (a stall on each prefetch). Zeroed, like calloc. */
static void eng_conns_map(struct eng *e, size_t block)
{
	size_t n = e->n ? e->n : 1;
	size_t conns = (n * sizeof(*e->conns) + 63) & ~(size_t)63;
	e->conns_map_len = conns + n * block;
	void *m = mmap(NULL, e->conns_map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
	               -1, 0);
	if (m == MAP_FAILED)
		die_oom();
	madvise(m, e->conns_map_len, MADV_HUGEPAGE); /* advice only: 4 KiB pages work too */
	e->conns = m;
	e->blocks = (char *)m + conns;
}

static void eng_conns_init(struct eng *e)
{
	const struct load_opts *o = e->o;
	e->dirty = calloc(e->n ? e->n : 1, sizeof(*e->dirty));
	e->rearm = calloc(e->n ? e->n : 1, sizeof(*e->rearm));
	e->idle = calloc(e->n ? e->n : 1, sizeof(*e->idle));
	if (!e->dirty || !e->rearm || !e->idle)
		die_oom();
	size_t block = (conn_block_size(o) + 63) & ~(size_t)63;
	eng_conns_map(e, block);
	for (unsigned i = 0; i < e->n; i++) {
		struct conn *c = &e->conns[i];
		c->fd = -1;
		c->idx = i;
		c->e = e;
		c->phase = P_FREE;
		c->target = (e->t->first_conn + i) % o->ntargets;
		conn_block_init(c, o, e->blocks + (size_t)i * block);
		if (o->tls != LOAD_TLS_NONE) {
			/* ~52 KiB per TLS connection, on top of wolfSSL's own buffers. */
			c->tls.io.out = malloc(TLS_OUT_CAP);
			if (!c->tls.io.out)
				die_oom();
			c->tls.io.out_cap = TLS_OUT_CAP;
		}
	}
}

static void eng_fini(struct eng *e)
{
	if (e->br) {
		io_uring_unregister_buf_ring(&e->ring, BGID);
		munmap(e->br, e->br_map_len);
	}
	io_uring_queue_exit(&e->ring);
	for (unsigned i = 0; e->conns && i < e->n; i++) {
		if (e->conns[i].fd >= 0)
			close(e->conns[i].fd);
		load_tls_forget(&e->conns[i].tls);
		free(e->conns[i].tls.io.out);
	}
	load_tls_ctx_free(e->tls_ctx);
	free(e->tls_rd);
	if (e->conns)
		munmap(e->conns, e->conns_map_len);
	free(e->dirty);
	free(e->rearm);
	free(e->idle);
	free(e->man);
}

static void eng_pin(struct load_thread *t)
{
	if (t->cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(t->cpu, &set);
	int ret = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	if (ret)
		fprintf(stderr, "ringmx-load: thread %u: cannot pin to CPU %d: %s\n", t->id, t->cpu,
		        strerror(ret));
}

static void eng_loop(struct eng *e)
{
	while (e->live) {
		eng_housekeeping(e);
		/* Flush: at most one send per dirty connection, all submitted together;
		 * what the next one writes into is fetched meanwhile. */
		for (unsigned i = 0; i < e->ndirty; i++) {
			if (i + 1 < e->ndirty)
				conn_prefetch_flush(e->dirty[i + 1]);
			conn_flush(e, e->dirty[i]);
		}
		e->ndirty = 0;
		for (unsigned i = 0; i < e->nrearm; i++) {
			struct conn *c = e->rearm[i];
			c->rearm = false;
			if (c->phase == P_OPEN && !c->recv_armed)
				conn_arm_recv(e, c);
		}
		e->nrearm = 0;
		if (!e->live)
			break;
		uint64_t wait = eng_wait_ns(e);
		struct __kernel_timespec ts = { .tv_sec = (long long)(wait / NS), .tv_nsec = (long long)(wait % NS) };
		struct io_uring_cqe *cqe;
		int ret = io_uring_submit_and_wait_timeout(&e->ring, &cqe, 1, &ts, NULL);
		e->now = load_now_ns();
		if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN) {
			fprintf(stderr, "ringmx-load: io_uring_submit_and_wait_timeout: %s\n", strerror(-ret));
			__atomic_store_n(&load_run.stop, 1, __ATOMIC_RELAXED);
			if (!e->t->fatal) {
				e->t->fatal = 2;
				snprintf(e->t->fatal_msg, sizeof(e->t->fatal_msg), "io_uring wait: %s",
				         strerror(-ret));
			}
			break;
		}
		unsigned head, count = 0;
		unsigned tail = io_uring_smp_load_acquire(e->ring.cq.ktail);
		io_uring_for_each_cqe(&e->ring, head, cqe) {
			/* The next completion's connection is fetched while this one is
			 * handled: with many connections its state is never in cache,
			 * and waiting for it was most of the user time per message. */
			if (tail - head > 1) /* the batch seen when it began; later ones: not */
				eng_prefetch(e, &e->ring.cq.cqes[io_uring_cqe_index(&e->ring, head + 1,
				                                                    e->ring.cq.ring_mask)]);
			eng_cqe(e, cqe);
			count++;
		}
		/* Recycled buffers become visible and the CQ advances once per batch. */
		if (e->br_pending)
			io_uring_buf_ring_advance(e->br, (int)e->br_pending);
		io_uring_cq_advance(&e->ring, count);
		e->br_pending = 0;
		eng_publish(e);
	}
}

void *load_thread_main(void *arg)
{
	struct load_thread *t = arg;
	struct eng *e = calloc(1, sizeof(*e));
	if (!e)
		die_oom();
	e->t = t;
	e->o = t->o;
	e->body = t->body;
	e->n = t->nconns;
	e->budget = t->budget;
	e->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)t->id << 32 | (uint64_t)load_run.pid);
	e->idpfx_len = (size_t)snprintf(e->idpfx, sizeof(e->idpfx), "ringmx-load.%d.%u.",
	                                (int)load_run.pid, t->id);
	hist_init(&t->st.hist);
	hist_init(&t->st.tls_hist);
	if (load_run.manifest_fd >= 0 && !(e->man = malloc(MAN_CAP)))
		die_oom();
	eng_pin(t);
	int ret = eng_ring_init(e);
	if (ret < 0) {
		t->fatal = 2;
		snprintf(t->fatal_msg, sizeof(t->fatal_msg),
		         "io_uring setup failed: %s%s", strerror(-ret),
		         ret == -EPERM || ret == -ENOSYS
		             ? " (io_uring disabled: seccomp or kernel.io_uring_disabled?)" : "");
		__atomic_store_n(&load_run.stop, 1, __ATOMIC_RELAXED);
		eng_fini(e);
		free(e);
		return NULL;
	}
	if (e->o->tls != LOAD_TLS_NONE) {
		/* Per thread: no CTX state is shared, so nothing on the hot path locks. */
		e->tls_ctx = load_tls_ctx_new(e->o, t->fatal_msg, sizeof(t->fatal_msg));
		e->tls_rd = malloc(2 * TLS_REC);
		if (!e->tls_rd)
			die_oom();
		e->tls_wr = e->tls_rd + TLS_REC;
		if (!e->tls_ctx) {
			t->fatal = 2;
			__atomic_store_n(&load_run.stop, 1, __ATOMIC_RELAXED);
			eng_fini(e);
			free(e);
			return NULL;
		}
	}
	eng_conns_init(e);
	e->now = load_now_ns();
	if (e->o->rate > 0) {
		/* Thread t starts message k at t0 + (k * threads + t) / rate. */
		e->rate_step = (uint64_t)((double)NS * e->o->threads / e->o->rate);
		e->rate_next = load_run.t0_ns + (uint64_t)((double)NS * t->id / e->o->rate);
	}
	e->live = e->n;
	for (unsigned i = 0; i < e->n; i++) {
		struct conn *c = &e->conns[i];
		if (!budget_take(e)) {
			conn_retire(e, c);
			continue;
		}
		c->reserved = true;
		conn_connect(e, c);
	}
	eng_loop(e);
	io_uring_submit(&e->ring); /* the last closes queued by conn_finalize */
	if (e->inflight) {
		t->st.failed += e->inflight; /* only after a fatal ring error */
		e->inflight = 0;
	}
	eng_publish(e);
	if (load_run.manifest_fd >= 0)
		manifest_flush(e);
	eng_fini(e);
	free(e);
	return NULL;
}
