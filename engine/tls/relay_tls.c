/*
 * relay_tls.c - wolfSSL client sessions for the relay's STARTTLS
 * (relay_tls.h). Memory I/O: wolfSSL reads ciphertext the ring received
 * and appends the records it writes to a buffer the ring sends.
 *
 * Owner: the relay module; see relay_tls.h for the buffer rules.
 */
#include "relay_tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/openssl/x509v3.h> /* GEN_IPADD */
#include <wolfssl/wolfio.h>

struct relay_tls_ctx {
	WOLFSSL_CTX *ctx;
};

struct relay_tls_ctx *
relay_tls_ctx_new(const struct relay_conf *rc, char *err, size_t errlen)
{
	err[0] = '\0';
	if (rc->tls == RELAY_TLS_NONE)
		return NULL;
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
	if (ctx == NULL) {
		snprintf(err, errlen, "relay_tls: wolfSSL_CTX_new failed");
		return NULL;
	}
	/* TLS 1.2 at least, as for the server side (docs/tls.md). */
	if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "relay_tls: cannot set TLS 1.2 as the minimum");
		wolfSSL_CTX_free(ctx);
		return NULL;
	}
	tls_io_ctx_setup(ctx);
	wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
	if (rc->tls == RELAY_TLS_VERIFY) {
		if (wolfSSL_CTX_load_verify_locations(ctx, rc->tls_ca_file, NULL) !=
		    WOLFSSL_SUCCESS) {
			snprintf(err, errlen,
			         "relay_tls_ca_file: cannot load CA certificates from %s",
			         rc->tls_ca_file);
			wolfSSL_CTX_free(ctx);
			return NULL;
		}
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, NULL);
	} else {
		/* may/encrypt: encryption against passive listeners only, as
		 * Postfix's smtp_tls_security_level = may/encrypt. */
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	}
	struct relay_tls_ctx *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		wolfSSL_CTX_free(ctx);
		snprintf(err, errlen, "relay_tls: out of memory");
		return NULL;
	}
	c->ctx = ctx;
	return c;
}

void
relay_tls_ctx_free(struct relay_tls_ctx *c)
{
	if (c == NULL)
		return;
	wolfSSL_CTX_free(c->ctx);
	free(c);
}

static bool
is_ip_literal(const char *host)
{
	unsigned char buf[16];
	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

int
relay_tls_start(struct relay_tls_ctx *c, struct relay_tls_conn *t, const char *host, bool verify)
{
	WOLFSSL *ssl = wolfSSL_new(c->ctx);
	if (ssl == NULL)
		return -1;
	tls_io_bind(&t->io, ssl);
	t->io.out = t->cout;
	t->io.out_cap = RELAY_TLS_COUT;
	t->io.out_len = 0;
	t->cin_len = 0;
	/* RFC 6066 3: no SNI for address literals. */
	if (host[0] != '\0' && !is_ip_literal(host))
		wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, host, (unsigned short)strlen(host));
	t->check_ip = false;
	if (verify && host[0] != '\0') {
		if (is_ip_literal(host)) {
			if (strlen(host) >= sizeof(t->ip))
				goto fail;
			snprintf(t->ip, sizeof(t->ip), "%s", host);
			t->check_ip = true;
		} else if (wolfSSL_check_domain_name(ssl, host) != WOLFSSL_SUCCESS) {
			/* Without the check the handshake would accept any
			 * certificate the CA signed: refuse to go on. */
			goto fail;
		}
	}
	return 0;
fail:
	tls_io_unbind(&t->io);
	wolfSSL_free(ssl);
	return -1;
}

/* RFC 6125 6.2.1 and RFC 5280 4.2.1.6: an address literal matches only an
 * iPAddress subjectAltName with the same octets, never a DNS name or the CN
 * that happens to spell it (wolfSSL_X509_check_ip_asc accepts those). */
