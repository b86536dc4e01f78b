/*
 * worker.c - the per-core event loop: ring set-up, listeners, accepts
 * (into the ring's file table, with the client's address), wake-ups from
 * the main thread, and the loop itself
 * (submit_and_wait_timeout -> for_each_cqe -> one cq_advance -> timers ->
 * flush replies and re-arm receives -> publish returned buffers).
 *
 * Ownership: everything reachable from struct worker belongs to its thread,
 * except ctl (written by main, read here after a wake) and cfg (read-only,
 * freed by main only after this worker acknowledged the next one).
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_MASTER
#include "worker.h"
#include "fault.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Buffer group id of the worker's provided-buffer ring (one per ring). */
#define RECV_BGID 0
#define SQ_ENTRIES 4096u
/* At most one "accept: Too many open files" line per worker this often. */
#define ACCEPT_ERROR_LOG_NS (10ull * 1000000000ull)

uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * A bound TCP socket for listener l, or -1 with err set. reuseport: join
 * the listener's reuseport group (the workers' sockets) or not (the probe).
 */
static int
listener_socket(const struct listener_conf *l, bool reuseport, char *err, size_t errlen)
{
	int one = 1;
	int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "listen %s: socket: %s", l->text, strerror(errno));
		return -1;
	}
	/* SO_REUSEADDR: a port with connections in TIME_WAIT is fine. Each
	 * worker has its own listening socket in one reuseport group, so the
	 * kernel spreads connections without a shared accept queue or lock. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)) {
		snprintf(err, errlen, "listen %s: setsockopt: %s", l->text, strerror(errno));
		close(fd);
		return -1;
	}
	/* Accepted sockets inherit TCP_NODELAY: replies are already batched
	 * per loop, Nagle would only add latency. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (l->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) < 0) {
		snprintf(err, errlen, "listen %s: bind: %s", l->text, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * SO_REUSEPORT would let a second ringmxd (same user) join our listeners
 * without an error and silently take half the connections. Bind each
 * address once without it first: if anything listens there, that bind fails
 * and start-up stops with "address already in use", as Postfix's would.
 */
int
listener_probe(const struct config *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		int fd = listener_socket(&cfg->listeners[i], false, err, errlen);
		if (fd < 0)
			return -1;
		close(fd);
	}
	return 0;
}

/* Create this worker's socket for every listener. Runs on the main thread
 * before any worker starts, so a bind error stops start-up with one message. */
int
worker_setup_listeners(struct worker *w, const struct config *cfg, char *err, size_t errlen)
{
	w->nlisteners = cfg->nlisteners;
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		const struct listener_conf *l = &cfg->listeners[i];
		int fd = listener_socket(l, true, err, errlen);
		if (fd < 0)
			return -1;
		if (listen(fd, (int)cfg->listen_backlog) < 0) {
			snprintf(err, errlen, "listen %s: listen: %s", l->text, strerror(errno));
			close(fd);
			return -1;
		}
		w->listen_fd[i] = fd;
	}
	return 0;
}

void
worker_wake(struct worker *w)
{
	uint64_t one = 1;
	ssize_t r = write(w->wake_fd, &one, sizeof(one));
	(void)r; /* an eventfd write only fails on counter overflow */
}

/* An SQE, submitting first if the SQ is full (TigerBeetle's enqueue). */
struct io_uring_sqe *
worker_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	while (sqe == NULL) {
		int r = io_uring_submit(&w->ring);
		if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR)
			panic("io_uring_submit: %s", strerror(-r));
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

/* Room for n SQEs that must go to the kernel in one submission (a link
 * chain): an implicit submit between them would cut the chain. */
void
worker_sq_reserve(struct worker *w, unsigned n)
{
	while (io_uring_sq_space_left(&w->ring) < n) {
		int r = io_uring_submit(&w->ring);
		if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR)
			panic("io_uring_submit: %s", strerror(-r));
	}
}

static struct io_uring_sqe *
spool_get_sqe(void *ctx)
{
	return worker_sqe(ctx);
}

#ifndef IORING_ACCEPT_POLL_FIRST
#define IORING_ACCEPT_POLL_FIRST (1U << 2) /* 6.10; liburing 2.3 predates it */
#endif

