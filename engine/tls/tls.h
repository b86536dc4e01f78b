/*
 * tls.h - native TLS contexts (wolfSSL): certificate loading and start-up
 * validation, one set of WOLFSSL_CTX per worker (default certificate plus
 * SNI names), and reload. The per-connection side is engine/conn/conn.c, section
 * "TLS stage", over the memory-I/O glue of engine/tls/tls_io.c.
 * Operator documentation: docs/tls.md.
 *
 * Ownership rules
 *  - wolfSSL_Init()/wolfSSL_Cleanup() are called once, by main
 *    (tls_global_init/tls_global_fini).
 *  - tls_check() runs on the main thread only (start-up, -t, SIGHUP). It
 *    reads the files into the configuration (struct tls_pem, owned by it),
 *    reports the first problem as one line, and logs a warning for a
 *    certificate that expires within TLS_EXPIRY_WARN_DAYS. It is the only
 *    reader of certificate and key files: at start-up it runs before the
 *    privilege drop, so the key may be readable by root only.
 *  - A struct tls_set belongs to one worker thread: it is built there
 *    (tls_set_new, from the bytes tls_check() read), used only there and
 *    freed there. Its reference count
 *    is therefore a plain integer, not an atomic: the worker holds one
 *    reference for new sessions, every TLS connection holds one for its
 *    WOLFSSL object. After a reload the worker drops its reference to the
 *    old set; the set (and its CTXs) is freed when the last connection
 *    that was accepted under it closes, so open sessions keep their
 *    certificate and new ones get the new one.
 *  - No locks on the hot path: the server-side session cache is off (TLS
 *    1.2 and 1.3 resume through stateless tickets), and CTXs are never
 *    shared between threads.
 */
#ifndef RINGMX_TLS_H
#define RINGMX_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ringmx/config.h"

/* wolfSSL's types, without its headers in every includer. */
struct WOLFSSL;
struct WOLFSSL_CTX;

#define TLS_EXPIRY_WARN_DAYS 30
/* Largest certificate or key file read (a fullchain is a few KiB). */
#define TLS_FILE_MAX (1u << 20)

struct tls_set;

/* The built-in tls_ciphers order: AES-GCM first when this wolfSSL has AES
 * assembly the CPU runs (why: which it is, for --version), ChaCha20-Poly1305
 * first otherwise. */
bool tls_aes_fast(const char **why);
const char *tls_default_ciphers(void);

/* main: wolfSSL_Init() once. Returns 0 or -1. */
int tls_global_init(void);
void tls_global_fini(void);
/* Every thread that ran handshakes, before it exits (wolfSSL's per-thread
 * ECC caches). */
void tls_thread_fini(void);

/*
 * main thread: validate every file named in t (tls_cert/tls_key and each
 * tls_sni triple) and that wolfSSL accepts the resulting contexts
 * (ciphers, key match). now_wall is time(NULL). Returns 0, or -1 with one
 * line in err, e.g.
 *   "tls_cert: /x/cert.pem: Permission denied (mode 0600, owner root)"
 *   "tls_key: /x/key.pem: private key does not match the certificate in /x/cert.pem"
 * A configuration without tls_cert passes trivially.
 */
int tls_check(struct tls_conf *t, int64_t now_wall, char *err, size_t errlen);

/* worker thread: build the contexts for t from what tls_check() read into
 * it. NULL with err on failure. The new set has one reference (the
 * caller's). */
struct tls_set *tls_set_new(const struct tls_conf *t, char *err, size_t errlen);
void tls_set_ref(struct tls_set *s);
/* NULL is allowed; frees the set and its CTXs at zero. */
void tls_set_unref(struct tls_set *s);

/* A new server-side WOLFSSL on the set's default context (SNI may switch
 * it to another context of the same set during the handshake), for
 * tls_io_bind(). NULL on allocation failure. */
struct WOLFSSL *tls_set_ssl(struct tls_set *s);

#endif
