/*
 * relay_probe.c - address verification probes (relay.h, struct
 * relay_probe) on the relay's own outbound connections: each probe waits
 * in its next hop's probe queue, is handed to a ready connection before
 * the hop's deliveries (a client's session is waiting on it), goes out as
 * an SMTPC_TX_PROBE transaction of the client core (MAIL FROM:<>, RCPT,
 * then RSET or QUIT; never DATA), and its RCPT reply goes back to its
 * owner. The connection, TLS, timeouts and failover are relay_conn.c's,
 * unchanged: a probe is one more transaction on them.
 *
 * Ownership rules
 *  - A probe is its caller's memory (engine/policy/verify.c keeps them in
 *    a fixed array); the relay links it into hop->phead while queued and
 *    lends p->tx to the connection's core while on a connection. done is
 *    called exactly once per started probe, never from relay_probe_start(),
 *    and after it the relay holds no pointer to the probe.
 *  - Runs on the relay's worker thread only.
 */
#include "relay_internal.h"

enum { P_IDLE = 0, P_QUEUED, P_ON_CONN };

static void
probe_unlink(struct relay_probe *p)
{
	struct rhop *h = p->hop;
	assert(p->state == P_QUEUED);
	if (p->prev != NULL)
		p->prev->next = p->next;
	else
		h->phead = p->next;
	if (p->next != NULL)
		p->next->prev = p->prev;
	else
		h->ptail = p->prev;
	p->prev = p->next = NULL;
	p->state = P_IDLE;
}

static void
probe_finish(struct relay_probe *p, int code, const char *text, size_t len)
{
	p->state = P_IDLE;
	p->hop = NULL;
	if (len >= sizeof(p->text))
		len = sizeof(p->text) - 1;
	if (text != p->text)
		memmove(p->text, text, len);
	p->text[len] = '\0';
	p->code = code;
	p->text_len = len;
	p->done(p, code, p->text, len);
}

int
relay_probe_start(struct relay *r, struct relay_probe *p)
{
	assert(p->state == P_IDLE && p->done != NULL);
	if (r->draining)
		return -ESHUTDOWN;
	const char *at = memrchr(p->addr, '@', p->len);
	struct rhop *h = at != NULL ? rhop_for(r, at + 1, p->len - (size_t)(at + 1 - p->addr))
	                            : rhop_for(r, "", 0);
	if (h == NULL)
		return -ENOENT;
	if (h->fail_since != 0 && h->nready == 0 && r->now < h->retry_at) {
		/* What the relay's own mail gets meanwhile: no connection
		 * before retry_at. */
		const char *why = h->down_why[0] != '\0' ? h->down_why : "4.4.1 next hop not reachable";
		p->text_len = strlen(why);
		memcpy(p->text, why, p->text_len + 1);
		p->code = 451;
		return -EHOSTDOWN;
	}
	p->hop = h;
	p->state = P_QUEUED;
	p->next = NULL;
	p->prev = h->ptail;
	if (h->ptail != NULL)
		h->ptail->next = p;
	else
		h->phead = p;
	h->ptail = p;
	return 0; /* relay_poll's hop_pump hands it to a connection (or opens one) */
}

bool
relay_probe_cancel(struct relay *r, struct relay_probe *p)
{
	(void)r;
	if (p->state == P_ON_CONN)
		return false;
	if (p->state == P_QUEUED)
		probe_unlink(p);
	p->hop = NULL;
	return true;
}

/* The hop cannot be reached: every queued probe gets the reason. The
 * queue is taken whole first: a done may start a probe for this hop,
 * which the hop's retry_at (set before this) answers at once. */
void
probe_defer_all(struct rhop *h, const char *reason)
{
	snprintf(h->down_why, sizeof(h->down_why), "%s", reason);
	struct relay_probe *p = h->phead;
	h->phead = h->ptail = NULL;
	while (p != NULL) {
		struct relay_probe *pn = p->next;
		p->prev = p->next = NULL;
		probe_finish(p, 451, reason, strlen(reason));
		p = pn;
	}
}

/* Probes in flight on one connection: pipelined, they cost a MAIL, a RCPT
 * and a RSET each and no round trip of their own; lock-step, one. */