static bool
cert_has_ip(WOLFSSL_X509 *x, const char *ip)
{
	unsigned char want[16];
	int wlen = 4;
	if (inet_pton(AF_INET, ip, want) != 1) {
		if (inet_pton(AF_INET6, ip, want) != 1)
			return false;
		wlen = 16;
	}
	WOLFSSL_GENERAL_NAMES *names =
	    wolfSSL_X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	if (names == NULL)
		return false;
	bool found = false;
	int n = wolfSSL_sk_GENERAL_NAME_num(names);
	for (int i = 0; i < n && !found; i++) {
		WOLFSSL_GENERAL_NAME *g = wolfSSL_sk_GENERAL_NAME_value(names, i);
		if (g == NULL || g->type != GEN_IPADD || g->d.iPAddress == NULL)
			continue;
		found = wolfSSL_ASN1_STRING_length(g->d.iPAddress) == wlen &&
		        memcmp(wolfSSL_ASN1_STRING_data(g->d.iPAddress), want, (size_t)wlen) == 0;
	}
	wolfSSL_GENERAL_NAMES_free(names);
	return found;
}

/* wolfSSL reads received ciphertext through a view of cin; what it did not
 * take yet moves to the front for the next receive. */
static void
view_open(struct relay_tls_conn *t)
{
	t->io.in = t->cin;
	t->io.in_len = t->cin_len;
}

static void
view_close(struct relay_tls_conn *t)
{
	size_t left = t->io.in_len;
	if (left > 0 && t->io.in != t->cin)
		memmove(t->cin, t->io.in, left);
	t->cin_len = (uint32_t)left;
	t->io.in = NULL;
	t->io.in_len = 0;
}

int
relay_tls_handshake(struct relay_tls_conn *t, char *err, size_t errlen)
{
	int e = 0;
	view_open(t);
	int r = tls_io_handshake(&t->io, false, &e);
	view_close(t);
	if (r == TLS_IO_WANT)
		return 0;
	if (r == TLS_IO_ERROR) {
		char why[128];
		snprintf(err, errlen, "%s", tls_io_strerror(e, why, sizeof(why)));
		return -1;
	}
	if (t->check_ip) {
		WOLFSSL_X509 *peer = wolfSSL_get_peer_certificate(t->io.ssl);
		bool match = peer != NULL && cert_has_ip(peer, t->ip);
		wolfSSL_X509_free(peer);
		if (!match) {
			snprintf(err, errlen, "certificate has no iPAddress name %s", t->ip);
			return -1;
		}
	}
	snprintf(t->version, sizeof(t->version), "%s", wolfSSL_get_version(t->io.ssl));
	const char *cn = wolfSSL_get_cipher_name(t->io.ssl);
	snprintf(t->cipher, sizeof(t->cipher), "%s", cn != NULL ? cn : "?");
	return 1;
}

long
relay_tls_read(struct relay_tls_conn *t, char *buf, size_t cap, char *err, size_t errlen)
{
	int e = 0;
	view_open(t);
	long r = tls_io_read(&t->io, buf, cap, &e);
	view_close(t);
	if (r > 0 || r == TLS_IO_WANT)
		return r;
	char why[128];
	snprintf(err, errlen, "%s",
	         r == TLS_IO_CLOSED ? "close_notify" : tls_io_strerror(e, why, sizeof(why)));
	return -1;
}

int
relay_tls_write(struct relay_tls_conn *t, const char *p, size_t n, char *err, size_t errlen)
{
	int e = 0;
	if (tls_io_write(&t->io, p, n, &e) == 0)
		return 0;
	char why[128];
	snprintf(err, errlen, "%s", tls_io_strerror(e, why, sizeof(why)));
	return -1;
}

void
relay_tls_end(struct relay_tls_conn *t)
{
	WOLFSSL *ssl = t->io.ssl;
	tls_io_unbind(&t->io);
	if (ssl != NULL)
		wolfSSL_free(ssl);
}
