/*
 * test_milter.c - the edges of the milter core's API (engine/milter/milter.h)
 * that dialogues do not reach: bad arguments to milter_init and the stage
 * calls, -ENOBUFS leaving a partly full output untouched, -EBUSY and
 * -EINVAL changing nothing, -EDEADLK from both callbacks, milter_fail()
 * from the event callback, -EPIPE after a failure, the getters' names.
 * The golden dialogues are in test_milter_dialogues.c.
 *
 * Ownership: each test owns its struct fix (the core, its output buffer)
 * on the heap: struct milter holds a 64 KiB carry buffer.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "milter.h"

struct fix {
	struct milter m;
	struct milter_out out;
	struct milter_ops ops;
	char buf[MILTER_OUT_MIN];
	unsigned nev;
	enum milter_ev_type last;
	enum milter_verdict verdict;
	int in_cb_rc;      /* what a call from the callback returned */
	bool fail_in_cb;   /* the event callback calls milter_fail() */
	bool reenter;      /* the macro callback calls a stage call */
	const char *value; /* every macro's value */
};

static void
on_event(void *arg, const struct milter_event *ev)
{
	struct fix *f = arg;
	f->nev++;
	f->last = ev->type;
	f->verdict = ev->verdict;
	f->in_cb_rc = milter_helo(&f->m, "x");
	assert_int_equal(milter_feed(&f->m, "c", 1), -EDEADLK);
	assert_int_equal(milter_eom(&f->m), -EDEADLK);
	if (f->fail_in_cb)
		milter_fail(&f->m, "change refused");
}

static const char *
on_macro(void *arg, const char *name)
{
	struct fix *f = arg;
	(void)name;
	if (f->reenter)
		f->in_cb_rc = milter_quit(&f->m);
	return f->value;
}

static struct fix *
fix_new(const struct milter_conf *conf)
{
	struct fix *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->out.buf = f->buf;
	f->out.cap = sizeof(f->buf);
	f->ops.event = on_event;
	f->ops.macro = on_macro;
	assert_int_equal(milter_init(&f->m, conf, &f->out, &f->ops, f), 0);
	return f;
}

/* Feed a packet: command c, data d[0, n). */
static int
feed_pkt(struct fix *f, char c, const void *d, size_t n)
{
	char p[256];
	assert_true(n + 5 <= sizeof(p));
	uint32_t len = (uint32_t)n + 1;
	p[0] = (char)(len >> 24);
	p[1] = (char)(len >> 16);
	p[2] = (char)(len >> 8);
	p[3] = (char)len;
	p[4] = c;
	if (n > 0)
		memcpy(p + 5, d, n);
	return milter_feed(&f->m, p, n + 5);
}

/* The milter's OPTNEG: it takes actions act and protocol flags proto. */
static void
optneg_reply(struct fix *f, uint32_t act, uint32_t proto)
{
	const uint32_t w[3] = {6, act, proto};
	char d[12];
	for (int i = 0; i < 3; i++) {
		d[4 * i] = (char)(w[i] >> 24);
		d[4 * i + 1] = (char)(w[i] >> 16);
		d[4 * i + 2] = (char)(w[i] >> 8);
		d[4 * i + 3] = (char)w[i];
	}
	assert_int_equal(feed_pkt(f, 'O', d, 12), 0);
	assert_int_equal(f->last, MILTER_EV_NEGOTIATED);
	f->out.len = 0;
}

static void
negotiate(struct fix *f, uint32_t act, uint32_t proto)
{
	assert_int_equal(milter_negotiate(&f->m), MILTER_WAIT);
	optneg_reply(f, act, proto);
}

/* A call that waits, then the milter's "continue". */
static void
answered(struct fix *f, int rc)
{
	assert_int_equal(rc, MILTER_WAIT);
	assert_int_equal(feed_pkt(f, 'c', NULL, 0), 0);
}

/* Open a message up to its data stage (or its eoh), each stage answered. */
static void
open_msg(struct fix *f, bool eoh)
{
	const char *argv[] = {"<a@b>"};
	answered(f, milter_mail(&f->m, argv, 1));
	answered(f, milter_rcpt(&f->m, argv, 1));
	answered(f, milter_data(&f->m));
	if (eoh)
		answered(f, milter_eoh(&f->m));
	f->out.len = 0;
}