static uint32_t
probe_window(const struct oconn *c)
{
	/* Half the window at most: the hop's deliveries keep the rest,
	 * however many addresses a dictionary attack makes us verify. */
	return (smtpc_ext(&c->sc) & SMTPC_EXT_PIPELINING) ? RELAY_WINDOW / 2 : 1;
}

/* A probe behind a delivery waits for that whole message (its body, the
 * next hop's end-of-data filters): it takes such a connection only when
 * the hop may open no other (hop_pump opens one for waiting probes). */
bool
probe_conn_usable(const struct oconn *c)
{
	return c->nactive == 0 || c->hop->nconns >= c->r->cfg->relay.connections;
}

/* The address needs SMTPUTF8 from the next hop (RFC 6531 3.4): without
 * it a hop that has it refuses the RCPT, and the refusal would be taken
 * for an unknown user. */
static bool
addr_utf8(const char *a, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)a[i] >= 0x80)
			return true;
	return false;
}

/* Hand the hop's queued probes to c's client core. */
void
probe_fill(struct oconn *c)
{
	struct rhop *h = c->hop;
	while (c->st == C_READY && !c->r->draining && h->phead != NULL &&
	       c->nprobes < probe_window(c) && probe_conn_usable(c) &&
	       (smtpc_status(&c->sc) & SMTPC_ST_READY)) {
		struct relay_probe *p = h->phead;
		probe_unlink(p);
		p->rc = (struct smtpc_rcpt){.addr = p->addr, .len = p->len};
		p->tx = (struct smtpc_tx){
		    .from = "", .from_len = 0, .rcpt = &p->rc, .nrcpt = 1,
		    .flags = SMTPC_TX_PROBE | (addr_utf8(p->addr, p->len) ? SMTPC_TX_SMTPUTF8 : 0u),
		    .user = p};
		int rc = smtpc_submit(&c->sc, &p->tx);
		if (rc == -EBUSY) {
			/* SMTPC_TX_MAX unfinished with the deliveries: later. */
			p->state = P_QUEUED;
			p->hop = h;
			p->prev = NULL;
			p->next = h->phead;
			if (h->phead != NULL)
				h->phead->prev = p;
			else
				h->ptail = p;
			h->phead = p;
			return;
		}
		if (rc < 0) {
			static const char t[] = "5.1.3 bad address syntax for the next hop";
			probe_finish(p, 553, t, sizeof(t) - 1);
			continue;
		}
		p->state = P_ON_CONN;
		p->hop = h;
		c->nprobes++;
	}
}

/* SMTPC_EV_RCPT and SMTPC_EV_TX of a probe (conn_event): the reply is
 * kept, and given to the owner once the core is done with the tx. */
void
probe_event(struct oconn *c, const struct smtpc_event *ev)
{
	struct relay_probe *p = ev->tx->user;
	assert(p->state == P_ON_CONN);
	if (ev->type == SMTPC_EV_RCPT) {
		p->text_len = oconn_reply_text(&ev->reply, p->text, sizeof(p->text));
		p->code = ev->reply.code;
		return;
	}
	assert(ev->type == SMTPC_EV_TX && c->nprobes > 0);
	c->nprobes--;
	/* The core holds nothing of p now; done may start another probe
	 * (queued only: no call into any connection's core from here). */
	probe_finish(p, p->code, p->text, p->text_len);
}

/* A reload removed h (relay_set_conf): its queued probes go to their
 * domain's hop under the new routes, or get the reason when none is. */
void
probe_reroute(struct relay *r, struct rhop *h)
{
	struct relay_probe *p = h->phead;
	h->phead = h->ptail = NULL;
	while (p != NULL) {
		struct relay_probe *pn = p->next;
		p->prev = p->next = NULL;
		p->state = P_IDLE;
		p->hop = NULL;
		p->text_len = 0;
		if (relay_probe_start(r, p) < 0) {
			if (p->text_len == 0) {
				static const char t[] = "4.3.0 no next hop for the domain";
				memcpy(p->text, t, sizeof(t));
				p->text_len = sizeof(t) - 1;
			}
			probe_finish(p, 451, p->text, p->text_len);
		}
		p = pn;
	}
}
