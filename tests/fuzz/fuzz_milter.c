/*
 * fuzz_milter.c - libFuzzer target for the milter protocol core
 * (engine/milter/milter.c, milter_reply.c). Byte 0 picks the output
 * buffer size, whether the option exchange is answered by a well-formed
 * OPTNEG (actions and protocol flags from bytes 1..4, within the offer) or
 * by the input itself, and which macros have values. The rest is a script
 * of actions, each one control byte: feed the next (ctl >> 3) + 1 bytes
 * as milter replies (each feed in its own exact-size heap block, so ASan
 * flags an over-read); feed one packet with a correct length (command and
 * data from the input), to get past the framing; call the next stage of
 * a conversation (connect, helo, mail, rcpt x2, data, header x2, eoh,
 * body x2, eom, then the next message); abort; quit; milter_fail.
 *
 * Owner: the milter core's module (engine/milter/).
 *
 * Invariants checked: every return is one the API documents; a failed
 * call writes nothing; the output never exceeds its capacity and holds
 * whole, well-formed packets (known command octets, data within
 * MILTER_CHUNK_MAX, a SMFIC_MACRO names a stage), nothing after QUIT;
 * modifications, progress and body parts come only while the end of
 * message is answered, verdicts only with no reply left due; every view
 * in an event lies in the feed or the carry buffer; a REPLYCODE verdict
 * has a 4xx/5xx code that starts its text, within MILTER_REPLY_MAX; after
 * a failure every call returns -EPIPE.
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "milter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fz {
	struct milter m;
	struct milter_out out;
	struct milter_ops ops;
	const uint8_t *feed;
	size_t feed_len;
	unsigned macros; /* bit i: names[i] has a value */
	unsigned step;   /* the next stage of the script */
	bool quit;
	char buf[MILTER_OUT_MIN];
};

static const char *const names[] = {"j",           "i", "{client_addr}", "{mail_addr}",
                                    "{rcpt_addr}", "_", "{cipher}",      "{auth_authen}"};
#define NNAMES (sizeof(names) / sizeof(names[0]))

static void
view(const struct fz *f, const void *p, size_t n)
{
	const uint8_t *b = p;
	if (n == 0)
		return;
	assert(b != NULL);
	bool in_feed = b >= f->feed && b + n <= f->feed + f->feed_len;
	bool in_carry = b >= (const uint8_t *)f->m.carry &&
	                b + n <= (const uint8_t *)f->m.carry + sizeof(f->m.carry);
	assert(in_feed || in_carry);
}

static void
on_event(void *arg, const struct milter_event *ev)
{
	struct fz *f = arg;
	assert(milter_feed(&f->m, "c", 1) == -EDEADLK);
	assert(milter_quit(&f->m) == -EDEADLK);
	switch (ev->type) {
	case MILTER_EV_NEGOTIATED:
		assert(milter_version(&f->m) >= MILTER_VERSION_MIN &&
		       milter_version(&f->m) <= MILTER_VERSION);
		assert((milter_actions(&f->m) & ~(uint32_t)MILTER_ACT_ALL) == 0);
		break;
	case MILTER_EV_VERDICT:
		assert(milter_waiting(&f->m) == MILTER_ST_NONE);
		assert(ev->stage > MILTER_ST_NEGOTIATE && ev->stage < MILTER_ST_COUNT);
		assert(ev->verdict != MILTER_V_SKIP || ev->stage == MILTER_ST_BODY);
		if (ev->verdict == MILTER_V_REPLYCODE) {
			assert(ev->code >= 400 && ev->code < 600);
			assert(ev->text_len >= 3 && ev->text_len <= MILTER_REPLY_MAX);
			assert(ev->text[0] - '0' == (int)ev->code / 100);
			view(f, ev->text, ev->text_len);
		}
		break;
	case MILTER_EV_REPL_BODY:
		view(f, ev->data, ev->data_len);
		assert(milter_waiting(&f->m) == MILTER_ST_EOM);
		break;
	default:
		assert(milter_waiting(&f->m) == MILTER_ST_EOM);
		assert(ev->type <= MILTER_EV_PROGRESS);
		view(f, ev->name, ev->name_len);
		view(f, ev->value, ev->value_len);
		view(f, ev->addr, ev->addr_len);
		view(f, ev->args, ev->args_len);
		view(f, ev->text, ev->text_len);
		break;
	}
}