/* Negotiated and connected, no reply due. */
static struct fix *
fix_ready(uint32_t act, uint32_t proto)
{
	struct fix *f = fix_new(NULL);
	negotiate(f, act, proto);
	answered(f, milter_connect(&f->m, "[192.0.2.1]", MILTER_FAM_INET, 25, "192.0.2.1"));
	f->out.len = 0;
	return f;
}

static void
test_init_args(void **state)
{
	(void)state;
	static struct milter m;
	struct milter_out out = {NULL, 0, 0};
	struct milter_ops ops = {on_event, NULL};
	struct milter_ops noev = {NULL, NULL};
	struct milter_conf bad_act = {0x200, 0}, bad_proto = {0, MILTER_P_RCPT_REJ};
	assert_int_equal(milter_init(NULL, NULL, &out, &ops, NULL), -EINVAL);
	assert_int_equal(milter_init(&m, NULL, NULL, &ops, NULL), -EINVAL);
	assert_int_equal(milter_init(&m, NULL, &out, NULL, NULL), -EINVAL);
	assert_int_equal(milter_init(&m, NULL, &out, &noev, NULL), -EINVAL);
	assert_int_equal(milter_init(&m, &bad_act, &out, &ops, NULL), -EINVAL);
	assert_int_equal(milter_init(&m, &bad_proto, &out, &ops, NULL), -EINVAL);
	assert_int_equal(milter_init(&m, NULL, &out, &ops, NULL), 0);
	assert_int_equal(milter_waiting(&m), MILTER_ST_NONE);
	assert_int_equal(milter_version(&m), 0);
	assert_false(milter_failed(&m));
	assert_string_equal(milter_why(&m), "");
}

/* -ENOBUFS: nothing written, what the buffer held untouched; the call
 * works once there is room. */
static void
test_enobufs(void **state)
{
	(void)state;
	struct fix *f = fix_new(NULL);
	f->out.cap = 30;
	memset(f->buf, 'z', 30);
	f->out.len = 20;
	assert_int_equal(milter_negotiate(&f->m), -ENOBUFS);
	assert_int_equal(f->out.len, 20);
	for (size_t i = 0; i < 30; i++)
		assert_int_equal(f->buf[i], 'z');
	assert_int_equal(milter_waiting(&f->m), MILTER_ST_NONE);
	/* A caller that broke the buffer (len over cap) gets -ENOBUFS too. */
	f->out.len = 31;
	assert_int_equal(milter_negotiate(&f->m), -ENOBUFS);
	f->out.len = 13;
	assert_int_equal(milter_negotiate(&f->m), MILTER_WAIT);
	assert_int_equal(f->out.len, 30);
	assert_memory_equal(f->buf, "zzzzzzzzzzzzz\0\0\0\x0dO\0\0\0\x06", 22);
	free(f);
}

/* -ENOBUFS at a stage with macros: neither packet is written, and the
 * message state does not move. */
static void
test_enobufs_stage(void **state)
{
	(void)state;
	struct fix *f = fix_ready(0, 0);
	f->value = "v";
	const char *argv[] = {"<a@example.net>"};
	f->out.cap = 20;
	assert_int_equal(milter_mail(&f->m, argv, 1), -ENOBUFS);
	assert_int_equal(f->out.len, 0);
	assert_int_equal(milter_rcpt(&f->m, argv, 1), -EINVAL); /* no MAIL yet */
	f->out.cap = sizeof(f->buf);
	assert_int_equal(milter_mail(&f->m, argv, 1), MILTER_WAIT);
	assert_int_equal(milter_waiting(&f->m), MILTER_ST_MAIL);
	free(f);
}

