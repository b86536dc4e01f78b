/*
 * milter_io.c - milter conversations on the worker's ring, and the MAIL
 * and RCPT checks they answer (milter_io.h; the message content is
 * milter_msg.c's).
 *
 * One conversation (struct mf_slot) per milter and connection, for the
 * connection's life, as Postfix's smtpd keeps one per session: a socket,
 * IORING_OP_CONNECT, then one receive armed at all times (so a milter that
 * goes away is noticed at once) and at most one send in flight, of the
 * core's output buffer. The core (milter.c) decides what is written and
 * reads what comes back; this file only moves bytes, keeps the timeouts
 * and turns verdicts into SMTP replies.
 *
 * A milter that cannot be reached, breaks the protocol, closes or does not
 * answer in time gets milter_default_action: accept leaves it out of the
 * rest of the connection; tempfail and reject answer every later MAIL (and
 * the message in progress) with 451 4.7.1 or 550 5.7.1, as Postfix does.
 *
 * Ownership rules: milter_internal.h. Verdicts are copied out of the
 * core's callback into the slot and acted on after milter_feed()
 * returns: the core may not be called from its own callback.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_CLEANUP
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "log.h"
#include "milter_internal.h"
#include "ringmx_version.h"
#include "ud.h"

enum { K_CONNECT = 1, K_SEND, K_RECV };

static void slot_run(struct mf_slot *s);
static void check_eval(struct mf_conn *mc);

static uint64_t
now_ns(const struct mf_pool *p)
{
	return *p->env.now;
}

static struct io_uring_sqe *
get_sqe(struct mf_pool *p)
{
	return p->env.get_sqe(p->env.ctx);
}

static uint64_t
slot_ud(const struct mf_slot *s, unsigned kind)
{
	return ud_make(s->pool->env.ud_op, s->gen, kind, s->idx);
}

/* ---- pool ---- */

int
mf_pool_new(struct mf_pool **out, const struct mf_env *env, unsigned slots, unsigned conns,
            char *err, size_t errlen)
{
	struct mf_pool *p = calloc(1, sizeof(*p));

	if (p == NULL) {
		snprintf(err, errlen, "milter pool: out of memory");
		return -ENOMEM;
	}
	p->env = *env;
	p->nslots = slots;
	p->map_len = (size_t)slots * sizeof(struct mf_slot);
	/* Mapped once, touched when used: an idle slot costs no memory. */
	void *m = mmap(NULL, p->map_len, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	p->free = calloc(slots, sizeof(*p->free));
	if (m == MAP_FAILED || p->free == NULL) {
		snprintf(err, errlen, "milter pool of %u conversations: %s", slots,
		         strerror(errno));
		if (m != MAP_FAILED)
			munmap(m, p->map_len);
		free(p->free);
		free(p);
		return -ENOMEM;
	}
	p->slots = m;
	p->nconns = conns;
	p->conns_len = (size_t)conns * sizeof(struct mf_conn);
	m = mmap(NULL, p->conns_len, PROT_READ | PROT_WRITE,
	         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED) {
		snprintf(err, errlen, "milter state of %u connections: %s", conns, strerror(errno));
		munmap(p->slots, p->map_len);
		free(p->free);
		free(p);
		return -ENOMEM;
	}
	p->conns = m;
	for (uint32_t i = 0; i < slots; i++)
		p->free[i] = slots - 1 - i;
	p->nfree = slots;
	mf_sink_init(p);
	*out = p;
	return 0;
}

void
mf_pool_free(struct mf_pool *p)
{
	if (p == NULL)
		return;
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct mf_slot *s = &p->slots[i];
		if (s->st != MF_S_FREE && s->fd >= 0)
			close(s->fd);
	}
	while (p->free_msgs != NULL) {
		struct mf_msg *m = p->free_msgs;
		p->free_msgs = m->next_free;
		free(m->data.p);
		free(m->mods.p);
		free(m->body.p);
		free(m->rcpts.p);
		free(m);
	}
	munmap(p->slots, p->map_len);
	munmap(p->conns, p->conns_len);
	free(p->free);
	free(p);
}