/*
 * Accept slot j of listener i: straight into the ring's file table
 * (IORING_FILE_INDEX_ALLOC, 5.19; liburing 2.3's helper adds one to the
 * index it is given, hence the - 1), the client's address into the slot.
 * ACCEPT_POLL_FIRST (6.10): a re-armed accept usually finds the backlog
 * empty, and an accept that finds nothing has already allocated (and now
 * frees) a socket, an inode and a file; with it the kernel waits for a
 * client first. Older kernels refuse the flag (EINVAL, on_accept).
 */
static void
arm_accept(struct worker *w, unsigned i, unsigned j)
{
	struct accept_slot *a = &w->accepts[i][j];
	struct io_uring_sqe *sqe = worker_sqe(w);

	assert(!a->armed && w->files_open + w->accepts_armed < w->nfiles);
	a->addrlen = sizeof(a->addr);
	io_uring_prep_accept_direct(sqe, w->listen_fd[i], (struct sockaddr *)&a->addr, &a->addrlen,
				    0, IORING_FILE_INDEX_ALLOC - 1);
	if (!w->accept_no_poll_first)
		sqe->ioprio |= IORING_ACCEPT_POLL_FIRST;
	io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, 0, j, i));
	a->armed = true;
	w->accepts_armed++;
}

/* Room in the file table for one more accept in flight (worker.h). */
static bool
accept_room(const struct worker *w)
{
	return w->files_open + w->accepts_armed < w->nfiles;
}

/* A close CQE: its table entry is free; an accept held back for want of
 * one is armed on this loop pass. */
void
worker_file_closed(struct worker *w)
{
	assert(w->files_open > 0);
	w->files_open--;
	w->accept_wanted = true;
}

static bool
accepts_armed(const struct worker *w, size_t i)
{
	for (unsigned j = 0; j < ACCEPT_DEPTH; j++)
		if (w->accepts[i][j].armed)
			return true;
	return false;
}

static void
arm_wake(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_read(sqe, w->wake_fd, &w->wake_val, sizeof(w->wake_val), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_WAKE, 0, 0, 0));
}

static void
stop_accepting(struct worker *w)
{
	bool cancels = false;
	for (size_t i = 0; i < w->nlisteners; i++) {
		if (w->listen_fd[i] >= 0 && accepts_armed(w, i)) {
			struct io_uring_sqe *sqe = worker_sqe(w);
			io_uring_prep_cancel_fd(sqe, w->listen_fd[i], IORING_ASYNC_CANCEL_ALL);
			io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, 0, 0));
			cancels = true;
		}
	}
	/* The cancels look the descriptors up, so they must reach the kernel
	 * before the descriptors are closed; otherwise the accepts stay
	 * armed and keep taking (and dropping) connections. */
	if (cancels)
		io_uring_submit(&w->ring);
	for (size_t i = 0; i < w->nlisteners; i++) {
		if (w->listen_fd[i] < 0)
			continue;
		/* shutdown() takes the socket out of LISTEN at once: the
		 * kernel refuses new connections instead of queueing them,
		 * and any accept still pending ends. The ring holds its own
		 * file reference, so closing afterwards is safe. */
		shutdown(w->listen_fd[i], SHUT_RDWR);
		close(w->listen_fd[i]);
		w->listen_fd[i] = -1;
	}
}

static void
on_accept(struct worker *w, struct io_uring_cqe *cqe)
{
	unsigned i = ud_idx(cqe->user_data), j = ud_kind(cqe->user_data);
	struct accept_slot *a = &w->accepts[i][j];

	assert(i < w->nlisteners && j < ACCEPT_DEPTH && a->armed && w->accepts_armed > 0);
	a->armed = false;
	w->accepts_armed--;
	if (cqe->res >= 0) {
		w->files_open++;
		if (w->draining) {
			conn_close_direct(w, cqe->res);
			return;
		}
		conn_open(w, cqe->res, i, &a->addr, a->addrlen);
		/* At once, so the accepts in flight stay ACCEPT_DEPTH; with
		 * every slot taken the next client still gets its 421. */
		if (accept_room(w))
			arm_accept(w, i, j);
		else
			w->accept_wanted = true;
		return;
	}
	if (cqe->res == -EINVAL && !w->draining && !w->accept_no_poll_first) {
		/* A kernel before 6.10 (IORING_ACCEPT_POLL_FIRST): without. */
		w->accept_no_poll_first = true;
		w->accept_wanted = true;
		return;
	}
	if (cqe->res != -ECANCELED && cqe->res != -EINVAL) {
		/* ENOMEM, or ENFILE (a full file table, which accept_room()
		 * keeps from happening): re-armed on the next tick, not in a
		 * tight loop. The clients wait in the backlog meanwhile:
		 * nothing is refused, so this is counted apart, and logged at
		 * most every ACCEPT_ERROR_LOG_NS. */
		w->stats.accept_errors++;
		if (w->now >= w->accept_error_logged + ACCEPT_ERROR_LOG_NS) {
			w->accept_error_logged = w->now;
			log_warn("accept on %s: %s (clients wait in the backlog; raise the open file "
				 "limit or lower max_connections)",
				 w->cfg->listeners[i].text, strerror(-cqe->res));
		}
	}
	if (!w->draining) {
		w->accept_wanted = true;
		w->accept_retry_at = w->now + TIMER_TICK_NS;
	}
}

