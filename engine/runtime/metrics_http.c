/*
 * metrics_http.c - see metrics_http.h. One thread, one ring: a multishot
 * accept, one receive or send per connection, a one-second tick for the
 * request deadline, an eventfd to stop. Every answer is whole in memory
 * and the connection closes after it (Prometheus opens one per scrape).
 *
 * Ownership: a connection's input buffer is its slot's; its answer is
 * malloc'd when the request is complete and freed when the connection
 * closes. Nothing here runs on a worker's thread.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_MASTER
#include "metrics_http.h"

#include <errno.h>
#include <inttypes.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client_table.h"
#include "http_req.h"
#include "log.h"
#include "metrics.h"
#include "ringmx_version.h"
#include "worker.h"

enum { M_ACCEPT = 1, M_RECV, M_SEND, M_STOP, M_TICK };

struct mconn {
	int fd; /* -1: free */
	uint16_t gen;
	bool recv_inflight, send_inflight, closing;
	uint64_t deadline;
	size_t inlen;
	char *out;
	size_t outlen, sent;
	char in[HTTP_REQ_MAX];
};

struct metrics_server {
	int lfd, stop_fd;
	uint64_t stop_val;
	struct io_uring ring;
	pthread_t thread;
	bool started;
	bool accept_wanted; /* the multishot accept ended with an error */
	struct worker *ws;
	unsigned n;
	struct client_table *clients;
	uint64_t rate_window;
	char text[80];
	const char *listener[CONFIG_MAX_LISTENERS];
	char ltext[CONFIG_MAX_LISTENERS][80];
	size_t nlisteners;
	struct metrics_snap *snaps;
	uint64_t *ages;
	struct __kernel_timespec tick;
	struct mconn conn[METRICS_CONNS_MAX];
};

static uint64_t
ud(unsigned op, unsigned idx, unsigned gen)
{
	return (uint64_t)op << 48 | (uint64_t)idx << 16 | gen;
}

static struct io_uring_sqe *
sqe(struct metrics_server *m)
{
	struct io_uring_sqe *s = io_uring_get_sqe(&m->ring);
	if (s == NULL) {
		io_uring_submit(&m->ring);
		s = io_uring_get_sqe(&m->ring);
	}
	if (s == NULL)
		panic("metrics: no SQE after a submit");
	return s;
}

int
metrics_stalled_worker(struct worker *ws, unsigned n, uint64_t now_ns)
{
	for (unsigned i = 0; i < n; i++) {
		uint64_t b = atomic_load_explicit(&ws[i].pub.beat, memory_order_relaxed);
		if (now_ns > b && now_ns - b >= METRICS_STALL_NS)
			return (int)i;
	}
	return -1;
}

int
metrics_bind(struct metrics_server **out, const struct config *cfg, char *err, size_t errlen)
{
	const struct listener_conf *l = &cfg->metrics_listen;
	struct metrics_server *m = calloc(1, sizeof(*m));
	if (m == NULL)
		return -ENOMEM;
	m->stop_fd = -1;
	snprintf(m->text, sizeof(m->text), "%s", l->text);
	m->lfd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	if (m->lfd < 0 || setsockopt(m->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(m->lfd, (const struct sockaddr *)&l->addr, l->addrlen) < 0 ||
	    listen(m->lfd, 64) < 0) {
		int e = errno;
		snprintf(err, errlen, "metrics_listen %s: %s", l->text, strerror(e));
		if (m->lfd >= 0)
			close(m->lfd);
		free(m);
		return -e;
	}
	m->rate_window = cfg->client_limits.rate_window;
	m->nlisteners = cfg->nlisteners;
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		snprintf(m->ltext[i], sizeof(m->ltext[i]), "%s", cfg->listeners[i].text);
		m->listener[i] = m->ltext[i];
	}
	*out = m;
	return 0;
}

