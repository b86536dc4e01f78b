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

#include "tls.h"

struct relay_tls_ctx {
	WOLFSSL_CTX *ctx;
};

static int
io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct relay_tls_conn *t = arg;
	(void)ssl;
	uint32_t avail = t->cin_len - t->cin_off;
	if (avail == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	uint32_t n = (uint32_t)sz < avail ? (uint32_t)sz : avail;
	memcpy(buf, t->cin + t->cin_off, n);
	t->cin_off += n;
	if (t->cin_off == t->cin_len)
		t->cin_off = t->cin_len = 0;
	return (int)n;
}

static int
io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct relay_tls_conn *t = arg;
	(void)ssl;
	if ((size_t)sz > RELAY_TLS_COUT - t->cout_len)
		return WOLFSSL_CBIO_ERR_WANT_WRITE;
	memcpy(t->cout + t->cout_len, buf, (size_t)sz);
	t->cout_len += (uint32_t)sz;
	return sz;
}

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
	wolfSSL_CTX_SetIORecv(ctx, io_recv);
	wolfSSL_CTX_SetIOSend(ctx, io_send);
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
	t->ssl = wolfSSL_new(c->ctx);
	if (t->ssl == NULL)
		return -1;
	t->done = false;
	t->cin_off = t->cin_len = t->cout_len = 0;
	wolfSSL_SetIOReadCtx(t->ssl, t);
	wolfSSL_SetIOWriteCtx(t->ssl, t);
	/* RFC 6066 3: no SNI for address literals. */
	if (host[0] != '\0' && !is_ip_literal(host))
		wolfSSL_UseSNI(t->ssl, WOLFSSL_SNI_HOST_NAME, host, (unsigned short)strlen(host));
	t->check_ip = false;
	if (verify && host[0] != '\0') {
		if (is_ip_literal(host)) {
			if (strlen(host) >= sizeof(t->ip))
				goto fail;
			snprintf(t->ip, sizeof(t->ip), "%s", host);
			t->check_ip = true;
		} else if (wolfSSL_check_domain_name(t->ssl, host) != WOLFSSL_SUCCESS) {
			/* Without the check the handshake would accept any
			 * certificate the CA signed: refuse to go on. */
			goto fail;
		}
	}
	return 0;
fail:
	wolfSSL_free(t->ssl);
	t->ssl = NULL;
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

int
relay_tls_handshake(struct relay_tls_conn *t, char *err, size_t errlen)
{
	int ret = wolfSSL_connect(t->ssl);
	if (ret == WOLFSSL_SUCCESS) {
		if (t->check_ip) {
			WOLFSSL_X509 *peer = wolfSSL_get_peer_certificate(t->ssl);
			bool match = peer != NULL && cert_has_ip(peer, t->ip);
			wolfSSL_X509_free(peer);
			if (!match) {
				snprintf(err, errlen, "certificate has no iPAddress name %s",
				         t->ip);
				return -1;
			}
		}
		t->done = true;
		snprintf(t->version, sizeof(t->version), "%s", wolfSSL_get_version(t->ssl));
		const char *cn = wolfSSL_get_cipher_name(t->ssl);
		snprintf(t->cipher, sizeof(t->cipher), "%s", cn != NULL ? cn : "?");
		return 1;
	}
	int e = wolfSSL_get_error(t->ssl, ret);
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return 0;
	char why[128];
	snprintf(err, errlen, "%s", tls_strerror(e, why, sizeof(why)));
	return -1;
}

long
relay_tls_read(struct relay_tls_conn *t, char *buf, size_t cap, char *err, size_t errlen)
{
	int ret = wolfSSL_read(t->ssl, buf, (int)cap);
	if (ret > 0)
		return ret;
	int e = wolfSSL_get_error(t->ssl, ret);
	if (e == WOLFSSL_ERROR_WANT_READ)
		return 0;
	char why[128];
	snprintf(err, errlen, "%s",
	         e == WOLFSSL_ERROR_ZERO_RETURN ? "close_notify"
	                                        : tls_strerror(e, why, sizeof(why)));
	return -1;
}

size_t
relay_tls_room(const struct relay_tls_conn *t)
{
	size_t free = RELAY_TLS_COUT - t->cout_len;
	/* One record's overhead per 16 KiB, and one spare. */
	size_t over = (free / 16384 + 2) * RELAY_TLS_RECORD_OVERHEAD;
	return free > over ? free - over : 0;
}

int
relay_tls_write(struct relay_tls_conn *t, const char *p, size_t n, char *err, size_t errlen)
{
	int ret = wolfSSL_write(t->ssl, p, (int)n);
	if (ret == (int)n)
		return 0;
	char why[128];
	snprintf(err, errlen, "%s", tls_strerror(wolfSSL_get_error(t->ssl, ret), why, sizeof(why)));
	return -1;
}

void
relay_tls_end(struct relay_tls_conn *t)
{
	if (t->ssl != NULL)
		wolfSSL_free(t->ssl);
	t->ssl = NULL;
}