/* Every accept slot that is not in flight, while the table has room. */
static void
rearm_accepts(struct worker *w)
{
	if (!w->accept_wanted || w->draining || w->now < w->accept_retry_at)
		return;
	w->accept_wanted = false;
	for (size_t i = 0; i < w->nlisteners; i++)
		for (unsigned j = 0; j < ACCEPT_DEPTH && w->listen_fd[i] >= 0; j++) {
			if (w->accepts[i][j].armed)
				continue;
			if (!accept_room(w))
				return; /* worker_file_closed() asks again */
			arm_accept(w, (unsigned)i, j);
		}
}

static void
log_stats(struct worker *w, const char *when)
{
	char line[4096];
	size_t off = (size_t)snprintf(line, sizeof(line), "stats %s:", when);
#define RINGMX_STATS_FMT(name, help)                                                               \
	if (off < sizeof(line))                                                                    \
		off += (size_t)snprintf(line + off, sizeof(line) - off, " %s=%llu", #name,         \
					(unsigned long long)w->stats.name);
	RINGMX_STATS(RINGMX_STATS_FMT)
#undef RINGMX_STATS_FMT
	log_line(LOG_SERVICE, LOG_NOTICE, line, off < sizeof(line) ? off : sizeof(line) - 1);
}

static void
start_drain(struct worker *w)
{
	if (w->draining)
		return;
	w->draining = true;
	w->drain_deadline = w->now + w->cfg->shutdown_timeout;
	stop_accepting(w);
	for (uint32_t i = 0; i < w->nconns; i++)
		if (w->conns[i].state == CONN_OPEN)
			conn_drain(w, &w->conns[i], false);
	if (w->relay != NULL)
		relay_drain(w->relay, false);
	log_notice("draining: %u connections open, shutdown_timeout %llus", w->active,
		   (unsigned long long)(w->cfg->shutdown_timeout / 1000000000u));
}

/*
 * SIGHUP: new contexts from the (already checked) files. Sessions already
 * running keep the set they hold a reference to; new ones use this one. A
 * file that went bad since main's check keeps the old set in service.
 */
static void
tls_reload(struct worker *w, const struct config *cfg)
{
	char err[512];
	struct tls_set *s;

	if (w->tls == NULL || cfg->tls.cert[0] == '\0')
		return;
	s = tls_set_new(&cfg->tls, err, sizeof(err));
	if (s == NULL) {
		log_err("TLS reload refused, keeping the running certificates: %s", err);
		return;
	}
	tls_set_unref(w->tls);
	w->tls = s;
	w->stats.tls_ctx_reloads++;
}

static void
switch_config(struct worker *w, const struct config *cfg)
{
	w->cfg = cfg;
	w->policy.rcpt_map = cfg->rcpt_map;
	/* The old configuration is freed once every worker switched. */
	w->policy.hostname = cfg->smtp.hostname;
	w->policy.limits = &cfg->client_limits;
	/* Answers of DNS tests in flight are indexed by the old site list. */
	screen_reconf(&w->policy);
	w->policy.screen = &cfg->screen;
	{
		char err[512];
		if (dns_set_servers(w->policy.dns, cfg->screen.dns_servers, err, sizeof(err)) < 0)
			log_err("%s; keeping the previous servers", err);
	}
	tls_reload(w, cfg);
	/* A refusal's send queued this pass reads the line at submission. */
	io_uring_submit(&w->ring);
	conn_refusal_text(w);
	if (w->spool != NULL)
		spool_set_conf(w->spool, cfg);
	if (w->relay != NULL)
		relay_set_conf(w->relay, cfg);
	verify_set_conf(w->policy.verify, cfg);
	for (uint32_t i = 0; i < w->nconns; i++)
		if (w->conns[i].state != CONN_FREE)
			conn_set_conf(&w->conns[i], &cfg->smtp);
	atomic_store(&w->ctl.cfg_ack, cfg);
}

