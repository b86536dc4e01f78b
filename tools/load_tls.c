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
 *   - receive callback: copies from a view (struct load_tls in/in_len) of the
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

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	(void)ssl;
	struct load_tls *t = ctx;
	if (t->in_len == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	size_t k = (size_t)sz < t->in_len ? (size_t)sz : t->in_len;
	memcpy(buf, t->in, k);
	t->in += k;
	t->in_len -= k;
	return (int)k;
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	(void)ssl;
	struct load_tls *t = ctx;
	/* wolfSSL reuses buf after we return, so the copy is required. */
	if (t->out_len + (size_t)sz > t->out_cap)
		return WOLFSSL_CBIO_ERR_WANT_WRITE;
	memcpy(t->out + t->out_len, buf, (size_t)sz);
	t->out_len += (size_t)sz;
	return sz;
}

static void errstr(int err, char *buf, size_t n)
{
	char tmp[WOLFSSL_MAX_ERROR_SZ];
	wolfSSL_ERR_error_string_n((unsigned long)err, tmp, sizeof(tmp));
	snprintf(buf, n, "%s (%d)", tmp, err);
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
	wolfSSL_CTX_SetIORecv(ctx, io_recv);
	wolfSSL_CTX_SetIOSend(ctx, io_send);
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
	wolfSSL_SetIOReadCtx(ssl, t);
	wolfSSL_SetIOWriteCtx(ssl, t);
	if (o->tls_verify && o->sni)
		wolfSSL_check_domain_name(ssl, o->sni);
	if (o->tls_resume) {
		/* TLS 1.2 needs the empty SessionTicket extension to get a ticket; TLS 1.3
		 * tickets come anyway. Without a ticket a 1.2 server may still resume by
		 * session id from its own cache. */
		if (o->tls_version != 13)
			wolfSSL_UseSessionTicket(ssl);
		if (t->sess)
			wolfSSL_set_session(ssl, t->sess);
	}
	t->ssl = ssl;
	t->in = NULL;
	t->in_len = 0;
	t->hs_done = false;
	return 0;
}

int load_tls_handshake(struct load_tls *t, char *err, size_t errlen)
{
	int ret = wolfSSL_connect(t->ssl);
	if (ret == WOLFSSL_SUCCESS) {
		t->hs_done = true;
		return 1;
	}
	int e = wolfSSL_get_error(t->ssl, ret);
	if (e == WOLFSSL_ERROR_WANT_READ)
		return 0;
	errstr(e, err, errlen);
	return -1;
}

long load_tls_read(struct load_tls *t, char *buf, size_t cap, char *err, size_t errlen)
{
	int ret = wolfSSL_read(t->ssl, buf, (int)cap);
	if (ret > 0)
		return ret;
	int e = wolfSSL_get_error(t->ssl, ret);
	if (e == WOLFSSL_ERROR_WANT_READ)
		return 0;
	if (e == WOLFSSL_ERROR_ZERO_RETURN)
		return -2; /* close_notify */
	errstr(e, err, errlen);
	return -1;
}

int load_tls_write(struct load_tls *t, const void *p, size_t n, char *err, size_t errlen)
{
	int ret = wolfSSL_write(t->ssl, p, (int)n);
	if (ret == (int)n)
		return 0;
	errstr(wolfSSL_get_error(t->ssl, ret), err, errlen);
	return -1;
}

void load_tls_describe(const struct load_tls *t, char *buf, size_t n, bool *resumed)
{
	WOLFSSL *ssl = t->ssl;
	const char *curve = wolfSSL_get_curve_name(ssl);
	snprintf(buf, n, "%s %s%s%s", wolfSSL_get_version(ssl), wolfSSL_get_cipher_name(ssl),
	         curve ? " " : "", curve ? curve : "");
	*resumed = wolfSSL_session_reused(ssl) != 0;
}

void load_tls_end(struct load_tls *t, bool keep_session)
{
	if (!t->ssl)
		return;
	if (keep_session && t->hs_done) {
		/* After QUIT the TLS 1.3 NewSessionTicket has been read, so this is the
		 * newest resumable state of the connection. */
		WOLFSSL_SESSION *s = wolfSSL_get1_session(t->ssl);
		if (s && wolfSSL_SESSION_is_resumable(s)) {
			if (t->sess)
				wolfSSL_SESSION_free(t->sess);
			t->sess = s;
		} else if (s) {
			wolfSSL_SESSION_free(s);
		}
	}
	wolfSSL_free(t->ssl);
	t->ssl = NULL;
	t->in = NULL;
	t->in_len = 0;
	t->hs_done = false;
}

void load_tls_forget(struct load_tls *t)
{
	load_tls_end(t, false);
	if (t->sess) {
		wolfSSL_SESSION_free(t->sess);
		t->sess = NULL;
	}
}