/* ---- the core's callbacks ---- */

static void
copy_reply(struct smtp_check_reply *r, const char *text, size_t len)
{
	/* The milter's lines, CRLF-terminated; what does not fit one reply
	 * is cut at a line end (the last kept line made final). */
	if (len > MF_REPLY_KEEP) {
		size_t cut = 0;
		for (size_t i = 0; i + 1 < MF_REPLY_KEEP && i + 1 < len; i++)
			if (text[i] == '\r' && text[i + 1] == '\n')
				cut = i;
		len = cut > 0 ? cut : MF_REPLY_KEEP;
	}
	memcpy(r->text, text, len);
	/* The last line kept is the final one: "550-" becomes "550 ". */
	size_t last = 0;
	for (size_t i = 0; i + 1 < len; i++)
		if (text[i] == '\r' && text[i + 1] == '\n')
			last = i + 2;
	if (len >= last + 4 && r->text[last + 3] == '-')
		r->text[last + 3] = ' ';
	memcpy(r->text + len, "\r\n", 2);
	r->len = len + 2;
}

static void
core_event(void *arg, const struct milter_event *ev)
{
	struct mf_slot *s = arg;

	switch (ev->type) {
	case MILTER_EV_NEGOTIATED:
		s->negotiated = true;
		return;
	case MILTER_EV_VERDICT:
		s->have_verdict = true;
		s->verdict = (uint8_t)ev->verdict;
		s->vstage = (uint8_t)ev->stage;
		if (ev->verdict == MILTER_V_REPLYCODE)
			copy_reply(&s->vreply, ev->text, ev->text_len);
		return;
	case MILTER_EV_PROGRESS:
		if (s->deadline != 0)
			s->deadline = now_ns(s->pool) + s->timeout;
		return;
	default:
		if (s->owner != NULL)
			mf_msg_event(s, ev);
		return;
	}
}

static const char *
core_macro(void *arg, const char *name)
{
	struct mf_slot *s = arg;
	struct mf_conn *mc = s->owner;

	if (mc == NULL)
		return NULL;
	const struct smtp_session *ss = mc->session;
	const struct smtp_peer *pe = mc->peer;
	const char *a = pe->addr_text;
	if (strncmp(a, "IPv6:", 5) == 0)
		a += 5;
	if (strcmp(name, "j") == 0)
		return ss->conf->hostname;
	if (strcmp(name, "{daemon_name}") == 0)
		return "ringmxd";
	if (strcmp(name, "v") == 0)
		return "ringmx " RINGMX_VERSION;
	if (strcmp(name, "{client_addr}") == 0) {
		snprintf(s->mv_addr, sizeof(s->mv_addr), "%s", a);
		return s->mv_addr;
	}
	if (strcmp(name, "{client_name}") == 0)
		return "unknown"; /* no reverse lookup (Postfix's text for none) */
	if (strcmp(name, "_") == 0) {
		snprintf(s->mv_us, sizeof(s->mv_us), "unknown [%s]", a);
		return s->mv_us;
	}
	if (strcmp(name, "{client_port}") == 0) {
		snprintf(s->mv_port, sizeof(s->mv_port), "%u", pe->port);
		return s->mv_port;
	}
	if (strcmp(name, "i") == 0)
		return ss->tx != NULL && ss->qid[0] ? ss->qid : NULL;
	if (strcmp(name, "{mail_addr}") == 0)
		return ss->state >= SMTP_S_MAIL || mc->check_what == SMTP_CHECK_MAIL ? ss->mail_from
		                                                                     : NULL;
	if (strcmp(name, "{rcpt_addr}") == 0) {
		if (mc->check_what != SMTP_CHECK_RCPT)
			return NULL;
		size_t n = strlen(mc->check_addr);
		snprintf(s->mv_us, sizeof(s->mv_us), "%.*s", n >= 2 ? (int)n - 2 : 0,
		         mc->check_addr + 1);
		return s->mv_us;
	}
	if (ss->tls_active &&
	    (strcmp(name, "{tls_version}") == 0 || strcmp(name, "{cipher}") == 0)) {
		const char *sp = strchr(ss->tls_info, ' ');
		size_t vl = sp != NULL ? (size_t)(sp - ss->tls_info) : strlen(ss->tls_info);
		if (name[1] == 't') {
			snprintf(s->mv_tlsv, sizeof(s->mv_tlsv), "%.*s", (int)vl, ss->tls_info);
			return s->mv_tlsv;
		}
		snprintf(s->mv_cipher, sizeof(s->mv_cipher), "%s", sp != NULL ? sp + 1 : "");
		return s->mv_cipher;
	}
	return NULL;
}

