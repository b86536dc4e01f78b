/*
 * tls_io.c - wolfSSL over memory I/O (tls_io.h): the receive and send
 * callbacks every ringmx TLS session uses, and the handshake, read and write
 * calls with wolfSSL's WANT_* states mapped to one set of results.
 *
 * Owner: whoever embeds the struct tls_io (one connection, one thread); see
 * tls_io.h for the buffer rules.
 */
#include "tls_io.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>

static int
io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_io *t = arg;
	size_t n;

	(void)ssl;
	assert(sz >= 0);
	if (t->pull != NULL) {
		long r = t->pull(t->arg, buf, (size_t)sz);
		if (r < 0)
			return WOLFSSL_CBIO_ERR_CONN_CLOSE;
		n = (size_t)r;
	} else {
		n = (size_t)sz < t->in_len ? (size_t)sz : t->in_len;
		if (n > 0) { /* an empty view may be NULL: no memcpy from it */
			memcpy(buf, t->in, n);
			t->in += n;
			t->in_len -= n;
		}
	}
	if (n == 0)
		return t->in_eof ? WOLFSSL_CBIO_ERR_CONN_CLOSE : WOLFSSL_CBIO_ERR_WANT_READ;
	return (int)n;
}

/* Partial appends are fine: wolfSSL keeps what did not fit and offers it
 * again on the next call that drives it. */
static int
io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_io *t = arg;
	size_t room, k;

	(void)ssl;
	assert(sz >= 0 && t->out_len <= t->out_cap);
	room = t->out_cap - t->out_len;
	if (room == 0)
		return WOLFSSL_CBIO_ERR_WANT_WRITE;
	k = (size_t)sz < room ? (size_t)sz : room;
	memcpy(t->out + t->out_len, buf, k); /* wolfSSL reuses buf after we return */
	t->out_len += k;
	if (t->pushed != NULL)
		t->pushed(t->arg);
	return (int)k;
}

void
tls_io_ctx_setup(WOLFSSL_CTX *ctx)
{
	wolfSSL_CTX_SetIORecv(ctx, io_recv);
	wolfSSL_CTX_SetIOSend(ctx, io_send);
}

void
tls_io_bind(struct tls_io *t, WOLFSSL *ssl)
{
	t->ssl = ssl;
	t->in = NULL;
	t->in_len = 0;
	t->pull = NULL;
	t->pushed = NULL;
	t->arg = NULL;
	t->in_eof = false;
	t->done = false;
	wolfSSL_SSLSetIORecv(ssl, io_recv);
	wolfSSL_SSLSetIOSend(ssl, io_send);
	wolfSSL_SetIOReadCtx(ssl, t);
	wolfSSL_SetIOWriteCtx(ssl, t);
}

void
tls_io_unbind(struct tls_io *t)
{
	t->ssl = NULL;
	t->in = NULL;
	t->in_len = 0;
	t->done = false;
}

int
tls_io_handshake(struct tls_io *t, bool server, int *err)
{
	int r = server ? wolfSSL_accept(t->ssl) : wolfSSL_connect(t->ssl);

	if (r == WOLFSSL_SUCCESS) {
		t->done = true;
		return 1;
	}
	*err = wolfSSL_get_error(t->ssl, r);
	if (*err == WOLFSSL_ERROR_WANT_READ || *err == WOLFSSL_ERROR_WANT_WRITE)
		return TLS_IO_WANT;
	return TLS_IO_ERROR;
}

long
tls_io_read(struct tls_io *t, void *buf, size_t cap, int *err)
{
	int r = wolfSSL_read(t->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);

	if (r > 0)
		return r;
	*err = wolfSSL_get_error(t->ssl, r);
	if (*err == WOLFSSL_ERROR_WANT_READ || *err == WOLFSSL_ERROR_WANT_WRITE)
		return TLS_IO_WANT;
	if (*err == WOLFSSL_ERROR_ZERO_RETURN)
		return TLS_IO_CLOSED;
	return TLS_IO_ERROR;
}

int
tls_io_write(struct tls_io *t, const void *p, size_t n, int *err)
{
	int r = wolfSSL_write(t->ssl, p, (int)n);

	if (r == (int)n)
		return 0;
	*err = wolfSSL_get_error(t->ssl, r);
	return TLS_IO_ERROR;
}

size_t
tls_io_room(const struct tls_io *t)
{
	size_t free = t->out_cap - t->out_len;
	/* One record's overhead per 16 KiB, and one spare. */
	size_t over = (free / 16384 + 2) * TLS_IO_RECORD_OVERHEAD;

	return free > over ? free - over : 0;
}

void
tls_io_sent(struct tls_io *t, size_t n)
{
	assert(n <= t->out_len);
	memmove(t->out, t->out + n, t->out_len - n);
	t->out_len -= n;
}

const char *
tls_io_strerror(int err, char *buf, size_t len)
{
	const char *r = wolfSSL_ERR_reason_error_string((unsigned long)err);

	if (r != NULL && r[0] != '\0')
		snprintf(buf, len, "%s", r);
	else
		snprintf(buf, len, "wolfSSL error %d", err);
	return buf;
}
