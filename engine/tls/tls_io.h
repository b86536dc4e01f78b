/*
 * tls_io.h - the one wolfSSL memory-I/O glue of ringmx: a WOLFSSL session
 * whose records come from and go to buffers the caller moves with the ring.
 * Used by the server connections (engine/conn/conn.c), the relay's STARTTLS
 * (engine/tls/relay_tls.c) and ringmx-load (tools/load_tls.c); each of them only
 * builds its own WOLFSSL_CTX (certificates, verification, groups) and moves
 * bytes.
 *
 * Ownership rules
 *  - A struct tls_io belongs to one connection and is used on its thread.
 *    The WOLFSSL object is the connection's: created by the caller, bound
 *    with tls_io_bind(), freed by the caller (tls_io_unbind() first).
 *  - Input: ciphertext wolfSSL copies out of either a view [in, in+in_len)
 *    the caller set (advanced as wolfSSL consumes it; the bytes stay the
 *    caller's) or, when pull is set, a caller function (for input held in a
 *    chain of ring buffers). Nothing is retained: what wolfSSL needs of a
 *    partial record it keeps in its own buffer.
 *  - Output: wolfSSL appends records to [out, out+out_cap); the caller
 *    sends [0, out_len) and removes what the kernel took. Bytes in a send
 *    that is in flight are the kernel's: wolfSSL only appends after them.
 *    A full buffer is WANT_WRITE, never a loss.
 */
#ifndef RINGMX_TLS_IO_H
#define RINGMX_TLS_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct WOLFSSL;
struct WOLFSSL_CTX;

/* Per TLS record of up to 16 KiB plaintext: header, tag, padding. */
#define TLS_IO_RECORD_OVERHEAD 256

struct tls_io {
	struct WOLFSSL *ssl;
	const char *in; /* view mode: ciphertext not yet read by wolfSSL */
	size_t in_len;
	/* pull mode (set instead of the view): copy up to n bytes into dst,
	 * return how many, 0 for nothing now, -1 when the peer closed. */
	long (*pull)(void *arg, char *dst, size_t n);
	/* Optional: told after ciphertext was appended to out (to schedule a
	 * send). */
	void (*pushed)(void *arg);
	void *arg;   /* for pull and pushed */
	bool in_eof; /* the peer closed its side: no more input will come */
	char *out;
	size_t out_len, out_cap;
	bool done; /* handshake complete */
};

/* Install the memory-I/O callbacks on a context, so no session made from it
 * can ever touch a socket (tls_io_bind() installs them per session too, which
 * survives an SNI switch to another context). */
void tls_io_ctx_setup(struct WOLFSSL_CTX *ctx);

/* Bind ssl to t: no input yet, handshake not done. The output fields are
 * the caller's to set (out, out_cap) and are kept: bytes already queued
 * there (a PROXY header before a ClientHello) go out first. */
void tls_io_bind(struct tls_io *t, struct WOLFSSL *ssl);
/* Forget the session (the caller frees it). */
void tls_io_unbind(struct tls_io *t);

/* Results of the calls below besides counts: */
#define TLS_IO_WANT   0  /* more input is needed (or output room) */
#define TLS_IO_ERROR  -1 /* failed; *err holds wolfSSL's error code */
#define TLS_IO_CLOSED -2 /* the peer sent close_notify */

/* Drive the handshake (client or server side): 1 done, TLS_IO_WANT, or
 * TLS_IO_ERROR. */
int tls_io_handshake(struct tls_io *t, bool server, int *err);
/* Decrypt into buf: bytes (> 0), TLS_IO_WANT, TLS_IO_CLOSED or TLS_IO_ERROR. */
long tls_io_read(struct tls_io *t, void *buf, size_t cap, int *err);
/* Encrypt all n bytes (keep n <= tls_io_room()): 0 or TLS_IO_ERROR. */
int tls_io_write(struct tls_io *t, const void *p, size_t n, int *err);
/* Plaintext bytes that certainly fit into the output's free room now. */
size_t tls_io_room(const struct tls_io *t);
/* The sender took n bytes from the front of the output. */
void tls_io_sent(struct tls_io *t, size_t n);

/* "reason" text for a wolfSSL error code, for log lines. */
const char *tls_io_strerror(int err, char *buf, size_t len);

#endif