/* ringmx-spool's commands. A set is taken only when the previous one is
 * answered (its journal syncs are done); the loop looks again every
 * iteration until then. */
static void
take_cmds(struct worker *w)
{
	if (atomic_load_explicit(&w->ctl.cmds, memory_order_relaxed) == NULL ||
	    (w->relay != NULL && relay_cmds_busy(w->relay)))
		return;
	struct relay_cmdset *set = atomic_exchange(&w->ctl.cmds, NULL);
	if (set == NULL)
		return;
	if (w->relay != NULL)
		relay_apply_cmds(w->relay, set);
	else
		atomic_fetch_add(&set->acks, 1);
}

static void
on_wake(struct worker *w, struct io_uring_cqe *cqe)
{
	if (cqe->res < 0 && cqe->res != -EINTR && cqe->res != -EAGAIN)
		panic("wake eventfd read: %s", strerror(-cqe->res));
	const struct config *next = atomic_exchange(&w->ctl.next_cfg, NULL);
	if (next != NULL)
		switch_config(w, next);
	if (atomic_exchange(&w->ctl.dump, false)) {
		log_stats(w, "now");
		if (w->relay != NULL)
			relay_log_backlog(w->relay);
	}
	take_cmds(w);
	if (atomic_load(&w->ctl.stop))
		start_drain(w);
	arm_wake(w);
}

static void
handle_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	switch (ud_op(ud)) {
	case OP_ACCEPT:
		on_accept(w, cqe);
		return;
	case OP_WAKE:
		on_wake(w, cqe);
		return;
	case OP_CANCEL:
		return; /* -ENOENT/-EALREADY: the target finished on its own */
	case OP_CLOSE:
		conn_on_close(w, cqe);
		return;
	case OP_SPOOL:
		spool_on_cqe(w->spool, cqe);
		return;
	case OP_RELAY:
		relay_on_cqe(w->relay, cqe);
		return;
	case OP_DNS:
		dns_on_cqe(w->policy.dns, cqe);
		return;
	case OP_MILTER:
		mf_on_cqe(w->mf, cqe);
		return;
	case OP_JETSTREAM:
		js_on_cqe(w->js, cqe);
		return;
	case OP_RECV:
	case OP_SEND: {
		uint32_t idx = ud_idx(ud);
		assert(idx < w->nconns);
		struct conn *c = &w->conns[idx];
		if (c->state == CONN_FREE || (c->gen & UD_GEN_MASK) != ud_gen(ud)) {
			/* A late CQE for a slot's previous occupant. Any buffer
			 * it carries must still go back to the ring. */
			if (cqe->flags & IORING_CQE_F_BUFFER) {
				bufring_taken(&w->br);
				bufring_put(&w->br, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
			}
			return;
		}
		if (ud_op(ud) == OP_RECV)
			conn_on_recv(w, c, cqe);
		else
			conn_on_send(w, c, cqe->res);
		return;
	}
	}
	panic("unknown CQE op %u (user_data %llx)", (unsigned)ud_op(ud), (unsigned long long)ud);
}

/*
 * The ring's file table for accepted sockets (a sparse registration,
 * 5.19): direct descriptors cost no process descriptor, no fget/fput per
 * recv and send, and close with an SQE. Every connection slot, plus as
 * many again for sockets whose close is still queued and for refusals in
 * flight (a full table only delays accepts: ENFILE, retried). The kernel
 * refuses a table larger than RLIMIT_NOFILE, or than 1 << 20 entries.
 */
