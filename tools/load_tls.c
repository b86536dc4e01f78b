/*
 * tools/load_tls.c - the TLS client of ringmx-load (--tls, --starttls): wolfSSL over
 * memory I/O, so the ring keeps doing all socket work.
 *
 * Ownership: ringmx-load (issues 4 and 5). Only load_engine.c calls this file; nothing
 * here touches a socket, blocks, or knows about SMTP.
 *
 * Model (iouring-notes.md section 8):
 *   - one WOLFSSL_CTX per worker thread, so no CTX state is shared between threads and
 *     no lock is taken on the hot path; wolfSSL's global client session cache is turned
 *     off for the same reason (it is one mutex-protected table for the process) and
 *     --tls-resume keeps the session object itself, per connection slot;
 *   - one WOLFSSL per connection, created at connect and freed at close;
 *   - the memory I/O is engine/tls/tls_io.c, the glue every ringmx TLS session uses;
 *   - receive callback: copies from a view (struct load_tls io.in/in_len) of the
 *     provided buffer the ring delivered. The engine sets the view, drives wolfSSL
 *     until it wants more input (by then the view is empty, wolfSSL keeps a partial
 *     record in its own input buffer) and only then returns the buffer to the ring,
 *     so no per-connection ciphertext input buffer is needed;
 *   - send callback: appends to the connection's ciphertext output buffer, which the
 *     engine sends with its one-send-per-loop batching. The engine only encrypts when a
 *     whole record fits, so WANT_WRITE is never returned in practice (it would be a
 *     bug, reported as a TLS error, not a stall).
 *
 * Certificate verification is off unless --tls-verify CAFILE is given: this is a load
 * tool pointed at test servers with self-signed certificates. With --tls-verify and
 * --sni the name is checked too.
 */
#include "load.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ecc.h>

static void errstr(int err, char *buf, size_t n)
{
	char tmp[WOLFSSL_MAX_ERROR_SZ];
	snprintf(buf, n, "%s (%d)", tls_io_strerror(err, tmp, sizeof(tmp)), err);
}

/* "X25519:P-256". Parsed here because Debian's wolfSSL_CTX_set1_groups_list knows
 * only the NIST curves; the first group gets the TLS 1.3 key share. */
static int set_groups(WOLFSSL_CTX *ctx, const char *list, bool tls12_only, char *err,
                      size_t errlen)
{
	static const struct { const char *name; int id; } names[] = {
		{ "X25519", WOLFSSL_ECC_X25519 }, { "X448", WOLFSSL_ECC_X448 },
		{ "P-256", WOLFSSL_ECC_SECP256R1 }, { "P-384", WOLFSSL_ECC_SECP384R1 },
		{ "P-521", WOLFSSL_ECC_SECP521R1 }, { "ffdhe2048", WOLFSSL_FFDHE_2048 },
		{ "ffdhe3072", WOLFSSL_FFDHE_3072 },
	};
	int ids[16];
	int n = 0;
	const char *p = list;
	while (*p) {
		size_t len = strcspn(p, ":,");
		size_t i = 0;
		while (i < sizeof(names) / sizeof(names[0]) &&
		       (strlen(names[i].name) != len || strncasecmp(p, names[i].name, len)))
			i++;
		if (i == sizeof(names) / sizeof(names[0]) || n == 16) {
			snprintf(err, errlen, "--tls-groups: unknown group '%.*s' (X25519, X448, P-256, "
			         "P-384, P-521, ffdhe2048, ffdhe3072)", (int)len, p);
			return -1;
		}
		ids[n++] = names[i].id;
		p += len;
		if (*p)
			p++;
	}
	int ok = n > 0;
	if (ok && tls12_only) {
		/* wolfSSL_CTX_set_groups refuses a TLS 1.2-only method; the supported_groups
		 * extension is what 1.2 negotiates with. */
		for (int i = 0; i < n && ok; i++)
			ok = wolfSSL_CTX_UseSupportedCurve(ctx, (word16)ids[i]) == WOLFSSL_SUCCESS;
	} else if (ok) {
		ok = wolfSSL_CTX_set_groups(ctx, ids, n) == WOLFSSL_SUCCESS;
	}
	if (!ok) {
		snprintf(err, errlen, "--tls-groups: wolfSSL does not accept '%s'", list);
		return -1;
	}
	return 0;
}