static void
test_ebusy_einval(void **state)
{
	(void)state;
	struct fix *f = fix_new(NULL);
	const char *argv[] = {"<a@b>"};
	assert_int_equal(milter_helo(&f->m, "h"), -EINVAL);
	assert_int_equal(milter_negotiate(&f->m), MILTER_WAIT);
	size_t len = f->out.len;
	assert_int_equal(milter_negotiate(&f->m), -EBUSY);
	assert_int_equal(milter_connect(&f->m, "x", MILTER_FAM_UNKNOWN, 0, NULL), -EBUSY);
	assert_int_equal(milter_abort(&f->m), -EBUSY);
	assert_int_equal(milter_quit(&f->m), -EBUSY);
	assert_int_equal(f->out.len, len);
	f->out.len = 0;
	optneg_reply(f, 0, 0);
	assert_int_equal(milter_mail(&f->m, argv, 1), -EINVAL);
	/* Bad arguments. */
	assert_int_equal(milter_connect(&f->m, NULL, MILTER_FAM_UNKNOWN, 0, NULL), -EINVAL);
	assert_int_equal(milter_connect(&f->m, "x", MILTER_FAM_INET, 25, NULL), -EINVAL);
	assert_int_equal(milter_connect(&f->m, "x", (enum milter_family)'7', 25, "a"), -EINVAL);
	assert_int_equal(f->out.len, 0);
	answered(f, milter_connect(&f->m, "x", MILTER_FAM_UNKNOWN, 0, NULL));
	f->out.len = 0;
	assert_int_equal(milter_helo(&f->m, NULL), -EINVAL);
	assert_int_equal(milter_mail(&f->m, NULL, 1), -EINVAL);
	assert_int_equal(milter_mail(&f->m, argv, 0), -EINVAL);
	const char *nul[] = {"<a@b>", NULL};
	assert_int_equal(milter_mail(&f->m, nul, 2), -EINVAL);
	const char *many[65];
	for (int i = 0; i < 65; i++)
		many[i] = "X=1";
	assert_int_equal(milter_mail(&f->m, many, 65), -EINVAL);
	assert_int_equal(f->out.len, 0);
	answered(f, milter_mail(&f->m, many, 64));
	answered(f, milter_rcpt(&f->m, argv, 1));
	answered(f, milter_data(&f->m));
	assert_int_equal(milter_header(&f->m, NULL, 0, "v", 1), -EINVAL);
	assert_int_equal(milter_header(&f->m, "A", 1, NULL, 1), -EINVAL);
	answered(f, milter_header(&f->m, "A", 1, NULL, 0));
	answered(f, milter_eoh(&f->m));
	f->out.len = 0;
	assert_int_equal(milter_body(&f->m, NULL, 1), -EINVAL);
	static char big[MILTER_CHUNK_MAX + 1];
	assert_int_equal(milter_body(&f->m, big, sizeof(big)), -EINVAL);
	assert_int_equal(f->out.len, 0);
	assert_int_equal(milter_body(&f->m, NULL, 0), MILTER_WAIT);
	assert_int_equal(f->out.len, 5);
	free(f);
}

/* A header or a set of macros over the packet limit is refused. */
static void
test_packet_limit(void **state)
{
	(void)state;
	struct fix *f = fix_ready(0, 0);
	static char v[MILTER_CHUNK_MAX];
	memset(v, 'v', sizeof(v) - 1);
	f->value = v; /* every macro is 65534 octets: too much for one packet */
	const char *argv[] = {"<a@b>"};
	assert_int_equal(milter_mail(&f->m, argv, 1), -EINVAL);
	assert_int_equal(f->out.len, 0);
	f->value = NULL;
	open_msg(f, false);
	/* name, NUL, value, NUL: 65536 data octets, one too many. */
	assert_int_equal(milter_header(&f->m, "Ab", 2, v, sizeof(v) - 3), -EINVAL);
	assert_int_equal(milter_header(&f->m, "A", 1, v, sizeof(v) - 3), MILTER_WAIT);
	assert_int_equal(f->out.len, 5 + MILTER_CHUNK_MAX);
	free(f);
}

/* Only the getters from a callback: the event callback and the macro
 * callback alike. */
static void
test_edeadlk(void **state)
{
	(void)state;
	struct fix *f = fix_new(NULL);
	negotiate(f, 0, 0);
	assert_int_equal(f->in_cb_rc, -EDEADLK);
	f->reenter = true;
	f->value = "v";
	f->in_cb_rc = 0;
	assert_int_equal(milter_connect(&f->m, "x", MILTER_FAM_UNKNOWN, 0, NULL), MILTER_WAIT);
	assert_int_equal(f->in_cb_rc, -EDEADLK);
	free(f);
}

/* milter_fail() from the event callback: the feed stops there (the rest
 * of it is not read) and returns -EPIPE; the reason is the caller's. */