static const char *
on_macro(void *arg, const char *name)
{
	struct fz *f = arg;
	for (unsigned i = 0; i < NNAMES; i++)
		if (strcmp(name, names[i]) == 0)
			return f->macros & (1u << i) ? "value" : NULL;
	return f->macros & 0x80 ? "other" : NULL;
}

static uint32_t
get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* What a call wrote: whole, well-formed packets; then the output is sent. */
static void
drain(struct fz *f, size_t before, int rc)
{
	assert(f->out.len <= f->out.cap);
	if (rc < 0)
		assert(f->out.len == before);
	const uint8_t *p = (const uint8_t *)f->out.buf;
	size_t at = 0;
	while (at < f->out.len) {
		assert(!f->quit);
		assert(f->out.len - at >= 5);
		uint32_t len = get_u32(p + at);
		assert(len >= 1 && len - 1 <= MILTER_CHUNK_MAX && f->out.len - at - 4 >= len);
		uint8_t cmd = p[at + 4];
		assert(memchr("ABCDEHLMNOQRT", cmd, 13) != NULL);
		if (cmd == 'D')
			assert(len >= 2 && memchr("CHMRTNE", p[at + 5], 7) != NULL);
		if (cmd == 'Q')
			f->quit = true;
		at += 4 + (size_t)len;
	}
	f->out.len = 0;
}

static void
rc_check(struct fz *f, int rc)
{
	assert(rc == MILTER_SKIPPED || rc == MILTER_SENT || rc == MILTER_WAIT || rc == -ENOBUFS ||
	       rc == -EBUSY || rc == -EINVAL || rc == -EPIPE);
	if (milter_failed(&f->m))
		assert(rc == -EPIPE);
}

/* The next stage of the script. */
static void
stage(struct fz *f, const uint8_t *arg, size_t n)
{
	static const char *const mail[] = {"<a@example.net>", "SIZE=10"};
	static const char *const rcpt[] = {"<b@example.test>"};
	size_t before = f->out.len;
	int rc;
	switch (f->step) {
	case 0:
		rc = milter_connect(&f->m, "client",
		                    n > 0 && arg[0] & 1 ? MILTER_FAM_INET6 : MILTER_FAM_UNIX, 25,
		                    "::1");
		break;
	case 1:
		rc = milter_helo(&f->m, "helo");
		break;
	case 2:
		rc = milter_mail(&f->m, mail, 2);
		break;
	case 3:
	case 4:
		rc = milter_rcpt(&f->m, rcpt, 1);
		break;
	case 5:
		rc = milter_data(&f->m);
		break;
	case 6:
	case 7:
		rc = milter_header(&f->m, "Subject", 7, (const char *)arg, n);
		break;
	case 8:
		rc = milter_eoh(&f->m);
		break;
	case 9:
	case 10:
		rc = milter_body(&f->m, arg, n);
		break;
	default:
		rc = milter_eom(&f->m);
		break;
	}
	rc_check(f, rc);
	drain(f, before, rc);
	if (rc == -EINVAL && (f->step == 6 || f->step == 7))
		rc = 0; /* a header value with a NUL: skip it */
	if (rc >= 0)
		f->step =
		    f->step >= 11 ? 1u + (arg != NULL && n > 0 && (arg[0] & 2) != 0) : f->step + 1;
}