static const struct milter_ops core_ops = {
    .event = core_event,
    .macro = core_macro,
};

/* ---- I/O ---- */

static void
slot_release_check(struct mf_slot *s)
{
	if (s->st != MF_S_ZOMBIE || s->send_inflight || s->recv_inflight || s->connect_inflight)
		return;
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	s->st = MF_S_FREE;
	s->gen = (s->gen + 1) & UD_GEN_MASK;
	s->pool->free[s->pool->nfree++] = s->idx;
}

static void
arm_recv(struct mf_slot *s)
{
	if (s->recv_inflight || s->st != MF_S_OPEN)
		return;
	struct io_uring_sqe *sqe = get_sqe(s->pool);
	io_uring_prep_recv(sqe, s->fd, s->ibuf, sizeof(s->ibuf), 0);
	io_uring_sqe_set_data64(sqe, slot_ud(s, K_RECV));
	s->recv_inflight = true;
}

void
mf_slot_flush(struct mf_slot *s)
{
	if (s->send_inflight || s->out.len == 0 || s->st != MF_S_OPEN)
		return;
	struct io_uring_sqe *sqe = get_sqe(s->pool);
	io_uring_prep_send(sqe, s->fd, s->obuf, s->out.len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, slot_ud(s, K_SEND));
	s->send_inflight = true;
	s->send_len = s->out.len;
}

void
mf_slot_wait(struct mf_slot *s, uint64_t timeout)
{
	s->timeout = timeout;
	s->deadline = now_ns(s->pool) + timeout;
	if (s->owner != NULL && s->owner->ops->timer != NULL)
		s->owner->ops->timer(s->owner);
}

static const char *const default_names[] = {"tempfail", "accept", "reject"};
/* Postfix's texts for a milter's tempfail and reject without a reply code. */
static const char r_tempfail[] = "451 4.7.1 Service unavailable - try again later\r\n";
static const char r_reject[] = "550 5.7.1 Command rejected\r\n";

static void
set_reply(struct smtp_check_reply *r, const char *t, size_t len)
{
	memcpy(r->text, t, len);
	r->len = len;
}

void
mf_default_reply(const struct mf_conn *mc, struct smtp_check_reply *r)
{
	if (mc->default_action == MILTER_DEFAULT_REJECT)
		set_reply(r, r_reject, sizeof(r_reject) - 1);
	else
		set_reply(r, r_tempfail, sizeof(r_tempfail) - 1);
}

/* An SMTP reply for a refusing verdict. */
void
mf_verdict_reply(const struct mf_slot *s, struct smtp_check_reply *r)
{
	if (s->verdict == MILTER_V_REPLYCODE)
		*r = s->vreply;
	else if (s->verdict == MILTER_V_TEMPFAIL)
		set_reply(r, r_tempfail, sizeof(r_tempfail) - 1);
	else
		set_reply(r, r_reject, sizeof(r_reject) - 1);
}

