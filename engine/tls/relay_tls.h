/*
 * relay_tls.h - STARTTLS to the next hop (relay_tls = may | encrypt |
 * verify): a client WOLFSSL_CTX per worker and, per outbound connection,
 * a WOLFSSL object over memory I/O. The only relay file that includes
 * wolfSSL; engine/relay/relay.c moves the bytes (docs/relay.md, "TLS to the
 * next hop").
 *
 * Ownership: a context belongs to one worker thread (built, used and
 * freed there). A struct relay_tls_conn belongs to one outbound connection.
 * Ciphertext buffers: the caller receives into cin[cin_len..] and the
 * library drains it; the library appends records to cout (io.out), and the
 * caller sends [0, io.out_len) and removes what was sent with
 * tls_io_sent(). Bytes of cout in a send that is in flight belong to the
 * kernel: the library only appends. The memory I/O is engine/tls/tls_io.c.
 */
#ifndef RINGMX_RELAY_TLS_H
#define RINGMX_RELAY_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ringmx/config.h"

#include "tls_io.h"

#define RELAY_TLS_CIN  (32u << 10)
#define RELAY_TLS_COUT (80u << 10)

struct relay_tls_ctx;

struct relay_tls_conn {
	struct tls_io io; /* io.out is cout; io.done: handshake complete */
	/* verify with an IP-literal next hop: the certificate's iPAddress
	 * names are checked once the handshake is done (wolfSSL's own name
	 * check only knows DNS names). */
	bool check_ip;
	char ip[48];
	uint32_t cin_len; /* received ciphertext wolfSSL has not read yet */
	char version[16];
	char cipher[64];
	char cin[RELAY_TLS_CIN];
	char cout[RELAY_TLS_COUT];
};

/* NULL with err on failure (the CA file cannot be loaded). With
 * relay_tls = none, NULL and err empty. */
struct relay_tls_ctx *relay_tls_ctx_new(const struct relay_conf *rc, char *err, size_t errlen);
void relay_tls_ctx_free(struct relay_tls_ctx *ctx);

/* Start a client session. host: SNI and name check (verify), "" for none:
 * a host name must match a DNS name of the certificate, an address
 * literal one of its iPAddress names. Returns 0 or -1. */
int relay_tls_start(struct relay_tls_ctx *ctx, struct relay_tls_conn *t, const char *host,
                    bool verify);
/* Drive the handshake: 1 done (and, with verify, the peer's name
 * matched), 0 wants more input, -1 failed (err set). */
int relay_tls_handshake(struct relay_tls_conn *t, char *err, size_t errlen);
/* Decrypt into buf: bytes, 0 wants more input, -1 error/close (err set). */
long relay_tls_read(struct relay_tls_conn *t, char *buf, size_t cap, char *err, size_t errlen);
/* Encrypt n bytes (the caller keeps n within the room in cout). 0 or -1. */
int relay_tls_write(struct relay_tls_conn *t, const char *p, size_t n, char *err, size_t errlen);
void relay_tls_end(struct relay_tls_conn *t);

#endif