static void
test_fail_in_callback(void **state)
{
	(void)state;
	struct fix *f = fix_ready(MILTER_ACT_ADDHDRS, 0);
	open_msg(f, true);
	assert_int_equal(milter_eom(&f->m), MILTER_WAIT);
	static const char two[] = "\0\0\0\x06hA\0bc\0"
	                          "\0\0\0\x01"
	                          "a";
	f->fail_in_cb = true;
	unsigned n = f->nev;
	assert_int_equal(milter_feed(&f->m, two, sizeof(two) - 1), -EPIPE);
	assert_int_equal(f->nev, n + 1);
	assert_int_equal(f->last, MILTER_EV_ADD_HEADER);
	assert_true(milter_failed(&f->m));
	assert_string_equal(milter_why(&f->m), "change refused");
	assert_int_equal(milter_waiting(&f->m), MILTER_ST_NONE);
	assert_int_equal(milter_feed(&f->m, "\0\0\0\1a", 5), -EPIPE);
	assert_int_equal(milter_quit(&f->m), -EPIPE);
	free(f);
}

/* After -EPROTO every call returns -EPIPE; the why stays the first. */
static void
test_epipe_after_eproto(void **state)
{
	(void)state;
	struct fix *f = fix_new(NULL);
	const char *argv[] = {"<a@b>"};
	assert_int_equal(milter_negotiate(&f->m), MILTER_WAIT);
	assert_int_equal(feed_pkt(f, 'c', NULL, 0), -EPROTO);
	assert_true(milter_failed(&f->m));
	assert_string_equal(milter_why(&f->m),
	                    "milter sent 'c' (continue) in the option negotiation");
	f->out.len = 0;
	assert_int_equal(milter_feed(&f->m, "x", 1), -EPIPE);
	assert_int_equal(milter_negotiate(&f->m), -EPIPE);
	assert_int_equal(milter_connect(&f->m, "x", MILTER_FAM_UNKNOWN, 0, NULL), -EPIPE);
	assert_int_equal(milter_mail(&f->m, argv, 1), -EPIPE);
	assert_int_equal(milter_abort(&f->m), -EPIPE);
	assert_int_equal(milter_quit(&f->m), -EPIPE);
	milter_fail(&f->m, "later");
	assert_string_equal(milter_why(&f->m),
	                    "milter sent 'c' (continue) in the option negotiation");
	assert_int_equal(f->out.len, 0);
	/* milter_fail with no reason still fails. */
	struct fix *g = fix_new(NULL);
	milter_fail(&g->m, NULL);
	assert_true(milter_failed(&g->m));
	assert_string_equal(milter_why(&g->m), "failed");
	assert_int_equal(milter_negotiate(&g->m), -EPIPE);
	free(g);
	free(f);
}

/* MILTER_OUT_MIN takes the largest writes: a full body chunk, and a stage
 * with macros near the packet limit. */
static void
test_out_min(void **state)
{
	(void)state;
	struct fix *f = fix_ready(0, 0);
	static char v[40000];
	memset(v, 'v', sizeof(v) - 1);
	f->value = v;
	const char *argv[] = {"<a@b>"};
	/* Macros of mail are seven names: only one fits with a value this
	 * large, so this one is refused... */
	assert_int_equal(milter_mail(&f->m, argv, 1), -EINVAL);
	v[20000] = '\0';
	/* ...and these (i and six more, 7 * 20000 > 65535) too. */
	assert_int_equal(milter_mail(&f->m, argv, 1), -EINVAL);
	v[9000] = '\0';
	assert_int_equal(milter_mail(&f->m, argv, 1), MILTER_WAIT);
	assert_true(f->out.len > 7 * 9000);
	assert_true(f->out.len <= MILTER_OUT_MIN);
	free(f);
}

static void
test_names(void **state)
{
	(void)state;
	assert_string_equal(milter_stage_name(MILTER_ST_NONE), "none");
	assert_string_equal(milter_stage_name(MILTER_ST_EOM), "eom");
	assert_string_equal(milter_stage_name(MILTER_ST_COUNT), "?");
	assert_string_equal(milter_verdict_name(MILTER_V_CONTINUE), "continue");
	assert_string_equal(milter_verdict_name(MILTER_V_SHUTDOWN), "shutdown");
	assert_string_equal(milter_verdict_name((enum milter_verdict)99), "?");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_init_args),        cmocka_unit_test(test_enobufs),
	    cmocka_unit_test(test_enobufs_stage),    cmocka_unit_test(test_ebusy_einval),
	    cmocka_unit_test(test_packet_limit),     cmocka_unit_test(test_edeadlk),
	    cmocka_unit_test(test_fail_in_callback), cmocka_unit_test(test_epipe_after_eproto),
	    cmocka_unit_test(test_out_min),          cmocka_unit_test(test_names),
	};
	return cmocka_run_group_tests_name("milter", tests, NULL, NULL);
}