void
mf_slot_fail(struct mf_slot *s, const char *why)
{
	struct mf_conn *mc = s->owner;

	if (s->st == MF_S_DONE || s->st == MF_S_ZOMBIE || s->st == MF_S_FREE)
		return;
	s->pool->env.stats->milter_failures++;
	s->st = MF_S_DONE;
	s->deadline = 0;
	bool was_active = s->active;
	s->active = false;
	s->msg_out = true;
	if (s->fd >= 0)
		shutdown(s->fd, SHUT_RDWR); /* ends a receive in flight */
	if (mc == NULL)
		return;
	log_info("milter %s: %s; default action %s for [%s]:%u", s->ep, why,
	         default_names[mc->default_action], mc->peer->addr_text, mc->peer->port);
	if (was_active && mc->default_action != MILTER_DEFAULT_ACCEPT && !mc->denied) {
		mc->denied = true;
		mf_default_reply(mc, &mc->deny);
	}
	if (mc->check_pending)
		check_eval(mc);
	if (mc->msg != NULL)
		mf_content_step(s);
}

static void
on_connect(struct mf_slot *s, int res)
{
	s->connect_inflight = false;
	if (s->st != MF_S_CONNECTING)
		return;
	if (res < 0) {
		char why[96];
		snprintf(why, sizeof(why), "cannot connect: %s", strerror(-res));
		s->st = MF_S_OPEN; /* so that the failure is counted and applied */
		mf_slot_fail(s, why);
		return;
	}
	s->st = MF_S_OPEN;
	arm_recv(s);
	int r = milter_negotiate(&s->core);
	if (r < 0) {
		mf_slot_fail(s, "cannot negotiate");
		return;
	}
	mf_slot_wait(s, s->owner->t_connect);
	mf_slot_flush(s);
}

static void
on_send(struct mf_slot *s, int res)
{
	s->send_inflight = false;
	if (s->st != MF_S_OPEN)
		return;
	if (res < 0) {
		char why[96];
		snprintf(why, sizeof(why), "send: %s", strerror(-res));
		mf_slot_fail(s, why);
		return;
	}
	size_t done = (size_t)res;
	assert(done <= s->out.len);
	memmove(s->obuf, s->obuf + done, s->out.len - done);
	s->out.len -= done;
	if (s->out.len > 0) {
		mf_slot_flush(s);
		return;
	}
	slot_run(s); /* the content may have more to write */
}