static int
files_init(struct worker *w)
{
	struct rlimit rl;
	uint64_t n = 2 * (uint64_t)w->nconns + (uint64_t)ACCEPT_DEPTH * w->nlisteners;

	if (n > (1u << 20))
		n = 1u << 20;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n)
		n = rl.rlim_cur;
	int r = io_uring_register_files_sparse(&w->ring, (unsigned)n);
	if (r < 0) {
		io_uring_queue_exit(&w->ring);
		return r;
	}
	w->nfiles = (unsigned)n;
	if (n < w->nconns)
		log_warn("open file limit %llu caps the ring's file table below max_connections "
			 "(%u): accepts past it wait (raise the limit, or lower max_connections)",
			 (unsigned long long)n, w->nconns);
	return 0;
}

static int
ring_init(struct worker *w)
{
	struct io_uring_params p;
	unsigned cq = 1;
	/* Multishot recv and accept post many CQEs per SQE: size the CQ well
	 * above the in-flight count so it never overflows (liburing proxy.c). */
	while (cq < w->nconns * 4u && cq < (1u << 20))
		cq <<= 1;
	if (cq < 4 * SQ_ENTRIES)
		cq = 4 * SQ_ENTRIES;
	memset(&p, 0, sizeof(p));
	/* SINGLE_ISSUER (6.0): only this thread submits, so the kernel skips
	 * cross-thread synchronisation. DEFER_TASKRUN (6.1): completions run
	 * only when we wait, in batches, never interrupting the loop.
	 * SUBMIT_ALL: one bad SQE does not stop the rest of the batch. */
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
		  IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL;
	p.cq_entries = cq;
	int r = io_uring_queue_init_params(SQ_ENTRIES, &w->ring, &p);
	if (r == -EINVAL) {
		/* Kernels before 6.1: cooperative task running instead. */
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP |
			  IORING_SETUP_SUBMIT_ALL;
		p.cq_entries = cq;
		r = io_uring_queue_init_params(SQ_ENTRIES, &w->ring, &p);
		if (r == 0)
			log_warn("kernel lacks DEFER_TASKRUN (6.1): using COOP_TASKRUN");
	}
	if (r < 0)
		return r;
	if (!(p.features & IORING_FEAT_EXT_ARG)) {
		io_uring_queue_exit(&w->ring);
		return -EOPNOTSUPP;
	}
	io_uring_register_ring_fd(&w->ring); /* best effort: saves an fget per enter */
	return files_init(w);
}