static int
feed(struct fz *f, const uint8_t *p, size_t n)
{
	uint8_t *copy = malloc(n ? n : 1);
	assert(copy != NULL);
	if (n > 0)
		memcpy(copy, p, n);
	f->feed = copy;
	f->feed_len = n;
	int rc = milter_feed(&f->m, copy, n);
	f->feed = NULL;
	f->feed_len = 0;
	free(copy);
	assert(rc == 0 || rc == -EPROTO || rc == -EPIPE);
	if (rc == -EPROTO)
		assert(milter_failed(&f->m) && milter_why(&f->m)[0] != '\0');
	if (milter_failed(&f->m))
		assert(milter_waiting(&f->m) == MILTER_ST_NONE);
	return rc;
}

/* One packet with a correct length field: command p[0], data p[1, n). */
static void
feed_packet(struct fz *f, const uint8_t *p, size_t n)
{
	uint8_t pkt[5 + 256];
	assert(n >= 1 && n <= 257);
	uint32_t len = (uint32_t)n;
	pkt[0] = (uint8_t)(len >> 24);
	pkt[1] = (uint8_t)(len >> 16);
	pkt[2] = (uint8_t)(len >> 8);
	pkt[3] = (uint8_t)len;
	memcpy(pkt + 4, p, n);
	feed(f, pkt, n + 4);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fz f;
	if (size < 5)
		return 0;
	memset(&f, 0, offsetof(struct fz, buf));
	f.out.buf = f.buf;
	f.out.cap = data[0] & 1 ? 64 + (data[0] >> 2) : sizeof(f.buf);
	f.ops.event = on_event;
	f.ops.macro = on_macro;
	f.macros = data[1];
	assert(milter_init(&f.m, NULL, &f.out, &f.ops, &f) == 0);
	int rc = milter_negotiate(&f.m);
	assert(rc == MILTER_WAIT);
	drain(&f, 0, rc);
	size_t at = 2;
	if (data[0] & 2) {
		/* A well-formed OPTNEG within the offer, with a macro list. */
		uint8_t o[1 + 12 + 4 + 8] = {'O', 0, 0, 0, (uint8_t)(2 + data[2] % 5)};
		uint32_t act = (uint32_t)data[3] << 1 | (data[2] >> 7);
		uint32_t proto = (get_u32(data + 1) & MILTER_P_OFFER);
		for (int i = 0; i < 4; i++) {
			o[5 + i] = (uint8_t)(act >> (24 - 8 * i));
			o[9 + i] = (uint8_t)(proto >> (24 - 8 * i));
		}
		size_t n = 13;
		if (act & MILTER_ACT_SETSYMLIST) {
			memcpy(o + 13, "\0\0\0\0j i\0", 8);
			o[16] = (uint8_t)(data[4] % 7);
			n += 8;
		}
		feed_packet(&f, o, n);
		at = 5;
	}
	while (at < size) {
		uint8_t ctl = data[at++];
		size_t n = (size_t)(ctl >> 3) + 1;
		if (n > size - at)
			n = size - at;
		size_t before = f.out.len;
		switch (ctl & 7) {
		case 0:
		case 1:
			feed(&f, data + at, n);
			at += n;
			break;
		case 2:
			if (n > 0)
				feed_packet(&f, data + at, n);
			at += n;
			break;
		case 3:
		case 4:
			stage(&f, data + at, n);
			at += n;
			break;
		case 5:
			rc = milter_abort(&f.m);
			rc_check(&f, rc);
			drain(&f, before, rc);
			if (rc >= 0 && f.step > 2)
				f.step = 2; /* the next message */
			break;
		case 6:
			rc = milter_quit(&f.m);
			rc_check(&f, rc);
			drain(&f, before, rc);
			break;
		default:
			if (ctl == 0xff)
				milter_fail(&f.m, "fuzz");
			else
				stage(&f, NULL, 0);
			break;
		}
	}
	milter_fail(&f.m, "end");
	assert(milter_feed(&f.m, "c", 1) == -EPIPE);
	assert(milter_eom(&f.m) == -EPIPE);
	return 0;
}