static void
arm_accept(struct metrics_server *m)
{
	struct io_uring_sqe *s = sqe(m);
	io_uring_prep_multishot_accept(s, m->lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(s, ud(M_ACCEPT, 0, 0));
}

static void
arm_stop(struct metrics_server *m)
{
	struct io_uring_sqe *s = sqe(m);
	io_uring_prep_read(s, m->stop_fd, &m->stop_val, sizeof(m->stop_val), 0);
	io_uring_sqe_set_data64(s, ud(M_STOP, 0, 0));
}

static void
arm_tick(struct metrics_server *m)
{
	struct io_uring_sqe *s = sqe(m);
	m->tick = (struct __kernel_timespec){.tv_sec = 1};
	io_uring_prep_timeout(s, &m->tick, 0, 0);
	io_uring_sqe_set_data64(s, ud(M_TICK, 0, 0));
}

static void
arm_recv(struct metrics_server *m, unsigned i)
{
	struct mconn *c = &m->conn[i];
	struct io_uring_sqe *s = sqe(m);
	io_uring_prep_recv(s, c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
	io_uring_sqe_set_data64(s, ud(M_RECV, i, c->gen));
	c->recv_inflight = true;
}

static void
arm_send(struct metrics_server *m, unsigned i)
{
	struct mconn *c = &m->conn[i];
	struct io_uring_sqe *s = sqe(m);
	io_uring_prep_send(s, c->fd, c->out + c->sent, c->outlen - c->sent, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(s, ud(M_SEND, i, c->gen));
	c->send_inflight = true;
}

/* Close once nothing is in flight; before that, shutdown() ends them. */
static void
conn_close(struct metrics_server *m, unsigned i)
{
	struct mconn *c = &m->conn[i];
	if (c->fd < 0)
		return;
	if (c->recv_inflight || c->send_inflight) {
		if (!c->closing)
			shutdown(c->fd, SHUT_RDWR);
		c->closing = true;
		return;
	}
	close(c->fd);
	free(c->out);
	c->out = NULL;
	c->fd = -1;
	c->gen++;
	c->closing = false;
}

/* The status line and headers, then body (not for HEAD). */
static void
respond(struct mconn *c, int code, const char *reason, const char *ctype, const char *extra,
        const char *body, size_t blen, bool head_only)
{
	char h[512];
	int hl = snprintf(h, sizeof(h),
	                  "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
	                  "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
	                  code, reason, ctype, blen, extra);
	size_t n = (size_t)hl + (head_only ? 0 : blen);
	c->out = malloc(n);
	if (c->out == NULL) {
		c->outlen = 0;
		return;
	}
	memcpy(c->out, h, (size_t)hl);
	if (!head_only)
		memcpy(c->out + hl, body, blen);
	c->outlen = n;
	c->sent = 0;
}

static void
plain(struct mconn *c, int code, const char *reason, const char *extra, const char *body,
      bool head_only)
{
	respond(c, code, reason, "text/plain; charset=utf-8", extra, body, strlen(body), head_only);
}

static void
serve_metrics(struct metrics_server *m, struct mconn *c, bool head_only)
{
	uint64_t now = now_ns();
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	for (unsigned i = 0; i < m->n; i++) {
		if (!metrics_read(&m->ws[i].pub, &m->snaps[i]))
			log_warn("metrics: worker %u's snapshot kept changing; served a torn copy",
			         i);
		uint64_t b = atomic_load_explicit(&m->ws[i].pub.beat, memory_order_relaxed);
		m->ages[i] = now > b ? now - b : 0;
	}
	struct metrics_global g = {
	    .nworkers = m->n,
	    .nlisteners = m->nlisteners,
	    .wall_us = (int64_t)wall.tv_sec * 1000000 + wall.tv_nsec / 1000,
	    .beat_age_ns = m->ages,
	    .version = RINGMX_VERSION,
	};
	memcpy(g.listener, m->listener, sizeof(g.listener));
	g.clients_used =
	    client_table_used(m->clients, client_window(now, m->rate_window), &g.clients_slots);
	size_t cap = 65536, need;
	char *body = NULL;
	for (;;) {
		char *nb = realloc(body, cap);
		if (nb == NULL) {
			free(body);
			plain(c, 500, "Internal Server Error", "", "out of memory\n", head_only);
			return;
		}
		body = nb;
		need = metrics_render(&g, m->snaps, body, cap);
		if (need < cap)
			break;
		cap = need + 1;
	}
	respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", "", body, need,
	        head_only);
	free(body);
}

static void
serve_health(struct metrics_server *m, struct mconn *c, bool head_only)
{
	uint64_t now = now_ns();
	int w = metrics_stalled_worker(m->ws, m->n, now);
	if (w < 0) {
		plain(c, 200, "OK", "", "ok\n", head_only);
		return;
	}
	uint64_t b = atomic_load_explicit(&m->ws[w].pub.beat, memory_order_relaxed);
	char why[128];
	snprintf(why, sizeof(why), "worker %d: no event loop iteration for %.1fs\n", w,
	         (double)(now - b) / 1e9);
	plain(c, 503, "Service Unavailable", "", why, head_only);
}

static void
on_request(struct metrics_server *m, unsigned i)
{
	struct mconn *c = &m->conn[i];
	struct http_req r;
	int n = http_req_parse(c->in, c->inlen, &r);

	if (n == 0 && c->inlen < sizeof(c->in)) {
		arm_recv(m, i);
		return;
	}
	if (n == 0 || n == -431)
		plain(c, 431, "Request Header Fields Too Large", "", "request head too large\n",
		      false);
	else if (n < 0)
		plain(c, 400, "Bad Request", "", "bad request\n", false);
	else if (r.method == HTTP_OTHER)
		plain(c, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", "GET or HEAD only\n",
		      false);
	else if (r.path_len == 8 && memcmp(r.path, "/metrics", 8) == 0)
		serve_metrics(m, c, r.method == HTTP_HEAD);
	else if (r.path_len == 8 && memcmp(r.path, "/healthz", 8) == 0)
		serve_health(m, c, r.method == HTTP_HEAD);
	else
		plain(c, 404, "Not Found", "", "not found: try /metrics or /healthz\n",
		      r.method == HTTP_HEAD);
	if (c->outlen == 0) {
		conn_close(m, i);
		return;
	}
	arm_send(m, i);
}

static void
on_accept(struct metrics_server *m, int res, unsigned flags)
{
	if (!(flags & IORING_CQE_F_MORE)) {
		/* After an error (EMFILE...) not at once: on the next tick. */
		if (res < 0)
			m->accept_wanted = true;
		else
			arm_accept(m);
	}
	if (res < 0)
		return;
	for (unsigned i = 0; i < METRICS_CONNS_MAX; i++) {
		struct mconn *c = &m->conn[i];
		if (c->fd >= 0)
			continue;
		c->fd = res;
		c->inlen = 0;
		c->deadline = now_ns() + METRICS_CONN_TIMEOUT_NS;
		int one = 1;
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		arm_recv(m, i);
		return;
	}
	close(res); /* METRICS_CONNS_MAX scrapes at once already */
}

static bool
handle(struct metrics_server *m, struct io_uring_cqe *cqe)
{
	uint64_t d = cqe->user_data;
	unsigned op = (unsigned)(d >> 48), i = (unsigned)(d >> 16) & 0xffff;
	uint16_t gen = (uint16_t)d;
	struct mconn *c = i < METRICS_CONNS_MAX ? &m->conn[i] : NULL;

	switch (op) {
	case M_ACCEPT:
		on_accept(m, cqe->res, cqe->flags);
		return true;
	case M_STOP:
		return false;
	case M_TICK: {
		uint64_t now = now_ns();
		for (unsigned k = 0; k < METRICS_CONNS_MAX; k++)
			if (m->conn[k].fd >= 0 && now >= m->conn[k].deadline)
				conn_close(m, k);
		if (m->accept_wanted) {
			m->accept_wanted = false;
			arm_accept(m);
		}
		arm_tick(m);
		return true;
	}
	case M_RECV:
		if (c == NULL || c->fd < 0 || c->gen != gen)
			return true;
		c->recv_inflight = false;
		if (c->closing || cqe->res <= 0) {
			conn_close(m, i);
			return true;
		}
		c->inlen += (size_t)cqe->res;
		on_request(m, i);
		return true;
	case M_SEND:
		if (c == NULL || c->fd < 0 || c->gen != gen)
			return true;
		c->send_inflight = false;
		if (c->closing || cqe->res <= 0) {
			conn_close(m, i);
			return true;
		}
		c->sent += (size_t)cqe->res;
		if (c->sent < c->outlen)
			arm_send(m, i);
		else
			conn_close(m, i);
		return true;
	}
	return true;
}

static void *
serve(void *arg)
{
	struct metrics_server *m = arg;
	struct log_buf lb = {0};

	snprintf(lb.tag, sizeof(lb.tag), "metrics");
	log_set_thread_buf(&lb);
	for (bool run = true; run;) {
		struct io_uring_cqe *cqe;
		int r = io_uring_submit_and_wait(&m->ring, 1);
		if (r < 0 && r != -EINTR)
			panic("metrics: io_uring_submit_and_wait: %s", strerror(-r));
		unsigned head, n = 0;
		io_uring_for_each_cqe(&m->ring, head, cqe)
		{
			run = handle(m, cqe) && run;
			n++;
		}
		io_uring_cq_advance(&m->ring, n);
		log_flush();
	}
	log_flush();
	log_set_thread_buf(NULL);
	return NULL;
}

int
metrics_start(struct metrics_server *m, struct worker *ws, unsigned n, struct client_table *clients)
{
	m->ws = ws;
	m->n = n;
	m->clients = clients;
	m->snaps = calloc(n, sizeof(*m->snaps));
	m->ages = calloc(n, sizeof(*m->ages));
	if (m->snaps == NULL || m->ages == NULL)
		return -ENOMEM;
	for (unsigned i = 0; i < METRICS_CONNS_MAX; i++)
		m->conn[i].fd = -1;
	m->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (m->stop_fd < 0)
		return -errno;
	int r = io_uring_queue_init(2 * METRICS_CONNS_MAX + 8, &m->ring, 0);
	if (r < 0)
		return r;
	arm_accept(m);
	arm_stop(m);
	arm_tick(m);
	r = pthread_create(&m->thread, NULL, serve, m);
	if (r != 0) {
		io_uring_queue_exit(&m->ring);
		return -r;
	}
	m->started = true;
	log_notice("metrics on http://%s/metrics and /healthz", m->text);
	return 0;
}

void
metrics_stop(struct metrics_server *m)
{
	if (m == NULL)
		return;
	if (m->started) {
		uint64_t one = 1;
		if (write(m->stop_fd, &one, sizeof(one)) != sizeof(one))
			panic("metrics: eventfd write: %s", strerror(errno));
		pthread_join(m->thread, NULL);
		for (unsigned i = 0; i < METRICS_CONNS_MAX; i++)
			if (m->conn[i].fd >= 0) {
				close(m->conn[i].fd);
				free(m->conn[i].out);
			}
		io_uring_queue_exit(&m->ring);
	}
	if (m->stop_fd >= 0)
		close(m->stop_fd);
	close(m->lfd);
	free(m->snaps);
	free(m->ages);
	free(m);
}