void *load_tls_ctx_new(const struct load_opts *o, char *err, size_t errlen)
{
	WOLFSSL_METHOD *m;
	switch (o->tls_version) {
	case 12: m = wolfTLSv1_2_client_method(); break;
	case 13: m = wolfTLSv1_3_client_method(); break;
	default: m = wolfSSLv23_client_method(); break;
	}
	WOLFSSL_CTX *ctx = m ? wolfSSL_CTX_new(m) : NULL;
	if (!ctx) {
		snprintf(err, errlen, "wolfSSL_CTX_new failed");
		return NULL;
	}
	/* TLS 1.0/1.1 are never measured: nobody should deploy them. */
	if (o->tls_version == 0 && wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "cannot set the minimum TLS version to 1.2");
		goto fail;
	}
		tls_io_ctx_setup(ctx);
	wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
	if (o->tls_verify) {
		if (wolfSSL_CTX_load_verify_locations(ctx, o->tls_verify, NULL) != WOLFSSL_SUCCESS) {
			snprintf(err, errlen, "--tls-verify: cannot load CA certificates from '%s'",
			         o->tls_verify);
			goto fail;
		}
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, NULL);
	} else {
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	}
	if (o->tls_ciphers && wolfSSL_CTX_set_cipher_list(ctx, o->tls_ciphers) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "--tls-ciphers: wolfSSL accepts none of '%s'", o->tls_ciphers);
		goto fail;
	}
	if (o->tls_groups && set_groups(ctx, o->tls_groups, o->tls_version == 12, err, errlen) < 0)
		goto fail;
	if (o->sni && wolfSSL_CTX_UseSNI(ctx, WOLFSSL_SNI_HOST_NAME, o->sni,
	                                 (unsigned short)strlen(o->sni)) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "--sni: cannot use '%s'", o->sni);
		goto fail;
	}
	return ctx;
fail:
	wolfSSL_CTX_free(ctx);
	return NULL;
}

/* Called on the worker thread that used ctx. */
void load_tls_ctx_free(void *ctx)
{
	if (!ctx)
		return;
	wolfSSL_CTX_free(ctx);
#ifdef FP_ECC
	/* Debian builds wolfSSL with FP_ECC: a thread-local cache of precomputed points
	 * that only this call, on this thread, frees. */
	wc_ecc_fp_free();
#endif
}

/* Main thread, before the workers: global init, then a trial CTX so a bad option
 * (unknown cipher, unreadable CA file) is a usage error with exit 2, not N thread
 * failures. */
int load_tls_init(const struct load_opts *o, char *err, size_t errlen)
{
	if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "wolfSSL_Init failed");
		return -1;
	}
	void *ctx = load_tls_ctx_new(o, err, errlen);
	if (!ctx)
		return -1;
	load_tls_ctx_free(ctx);
	return 0;
}

void load_tls_cleanup(void)
{
	wolfSSL_Cleanup();
}

int load_tls_start(void *ctx, struct load_tls *t, const struct load_opts *o)
{
	WOLFSSL *ssl = wolfSSL_new(ctx);
	if (!ssl)
		return -1;
	tls_io_bind(&t->io, ssl);
	if (o->tls_verify && o->sni && wolfSSL_check_domain_name(ssl, o->sni) != WOLFSSL_SUCCESS) {
		tls_io_unbind(&t->io);
		wolfSSL_free(ssl);
		return -1;
	}
	if (o->tls_resume) {
		/* TLS 1.2 needs the empty SessionTicket extension to get a ticket; TLS 1.3
		 * tickets come anyway. Without a ticket a 1.2 server may still resume by
		 * session id from its own cache. */
		if (o->tls_version != 13)
			wolfSSL_UseSessionTicket(ssl);
		if (t->sess)
			wolfSSL_set_session(ssl, t->sess);
	}
	return 0;
}

int load_tls_handshake(struct load_tls *t, char *err, size_t errlen)
{
	int e = 0;
	int r = tls_io_handshake(&t->io, false, &e);
	if (r == TLS_IO_ERROR)
		errstr(e, err, errlen);
	return r;
}

long load_tls_read(struct load_tls *t, char *buf, size_t cap, char *err, size_t errlen)
{
	int e = 0;
	long r = tls_io_read(&t->io, buf, cap, &e);
	if (r == TLS_IO_ERROR)
		errstr(e, err, errlen);
	return r;
}

int load_tls_write(struct load_tls *t, const void *p, size_t n, char *err, size_t errlen)
{
	int e = 0;
	if (tls_io_write(&t->io, p, n, &e) == 0)
		return 0;
	errstr(e, err, errlen);
	return -1;
}

void load_tls_describe(const struct load_tls *t, char *buf, size_t n, bool *resumed)
{
	WOLFSSL *ssl = t->io.ssl;
	const char *curve = wolfSSL_get_curve_name(ssl);
	snprintf(buf, n, "%s %s%s%s", wolfSSL_get_version(ssl), wolfSSL_get_cipher_name(ssl),
	         curve ? " " : "", curve ? curve : "");
	*resumed = wolfSSL_session_reused(ssl) != 0;
}

void load_tls_end(struct load_tls *t, bool keep_session)
{
	WOLFSSL *ssl = t->io.ssl;
	if (!ssl)
		return;
	if (keep_session && t->io.done) {
		/* After QUIT the TLS 1.3 NewSessionTicket has been read, so this is the
		 * newest resumable state of the connection. */
		WOLFSSL_SESSION *s = wolfSSL_get1_session(ssl);
		if (s && wolfSSL_SESSION_is_resumable(s)) {
			if (t->sess)
				wolfSSL_SESSION_free(t->sess);
			t->sess = s;
		} else if (s) {
			wolfSSL_SESSION_free(s);
		}
	}
	tls_io_unbind(&t->io);
	wolfSSL_free(ssl);
}

void load_tls_forget(struct load_tls *t)
{
	load_tls_end(t, false);
	if (t->sess) {
		wolfSSL_SESSION_free(t->sess);
		t->sess = NULL;
	}
}