static int
pools_init(struct worker *w)
{
	const struct config *cfg = w->cfg;
	w->nconns = cfg->max_connections;
	/* Large pools come from mmap: untouched slots and blocks cost no
	 * resident memory, and LIFO free stacks keep reusing the warm ones. */
	size_t csz = (size_t)w->nconns * sizeof(struct conn);
	w->conns = mmap(NULL, csz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	w->outmem = mmap(NULL, (size_t)w->nconns * CONN_OUT_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	w->free_conns = calloc(w->nconns, sizeof(uint32_t));
	w->free_out = calloc(w->nconns, sizeof(char *));
	w->hold_next = calloc(cfg->recv_buffers, sizeof(uint32_t));
	w->hold_len = calloc(cfg->recv_buffers, sizeof(uint32_t));
	w->wheel = malloc(sizeof(*w->wheel));
	if (cfg->tls.cert[0] != '\0') {
		/* One TLS state per slot (~48 KiB each), mapped: only slots that
		 * ever ran TLS become resident. */
		w->tlsmem = mmap(NULL, (size_t)w->nconns * sizeof(struct conn_tls),
				 PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		w->free_tls = calloc(w->nconns, sizeof(*w->free_tls));
		if (w->tlsmem == MAP_FAILED || w->free_tls == NULL)
			return -ENOMEM;
		for (uint32_t i = 0; i < w->nconns; i++)
			w->free_tls[i] = &w->tlsmem[w->nconns - 1 - i];
		w->nfree_tls = w->nconns;
	}
	if (w->conns == MAP_FAILED || w->outmem == MAP_FAILED || !w->free_conns || !w->free_out ||
	    !w->hold_next || !w->hold_len || !w->wheel)
		return -ENOMEM;
	for (uint32_t i = 0; i < w->nconns; i++) {
		w->free_conns[i] = w->nconns - 1 - i;
		w->free_out[i] = w->outmem + (size_t)(w->nconns - 1 - i) * CONN_OUT_SIZE;
	}
	w->nfree = w->nconns;
	w->nfree_out = w->nconns;
	timer_wheel_init(w->wheel, now_ns());
	return 0;
}

static void
pools_fini(struct worker *w)
{
	if (w->conns && w->conns != MAP_FAILED)
		munmap(w->conns, (size_t)w->nconns * sizeof(struct conn));
	if (w->outmem && w->outmem != MAP_FAILED)
		munmap(w->outmem, (size_t)w->nconns * CONN_OUT_SIZE);
	free(w->free_conns);
	free(w->free_out);
	free(w->hold_next);
	free(w->hold_len);
	free(w->wheel);
	if (w->tlsmem != NULL && w->tlsmem != MAP_FAILED)
		munmap(w->tlsmem, (size_t)w->nconns * sizeof(struct conn_tls));
	free(w->free_tls);
	tls_set_unref(w->tls);
	w->tls = NULL;
}

static void
pin(struct worker *w)
{
	if (w->cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	int r = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	if (r != 0)
		log_warn("cannot pin to cpu %d: %s", w->cpu, strerror(r));
}

/* Copy what a scrape shows into the published snapshot (metrics.h). */
static void
publish(struct worker *w)
{
	struct metrics_snap *s = &w->pub.snap;

	metrics_write_begin(&w->pub);
	s->stats = w->stats;
	memcpy(s->open, w->open_by_listener, sizeof(s->open));
	s->active = w->active;
	s->nconns = w->nconns;
	s->relay = w->relay != NULL;
	if (w->relay != NULL)
		relay_gauges(w->relay, &s->rg);
	metrics_write_end(&w->pub);
	w->pub_at = w->now + METRICS_PUBLISH_NS;
}

static void
loop(struct worker *w)
{
	bool pub_dirty = false;

	atomic_store_explicit(&w->pub.beat, w->now, memory_order_relaxed);
	publish(w);
	for (;;) {
		/* First, so verdicts it gives (a failed batch) are flushed
		 * below and the batch's SQEs go out with this submit. */
		if (w->spool != NULL)
			spool_poll(w->spool, w->now);
		if (w->relay != NULL) {
			take_cmds(w); /* one that waited for the previous set */
			relay_poll(w->relay, w->now);
		}
		if (w->policy.verify != NULL)
			verify_poll(w->policy.verify, w->now); /* timeouts */
		dns_poll(w->policy.dns); /* c-ares' retries and time-outs */
		conn_rearm_all(w);
		conn_flush_all(w);
		if (w->js != NULL)
			js_poll(w->js); /* after the sessions' commits of this round */
		rearm_accepts(w);
		bufring_publish(&w->br);
		log_flush();
		if (w->draining && w->active == 0 && (w->spool == NULL || spool_idle(w->spool)) &&
		    (w->relay == NULL || relay_idle(w->relay)) && (w->js == NULL || js_idle(w->js)))
			break;

		uint64_t wait = timer_wait_ns(w->wheel, 1000000000ull);
		if (w->spool != NULL)
			wait = spool_wait_ns(w->spool, w->now, wait);
		if (w->relay != NULL)
			wait = relay_wait_ns(w->relay, wait);
		if (w->policy.verify != NULL)
			wait = verify_wait_ns(w->policy.verify, wait);
		wait = dns_wait_ns(w->policy.dns, wait);
		if (w->draining && wait > TIMER_TICK_NS)
			wait = TIMER_TICK_NS;
		/* Changes since the last snapshot reach it within
		 * METRICS_PUBLISH_NS, even if nothing else wakes us. */
		if (pub_dirty && wait > w->pub_at - w->now)
			wait = w->pub_at - w->now;
		struct __kernel_timespec ts = {.tv_sec = (long long)(wait / 1000000000u),
					       .tv_nsec = (long long)(wait % 1000000000u)};
		struct io_uring_cqe *cqe;
		int r = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
		if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			panic("io_uring_submit_and_wait_timeout: %s", strerror(-r));

		w->now = now_ns();
		w->wall = time(NULL);
		w->stats.loop_iterations++;
		atomic_store_explicit(&w->pub.beat, w->now, memory_order_relaxed);
		fault_stall(w->id);

		unsigned head, n = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			handle_cqe(w, cqe);
			n++;
		}
		io_uring_cq_advance(&w->ring, n);

		timer_expire(w->wheel, w->now, conn_on_timer, w);
		pub_dirty = w->now < w->pub_at;
		if (!pub_dirty)
			publish(w);
		if (w->draining && w->now >= w->drain_deadline) {
			for (uint32_t i = 0; i < w->nconns; i++)
				if (w->conns[i].state == CONN_OPEN)
					conn_drain(w, &w->conns[i], true);
			if (w->relay != NULL)
				relay_drain(w->relay, true);
			w->drain_deadline = UINT64_MAX;
		}
	}
}

/* Closing the spool finishes its last segments (relay_seg_closed), and
 * the relay removes a finished one through the ring like any other: run
 * the ring for the relay alone until its file operations are done. Bounded:
 * a disk that does not answer is not waited for (the files stay, and the
 * next start delivers nothing twice: every message in them is done). */
static void
relay_finish(struct worker *w)
{
	for (int i = 0; w->relay != NULL && relay_io_pending(w->relay) && i < 50; i++) {
		struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 100000000};
		struct io_uring_cqe *cqe;
		int r = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
		if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			break;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			if (ud_op(cqe->user_data) == OP_RELAY)
				relay_on_cqe(w->relay, cqe);
			n++;
		}
		io_uring_cq_advance(&w->ring, n);
	}
}

/* A worker that cannot start after its ring and buffer ring exist: one
 * line, everything set up so far undone, and main told why (started). */
static void *
start_failed(struct worker *w, int r, const char *why)
{
	log_err("%s", why);
	log_flush();
	spool_close(w->spool);
	w->spool = NULL;
	bufring_fini(&w->br, &w->ring);
	io_uring_queue_exit(&w->ring);
	pools_fini(w);
	atomic_store(&w->started, r);
	return NULL;
}

void *
worker_main(void *arg)
{
	struct worker *w = arg;
	snprintf(w->log.tag, sizeof(w->log.tag), "w%u", w->id);
	log_set_thread_buf(&w->log);
	pin(w);

	w->now = now_ns();
	w->wall = time(NULL);
	int r = pools_init(w);
	if (r == 0)
		r = ring_init(w);
	if (r < 0) {
		log_err("io_uring setup: %s", strerror(-r));
		log_flush();
		pools_fini(w);
		atomic_store(&w->started, r);
		return NULL;
	}
	r = bufring_init(&w->br, &w->ring, w->cfg->recv_buffers, w->cfg->recv_buffer_size, RECV_BGID);
	if (r < 0) {
		log_err("provided buffer ring (%u x %u bytes): %s", w->cfg->recv_buffers,
			w->cfg->recv_buffer_size, strerror(-r));
		log_flush();
		io_uring_queue_exit(&w->ring);
		pools_fini(w);
		atomic_store(&w->started, r);
		return NULL;
	}
	if (w->cfg->tls.cert[0] != '\0') {
		/* This worker's own contexts, built on its thread (tls.h). */
		char err[512];
		w->tls = tls_set_new(&w->cfg->tls, err, sizeof(err));
		if (w->tls == NULL)
			return start_failed(w, -EINVAL, err);
	}
	qid_init(&w->qid, w->id);
	if (w->cfg->sink == SINK_KIND_SPOOL) {
		char err[512];
		struct spool_env env = {
			.worker = w->id,
			.ring = &w->ring,
			.get_sqe = spool_get_sqe,
			.ctx = w,
			.ud_op = OP_SPOOL,
			.qid = &w->qid,
			.stats = &w->stats,
		};
		r = spool_open(&w->spool, w->cfg, &env, err, sizeof(err));
		if (r < 0)
			return start_failed(w, r, err);
		spool_sink(w->spool, &w->sink);
		if (relay_enabled(&w->cfg->relay)) {
			struct relay_env renv = {
				.worker = w->id,
				.nworkers = w->cfg->workers,
				.ring = &w->ring,
				.get_sqe = spool_get_sqe,
				.ctx = w,
				.ud_op = OP_RELAY,
				.spool = &w->sink,
				.sp = w->spool,
				.first_seq = spool_first_seq(w->spool),
				.stats = &w->stats,
			};
			r = relay_open(&w->relay, w->cfg, &renv, err, sizeof(err));
			if (r < 0)
				return start_failed(w, r, err);
			struct spool_hooks hooks = {
				.ctx = w->relay,
				.durable = relay_record_durable,
				.seg_closed = relay_seg_closed,
				.admit = relay_admit,
			};
			spool_set_hooks(w->spool, &hooks);
			/* Verification probes ride the relay's connections. */
			r = w->cfg->verify.enabled ? verify_open(&w->policy.verify, w->cfg, w->relay,
								 &w->stats)
						   : 0;
			if (r < 0)
				panic("verify: cannot allocate the cache (verify_cache_size %u): %s",
				      w->cfg->verify.cache_size, strerror(-r));
		}
	} else if (w->cfg->sink == SINK_KIND_JETSTREAM) {
		char err[512];
		struct js_env jenv = {
			.worker = w->id,
			.ring = &w->ring,
			.get_sqe = spool_get_sqe,
			.ctx = w,
			.ud_op = OP_JETSTREAM,
			.qid = &w->qid,
			.stats = &w->stats,
			.now = &w->now,
			.wall = &w->wall,
		};
		r = js_open(&w->js, w->cfg, &jenv, err, sizeof(err));
		if (r < 0)
			return start_failed(w, r, err);
		js_sink(w->js, &w->sink);
	} else {
		sink_discard_init(&w->discard, &w->qid, &w->sink);
	}
	w->hooks.log = conn_log_hook;
	w->hooks.check = conn_policy_check;
	w->hooks.check_cancel = conn_policy_cancel;
	w->policy.hostname = w->cfg->smtp.hostname;
	w->policy.rcpt_map = w->cfg->rcpt_map;
	w->policy.limits = &w->cfg->client_limits;
	w->policy.stats = &w->stats;
	w->policy.now = &w->now;
	w->policy.screen = &w->cfg->screen;
	{
		/* The resolver exists whether or not dnsbl_sites is set now:
		 * a reload may set it. c-ares opens no socket before a query. */
		char err[512];
		struct dns_env denv = {
			.ring = &w->ring,
			.get_sqe = spool_get_sqe,
			.ctx = w,
			.ud_op = OP_DNS,
			.stats = &w->stats,
			.now = &w->now,
		};
		r = dns_open(&w->policy.dns, &denv, w->cfg->screen.dns_servers,
			     w->cfg->screen.dns_cache_size, w->cfg->screen.dnsbl_timeout, err,
			     sizeof(err));
		if (r < 0)
			panic("%s", err);
		r = screen_pool_new(&w->policy.screen_pool, w->nconns);
		if (r < 0)
			panic("screening: cannot map %u job slots: %s", w->nconns, strerror(-r));
	}
	{
		/* Mapped whether or not milters is set now (a reload may set
		 * it); untouched until a conversation uses a slot. */
		char err[512];
		struct mf_env menv = {
			.ring = &w->ring,
			.get_sqe = spool_get_sqe,
			.ctx = w,
			.ud_op = OP_MILTER,
			.stats = &w->stats,
			.now = &w->now,
			.inner = &w->sink,
			.memory_cap = w->cfg->spool_memory,
		};
		r = mf_pool_new(&w->mf, &menv, w->cfg->milters.conversation_limit, w->nconns, err,
				sizeof(err));
		if (r < 0)
			panic("%s", err);
	}
	atomic_store(&w->ctl.cfg_ack, w->cfg);
	conn_refusal_text(w);

	w->accept_wanted = true; /* rearm_accepts() arms them, in the table's room */
	arm_wake(w);
	atomic_store(&w->started, 1);

	fault_loop_guard();
	loop(w);

	log_stats(w, "final");
	tls_thread_fini();
	spool_close(w->spool);
	w->spool = NULL;
	relay_finish(w);
	log_flush();
	bufring_fini(&w->br, &w->ring);
	io_uring_queue_exit(&w->ring);
	/* After the ring: no send can still read a connection's buffer. */
	relay_close(w->relay);
	w->relay = NULL;
	pools_fini(w);
	verify_close(w->policy.verify); /* after the connections: they may wait on it */
	w->policy.verify = NULL;
	dns_close(w->policy.dns); /* after the ring: no poll can complete any more */
	w->policy.dns = NULL;
	screen_pool_free(w->policy.screen_pool);
	w->policy.screen_pool = NULL;
	mf_pool_free(w->mf); /* after the ring and the connections */
	w->mf = NULL;
	js_close(w->js); /* after the ring: no read of its eventfd is armed */
	w->js = NULL;
	return NULL;
}