static void
on_recv(struct mf_slot *s, int res)
{
	s->recv_inflight = false;
	if (s->st != MF_S_OPEN)
		return;
	if (res <= 0) {
		char why[96];
		snprintf(why, sizeof(why), "%s",
		         res == 0 ? "closed the connection" : strerror(-res));
		mf_slot_fail(s, why);
		return;
	}
	if (s->addr.ss_family != AF_UNIX) {
		/* libmilter writes a change and the verdict after it as two
		 * small packets: with Nagle on its side, the second waits for
		 * our ACK of the first, which Linux delays ~40 ms. Quick ACKs
		 * (not sticky: set again after every receive) avoid that. */
		int one = 1;
		(void)setsockopt(s->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	}
	int r = milter_feed(&s->core, s->ibuf, (size_t)res);
	if (r < 0) {
		char why[MILTER_WHY_MAX + 32];
		snprintf(why, sizeof(why), "protocol error: %s", milter_why(&s->core));
		mf_slot_fail(s, why);
		return;
	}
	arm_recv(s);
	slot_run(s);
}

void
mf_on_cqe(struct mf_pool *p, const struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	uint32_t idx = ud_idx(ud);

	if (idx >= p->nslots)
		return;
	struct mf_slot *s = &p->slots[idx];
	if (s->st == MF_S_FREE || s->gen != ud_gen(ud))
		return;
	switch (ud_kind(ud)) {
	case K_CONNECT:
		on_connect(s, cqe->res);
		break;
	case K_SEND:
		on_send(s, cqe->res);
		break;
	case K_RECV:
		on_recv(s, cqe->res);
		break;
	default:
		break;
	}
	slot_release_check(s);
}

/* ---- stages before the content ---- */

/* The slot's answer to the connection's current check. */
static void
check_answer(struct mf_slot *s, int res)
{
	s->check_seq = s->owner->check_seq;
	s->cres = (uint8_t)res;
	check_eval(s->owner);
}

/* Send what the check needs: the HELO when it changed, then MAIL or RCPT. */
static void
check_send(struct mf_slot *s)
{
	struct mf_conn *mc = s->owner;
	const struct smtp_session *ss = mc->session;
	int r;

	if (!mc->check_pending || s->check_seq == mc->check_seq)
		return;
	if (!s->active || (mc->check_what == SMTP_CHECK_RCPT && s->msg_out)) {
		check_answer(s, SMTP_CHECK_OK);
		return;
	}
	if (!s->connect_done || milter_waiting(&s->core) != MILTER_ST_NONE || s->helo_wait)
		return; /* comes back here when the answer is in */
	if (strcmp(s->helo, ss->helo) != 0 || s->helo_tls != ss->tls_active) {
		snprintf(s->helo, sizeof(s->helo), "%s", ss->helo);
		s->helo_tls = ss->tls_active;
		r = milter_helo(&s->core, ss->helo[0] ? ss->helo : "unknown");
		if (r == MILTER_WAIT) {
			s->helo_wait = true;
			mf_slot_wait(s, mc->t_command);
			mf_slot_flush(s);
			return;
		}
		if (r < 0) {
			mf_slot_fail(s, "cannot send HELO");
			return;
		}
	}
	const char *argv[1] = {mc->check_addr};
	if (mc->check_what == SMTP_CHECK_MAIL) {
		s->msg_out = false;
		r = milter_mail(&s->core, argv, 1);
	} else {
		r = milter_rcpt(&s->core, argv, 1);
	}
	if (r == MILTER_WAIT) {
		mf_slot_wait(s, mc->t_command);
		mf_slot_flush(s);
		return;
	}
	if (r < 0) {
		mf_slot_fail(s, "cannot send the envelope");
		return;
	}
	mf_slot_flush(s);
	check_answer(s, SMTP_CHECK_OK); /* negotiated away or no reply due */
}

static void
connect_stage(struct mf_slot *s)
{
	const struct smtp_peer *pe = s->owner->peer;
	const char *a = pe->addr_text;
	char host[80];

	if (strncmp(a, "IPv6:", 5) == 0)
		a += 5;
	snprintf(host, sizeof(host), "[%s]", a);
	enum milter_family fam = pe->addr.ss_family == AF_INET6  ? MILTER_FAM_INET6
	                         : pe->addr.ss_family == AF_INET ? MILTER_FAM_INET
	                                                         : MILTER_FAM_UNKNOWN;
	int r = milter_connect(&s->core, host, fam, pe->port, a);
	if (r < 0) {
		mf_slot_fail(s, "cannot send the connect stage");
		return;
	}
	if (r == MILTER_WAIT) {
		mf_slot_wait(s, s->owner->t_command);
	} else {
		s->deadline = 0;
		s->connect_done = true;
	}
	mf_slot_flush(s);
}

/* A verdict before the content. */
static void
early_verdict(struct mf_slot *s)
{
	struct mf_conn *mc = s->owner;
	enum milter_verdict v = s->verdict;
	enum milter_stage stage = s->vstage;

	s->deadline = 0;
	switch (stage) {
	case MILTER_ST_CONNECT:
	case MILTER_ST_HELO:
		if (stage == MILTER_ST_CONNECT)
			s->connect_done = true;
		else
			s->helo_wait = false;
		if (v == MILTER_V_ACCEPT) {
			s->active = false; /* out of this connection */
		} else if (v != MILTER_V_CONTINUE && v != MILTER_V_DISCARD && !mc->denied) {
			/* Refused at connect or HELO: every MAIL of the
			 * session gets it (docs/milter.md). */
			mc->denied = true;
			mf_verdict_reply(s, &mc->deny);
			log_info("milter %s: %s at %s for [%s]:%u: %.*s", s->ep,
			         milter_verdict_name(v), milter_stage_name(stage),
			         mc->peer->addr_text, mc->peer->port, (int)mc->deny.len - 2,
			         mc->deny.text);
		}
		return;
	case MILTER_ST_MAIL:
	case MILTER_ST_RCPT: {
		int res = SMTP_CHECK_OK;
		if (v == MILTER_V_ACCEPT) {
			s->msg_out = true;
		} else if (v == MILTER_V_DISCARD) {
			res = MF_DISCARD;
		} else if (v != MILTER_V_CONTINUE) {
			res = SMTP_CHECK_REJECT;
			mf_verdict_reply(s, &s->creply);
			if (stage == MILTER_ST_MAIL)
				s->msg_out = true;
		}
		check_answer(s, res);
		return;
	}
	default:
		return;
	}
}

/* Every verdict, whatever its stage, counted once as it comes in. */
static void
verdict_count(const struct mf_slot *s)
{
	struct ringmx_stats *st = s->pool->env.stats;

	if (s->verdict == MILTER_V_ACCEPT)
		st->milter_accepts++;
	else if (s->verdict == MILTER_V_REJECT ||
	         (s->verdict == MILTER_V_REPLYCODE && s->vreply.text[0] == '5'))
		st->milter_rejects++;
	else if (s->verdict == MILTER_V_TEMPFAIL || s->verdict == MILTER_V_REPLYCODE)
		st->milter_tempfails++;
}

/* After bytes came in or went out: act on a verdict, then send what is
 * next for this slot. */
static void
slot_run(struct mf_slot *s)
{
	if (s->owner == NULL || s->st != MF_S_OPEN)
		return;
	if (s->negotiated && !s->connect_done && milter_waiting(&s->core) == MILTER_ST_NONE &&
	    !s->have_verdict) {
		connect_stage(s);
		if (s->st != MF_S_OPEN)
			return;
	}
	if (s->have_verdict) {
		verdict_count(s);
		if (s->verdict == MILTER_V_CONNFAIL || s->verdict == MILTER_V_SHUTDOWN) {
			s->have_verdict = false;
			mf_slot_fail(s, s->verdict == MILTER_V_SHUTDOWN
			                    ? "shut down"
			                    : "connection failure verdict");
			return;
		}
		if (s->vstage >= MILTER_ST_DATA) {
			mf_content_step(s); /* consumes it */
			return;
		}
		s->have_verdict = false;
		early_verdict(s);
		if (s->st != MF_S_OPEN || s->owner == NULL)
			return;
	}
	if (s->owner->check_pending)
		check_send(s);
	if (s->owner != NULL && s->owner->msg != NULL && s->st == MF_S_OPEN)
		mf_content_step(s);
}

/* ---- the connection's calls ---- */

struct mf_conn *
mf_conn_open(struct mf_pool *p, uint32_t idx, void *owner, const struct milters_conf *cfg,
             const struct mf_conn_ops *ops, const struct smtp_session *ss,
             const struct smtp_peer *peer)
{
	assert(idx < p->nconns);
	struct mf_conn *mc = &p->conns[idx];

	memset(mc, 0, sizeof(*mc));
	mc->pool = p;
	mc->owner = owner;
	mc->ops = ops;
	mc->session = ss;
	mc->peer = peer;
	mc->default_action = (uint8_t)cfg->default_action;
	mc->t_connect = cfg->connect_timeout;
	mc->t_command = cfg->command_timeout;
	mc->t_content = cfg->content_timeout;
	mc->n = (uint8_t)cfg->n;
	for (size_t i = 0; i < cfg->n; i++) {
		const struct milter_endpoint *e = &cfg->m[i];
		if (p->nfree == 0) {
			p->env.stats->milter_no_slot++;
			log_info(
			    "milter %s: milter_conversation_limit (%u) reached; default action %s "
			    "for [%s]:%u",
			    e->text, p->nslots, default_names[mc->default_action], peer->addr_text,
			    peer->port);
			if (mc->default_action != MILTER_DEFAULT_ACCEPT && !mc->denied) {
				mc->denied = true;
				mf_default_reply(mc, &mc->deny);
			}
			mc->slot[i] = NULL;
			continue;
		}
		struct mf_slot *s = &p->slots[p->free[--p->nfree]];
		uint32_t sidx = (uint32_t)(s - p->slots), gen = s->gen;
		/* The head only: the buffers are written before they are read. */
		memset(s, 0, offsetof(struct mf_slot, core));
		s->pool = p;
		s->owner = mc;
		s->idx = sidx;
		s->gen = gen;
		s->which = (uint8_t)i;
		s->active = true;
		s->check_seq = 0;
		mc->slot[i] = s;
		p->env.stats->milter_conversations++;
		snprintf(s->ep, sizeof(s->ep), "%s", e->text);
		memcpy(&s->addr, &e->addr, e->addrlen);
		s->addrlen = e->addrlen;
		s->out.buf = s->obuf;
		s->out.cap = sizeof(s->obuf);
		s->out.len = 0;
		milter_init(&s->core, &(struct milter_conf){0}, &s->out, &core_ops, s);
		s->fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		s->st = MF_S_CONNECTING;
		if (s->fd < 0) {
			char why[96];
			snprintf(why, sizeof(why), "socket: %s", strerror(errno));
			s->st = MF_S_OPEN;
			mf_slot_fail(s, why);
			continue;
		}
		if (s->addr.ss_family != AF_UNIX) {
			/* One small packet, then its answer, stage after stage:
			 * Nagle and delayed ACKs would add ~40 ms to each message. */
			int one = 1;
			(void)setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		struct io_uring_sqe *sqe = get_sqe(p);
		io_uring_prep_connect(sqe, s->fd, (struct sockaddr *)&s->addr, s->addrlen);
		io_uring_sqe_set_data64(sqe, slot_ud(s, K_CONNECT));
		s->connect_inflight = true;
		mf_slot_wait(s, mc->t_connect);
	}
	return mc;
}

static void
check_eval(struct mf_conn *mc)
{
	struct smtp_check_reply r;
	int res = SMTP_CHECK_OK;

	if (!mc->check_pending)
		return;
	for (unsigned i = 0; i < mc->n; i++) {
		struct mf_slot *s = mc->slot[i];
		if (s == NULL || s->owner != mc || !s->active)
			continue;
		if (s->check_seq != mc->check_seq)
			return; /* still waiting for this one */
	}
	if (mc->denied) {
		res = SMTP_CHECK_REJECT;
		r = mc->deny;
	} else {
		for (unsigned i = 0; i < mc->n; i++) {
			struct mf_slot *s = mc->slot[i];
			if (s == NULL || s->check_seq != mc->check_seq)
				continue;
			if (s->cres == SMTP_CHECK_REJECT) {
				res = SMTP_CHECK_REJECT;
				r = s->creply;
				break;
			}
			if (s->cres == MF_DISCARD)
				mc->tx_discard = true;
		}
	}
	mc->check_pending = false;
	if (mc->check_sync) {
		mc->check_res = res;
		if (res == SMTP_CHECK_REJECT)
			mc->check_reply = r;
		return;
	}
	mc->ops->check_done(mc, res, res == SMTP_CHECK_REJECT ? &r : NULL);
}

int
mf_check(struct mf_conn *mc, enum smtp_check_point what, const char *addr, size_t len,
         struct smtp_check_reply *r)
{
	if (what != SMTP_CHECK_MAIL && what != SMTP_CHECK_RCPT)
		return SMTP_CHECK_OK;
	if (mc->denied) {
		*r = mc->deny;
		return SMTP_CHECK_REJECT;
	}
	if (what == SMTP_CHECK_MAIL)
		mc->tx_discard = false;
	if (len > SMTP_PATH_MAX)
		len = SMTP_PATH_MAX;
	mc->check_addr[0] = '<';
	memcpy(mc->check_addr + 1, addr, len);
	mc->check_addr[len + 1] = '>';
	mc->check_addr[len + 2] = '\0';
	mc->check_what = (uint8_t)what;
	mc->check_seq++;
	mc->check_pending = true;
	mc->check_sync = true;
	for (unsigned i = 0; i < mc->n && mc->check_pending; i++)
		if (mc->slot[i] != NULL)
			check_send(mc->slot[i]);
	check_eval(mc);
	mc->check_sync = false;
	if (mc->check_pending)
		return SMTP_CHECK_PENDING;
	if (mc->check_res == SMTP_CHECK_REJECT)
		*r = mc->check_reply;
	return mc->check_res;
}

void
mf_check_cancel(struct mf_conn *mc)
{
	mc->check_pending = false;
}

uint64_t
mf_deadline(const struct mf_conn *mc)
{
	uint64_t d = 0;

	if (mc->msg != NULL && mc->msg->deferred)
		return *mc->pool->env.now;
	for (unsigned i = 0; i < mc->n; i++) {
		const struct mf_slot *s = mc->slot[i];
		if (s != NULL && s->owner == mc && s->deadline != 0 && (d == 0 || s->deadline < d))
			d = s->deadline;
	}
	return d;
}

void
mf_expire(struct mf_conn *mc)
{
	uint64_t now = now_ns(mc->pool);

	if (mf_msg_deferred(mc))
		return;
	for (unsigned i = 0; i < mc->n; i++) {
		struct mf_slot *s = mc->slot[i];
		if (s == NULL || s->owner != mc || s->deadline == 0 || now < s->deadline)
			continue;
		char why[96];
		enum milter_stage w = milter_waiting(&s->core);
		snprintf(why, sizeof(why), "no reply %s within %gs",
		         s->st == MF_S_CONNECTING ? "to connect"
		         : w == MILTER_ST_NONE    ? "in time"
		                                  : milter_stage_name(w),
		         (double)s->timeout / 1e9);
		mc->pool->env.stats->milter_timeouts++;
		if (s->st == MF_S_CONNECTING)
			s->st = MF_S_OPEN;
		mf_slot_fail(s, why);
	}
}

void
mf_conn_close(struct mf_conn *mc)
{
	struct mf_pool *p = mc->pool;

	if (p == NULL)
		return;
	mf_msg_conn_closed(mc);
	mc->check_pending = false;
	for (unsigned i = 0; i < mc->n; i++) {
		struct mf_slot *s = mc->slot[i];
		if (s == NULL)
			continue;
		mc->slot[i] = NULL;
		bool quit = false;
		if (s->st == MF_S_OPEN && !s->send_inflight && s->out.len == 0 &&
		    milter_waiting(&s->core) == MILTER_ST_NONE && milter_quit(&s->core) > 0) {
			mf_slot_flush(s); /* a polite QUIT; the close follows its send */
			quit = true;
		}
		s->owner = NULL;
		s->st = MF_S_ZOMBIE;
		s->deadline = 0;
		if (s->recv_inflight || s->connect_inflight) {
			struct io_uring_sqe *sqe = get_sqe(p);
			io_uring_prep_cancel64(
			    sqe, slot_ud(s, s->recv_inflight ? K_RECV : K_CONNECT), 0);
			/* Its CQE names no slot (mf_on_cqe drops it). */
			io_uring_sqe_set_data64(sqe, ud_make(p->env.ud_op, 0, 0, UD_IDX_LIMIT - 1));
		}
		/* A send stuck on a milter that stopped reading ends too. */
		if (!quit && s->fd >= 0)
			shutdown(s->fd, SHUT_RDWR);
		slot_release_check(s);
	}
	mc->n = 0;
}
