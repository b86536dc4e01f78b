/*
 * tls.c - wolfSSL contexts: certificate and key files, start-up checks with
 * one clear message each, SNI, and the per-worker context sets that SIGHUP
 * rebuilds. Contract and ownership rules: engine/tls/tls.h; docs/tls.md.
 *
 * The same loader serves the main thread's check and the workers' builds,
 * so a certificate the check accepted is loaded the same way by every
 * worker. A file that changes between the two (certbot renewing while we
 * reload) fails the worker's build, which then keeps its old set and logs
 * it; the next SIGHUP tries again.
 */
/* The service of this file's log lines, pflogsumm's unit (log.h). */
#define LOG_SERVICE LOG_SVC_SMTPD
#include "tls.h"
#include "tls_io.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>
#include <wolfssl/openssl/evp.h>
#include <wolfssl/openssl/pem.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include "log.h"

/*
 * TLS 1.3 suites are all AEAD. For TLS 1.2 only ECDHE (forward secrecy)
 * with AES-GCM or ChaCha20-Poly1305: no RSA key exchange, no CBC, no
 * SHA-1 MACs, no 3DES/RC4/NULL/export. The server's order wins (wolfSSL's
 * default; useClientOrder stays off), so the order is the one that is fast
 * here: AES-GCM first only where this wolfSSL has AES assembly and the CPU
 * runs it; ChaCha20-Poly1305 first otherwise, since in portable C it costs
 * about two thirds of AES-GCM's CPU (docs/benchmarks.md, "TLS").
 */
static const char ciphers_aes_first[] =
	"TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:"
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
static const char ciphers_chacha_first[] =
	"TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES256-GCM-SHA384:TLS13-AES128-GCM-SHA256:"
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";

bool
tls_aes_fast(const char **why)
{
#if defined(WOLFSSL_AESNI) && (defined(__x86_64__) || defined(__i386__))
	/* wolfSSL's AES-NI code checks the CPU itself; ask the same question. */
	bool fast = __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
	*why = fast ? "wolfSSL has AES-NI code and the CPU has AES-NI"
		    : "wolfSSL has AES-NI code, the CPU has no AES-NI";
	return fast;
#elif defined(WOLFSSL_ARMASM)
	*why = "wolfSSL has ARMv8 crypto code";
	return true;
#else
	*why = "this wolfSSL has no AES assembly";
	return false;
#endif
}

const char *
tls_default_ciphers(void)
{
	const char *why;

	return tls_aes_fast(&why) ? ciphers_aes_first : ciphers_chacha_first;
}

struct tls_sni_ctx {
	char name[256]; /* lower case, "*.example.org" allowed */
	WOLFSSL_CTX *ctx;
};

struct tls_set {
	unsigned refs; /* owner worker only: not atomic (tls.h) */
	WOLFSSL_CTX *def;
	size_t nsni;
	struct tls_sni_ctx sni[CONFIG_TLS_SNI_MAX];
};

int
tls_global_init(void)
{
	return wolfSSL_Init() == WOLFSSL_SUCCESS ? 0 : -1;
}

void
tls_global_fini(void)
{
	tls_thread_fini();
	wolfSSL_Cleanup();
}

void
tls_thread_fini(void)
{
#if defined(HAVE_ECC) && defined(FP_ECC)
	/* Debian's wolfSSL caches ECC fixed-point tables per thread; only
	 * the thread itself can free its cache. */
	wc_ecc_fp_free();
#endif
}

/*
 * Does the private key belong to the certificate's public key? Sign a
 * message with one and verify with the other: works for RSA and ECDSA
 * alike (wolfSSL 5.5.4's check_private_key accepts any ECC key).
 */
static bool
key_matches(const char *cert, size_t clen, const char *key, size_t klen)
{
	static const unsigned char msg[] = "ringmx certificate/key pairing check";
	unsigned char sig[1024];
	size_t siglen = sizeof sig;
	bool ok = false;
	WOLFSSL_X509 *x = wolfSSL_X509_load_certificate_buffer((const unsigned char *)cert, (int)clen,
								WOLFSSL_FILETYPE_PEM);
	WOLFSSL_BIO *bio = wolfSSL_BIO_new_mem_buf(key, (int)klen);
	WOLFSSL_EVP_PKEY *priv = bio != NULL ? wolfSSL_PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
					     : NULL;
	WOLFSSL_EVP_PKEY *pub = x != NULL ? wolfSSL_X509_get_pubkey(x) : NULL;
	WOLFSSL_EVP_MD_CTX *sc = wolfSSL_EVP_MD_CTX_new(), *vc = wolfSSL_EVP_MD_CTX_new();

	if (priv != NULL && pub != NULL && sc != NULL && vc != NULL &&
	    wolfSSL_EVP_DigestSignInit(sc, NULL, wolfSSL_EVP_sha256(), NULL, priv) == 1 &&
	    wolfSSL_EVP_DigestSignUpdate(sc, msg, sizeof msg) == 1 &&
	    wolfSSL_EVP_DigestSignFinal(sc, sig, &siglen) == 1 &&
	    wolfSSL_EVP_DigestVerifyInit(vc, NULL, wolfSSL_EVP_sha256(), NULL, pub) == 1 &&
	    wolfSSL_EVP_DigestVerifyUpdate(vc, msg, sizeof msg) == 1 &&
	    wolfSSL_EVP_DigestVerifyFinal(vc, sig, siglen) == 1)
		ok = true;
	wolfSSL_EVP_MD_CTX_free(sc);
	wolfSSL_EVP_MD_CTX_free(vc);
	wolfSSL_EVP_PKEY_free(pub);
	wolfSSL_EVP_PKEY_free(priv);
	wolfSSL_BIO_free(bio);
	wolfSSL_X509_free(x);
	return ok;
}

/* ---- files ---- */

/* Why a file cannot be opened, in the operator's terms: the permission
 * problem names mode and owner, since that is what to fix. */
static void
open_error(const char *label, const char *path, int e, char *err, size_t errlen)
{
	struct stat st;

	if ((e == EACCES || e == EPERM) && stat(path, &st) == 0) {
		struct passwd *pw = getpwuid(st.st_uid);
		char owner[64];

		if (pw != NULL)
			snprintf(owner, sizeof owner, "%s", pw->pw_name);
		else
			snprintf(owner, sizeof owner, "uid %u", (unsigned)st.st_uid);
		snprintf(err, errlen, "%s: %s: %s (mode %04o, owner %s; ringmxd runs as uid %u)",
			 label, path, strerror(e), (unsigned)(st.st_mode & 07777), owner,
			 (unsigned)geteuid());
		return;
	}
	snprintf(err, errlen, "%s: %s: %s", label, path, strerror(e));
}

/* Whole file into a NUL-terminated heap buffer. */
static int
file_read(const char *label, const char *path, char **out, size_t *outlen, char *err,
	  size_t errlen)
{
	struct stat st;
	ssize_t r;
	size_t n = 0;
	char *buf;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	if (fd < 0) {
		open_error(label, path, errno, err, errlen);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: %s: not a regular file", label, path);
		close(fd);
		return -1;
	}
	if ((uint64_t)st.st_size > TLS_FILE_MAX) {
		snprintf(err, errlen, "%s: %s: larger than %u bytes", label, path, TLS_FILE_MAX);
		close(fd);
		return -1;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		snprintf(err, errlen, "%s: %s: out of memory", label, path);
		close(fd);
		return -1;
	}
	while (n < (size_t)st.st_size && (r = read(fd, buf + n, (size_t)st.st_size - n)) != 0) {
		if (r < 0) {
			if (errno == EINTR)
				continue;
			snprintf(err, errlen, "%s: %s: read: %s", label, path, strerror(errno));
			free(buf);
			close(fd);
			return -1;
		}
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*out = buf;
	*outlen = n;
	return 0;
}

static size_t
count_str(const char *p, size_t n, const char *needle)
{
	size_t k = 0, nl = strlen(needle);
	const char *e = p + n;

	while (p < e && (p = memmem(p, (size_t)(e - p), needle, nl)) != NULL) {
		k++;
		p += nl;
	}
	return k;
}

static void
fmt_tm(const struct tm *tm, char *b, size_t len)
{
	strftime(b, len, "%Y-%m-%d %H:%M:%S UTC", tm);
}

/*
 * The leaf certificate's validity against now_wall: expired or not yet
 * valid refuses it (a client would refuse it too, and a silent fallback
 * to plaintext is what STARTTLS downgrade attackers want); expiring soon
 * only warns (when warn is set: the main thread's check).
 */
static int
cert_dates(const char *path, const char *pem, size_t len, int64_t now_wall, bool warn, char *err,
	   size_t errlen)
{
	WOLFSSL_X509 *x = wolfSSL_X509_load_certificate_buffer((const unsigned char *)pem, (int)len,
								WOLFSSL_FILETYPE_PEM);
	struct tm nb, na;
	char when[64];
	int rc = 0;

	if (x == NULL) {
		snprintf(err, errlen, "tls_cert: %s: cannot parse the first certificate", path);
		return -1;
	}
	memset(&nb, 0, sizeof nb);
	memset(&na, 0, sizeof na);
	if (wolfSSL_ASN1_TIME_to_tm(wolfSSL_X509_get_notBefore(x), &nb) != WOLFSSL_SUCCESS ||
	    wolfSSL_ASN1_TIME_to_tm(wolfSSL_X509_get_notAfter(x), &na) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "tls_cert: %s: cannot read the validity dates", path);
		wolfSSL_X509_free(x);
		return -1;
	}
	time_t t_nb = timegm(&nb), t_na = timegm(&na);
	if ((int64_t)t_na < now_wall) {
		fmt_tm(&na, when, sizeof when);
		snprintf(err, errlen, "tls_cert: %s: certificate expired on %s", path, when);
		rc = -1;
	} else if ((int64_t)t_nb > now_wall) {
		fmt_tm(&nb, when, sizeof when);
		snprintf(err, errlen, "tls_cert: %s: certificate not valid before %s", path, when);
		rc = -1;
	} else if (warn && (int64_t)t_na - now_wall < (int64_t)TLS_EXPIRY_WARN_DAYS * 86400) {
		fmt_tm(&na, when, sizeof when);
		log_warn("tls_cert: %s: certificate expires in %lld days (%s): renew it and send "
			 "SIGHUP",
			 path, (long long)(((int64_t)t_na - now_wall) / 86400), when);
	}
	/* A CA-issued leaf alone: clients that lack the intermediate fail. */
	if (rc == 0 && warn && count_str(pem, len, "-----BEGIN CERTIFICATE-----") == 1 &&
	    wolfSSL_X509_NAME_cmp(wolfSSL_X509_get_subject_name(x),
				  wolfSSL_X509_get_issuer_name(x)) != 0)
		log_warn("tls_cert: %s: no intermediate certificates after the leaf; use the "
			 "full chain (Let's Encrypt: fullchain.pem)",
			 path);
	wolfSSL_X509_free(x);
	return rc;
}

/* ---- contexts ---- */

static WOLFSSL_CTX *
ctx_new(const struct tls_conf *t, char *err, size_t errlen)
{
	/* TLS 1.0/1.1 are never negotiated: the floor is 1.2 (RFC 8996). */
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(t->min_version >= 13 ? wolfTLSv1_3_server_method()
								 : wolfSSLv23_server_method());
	const char *ciphers = t->ciphers[0] != '\0' ? t->ciphers : tls_default_ciphers();

	if (ctx == NULL) {
		snprintf(err, errlen, "tls: cannot create a wolfSSL context (out of memory)");
		return NULL;
	}
	if (t->min_version < 13 && wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "tls_min_version: wolfSSL refuses TLS 1.2 as the minimum");
		goto fail;
	}
	if (wolfSSL_CTX_set_cipher_list(ctx, ciphers) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "tls_ciphers: no cipher suite this wolfSSL supports in '%s'",
			 ciphers);
		goto fail;
	}
	wolfSSL_CTX_set_options(ctx, WOLFSSL_OP_CIPHER_SERVER_PREFERENCE);
	tls_io_ctx_setup(ctx);
	/* The server-side session cache is global and locked inside
	 * wolfSSL; tickets resume without it. */
	wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
	if (!t->session_tickets) {
		/* Some senders (Microsoft's) abandon STARTTLS when a TLS 1.3
		 * NewSessionTicket arrives before their first command. */
		wolfSSL_CTX_NoTicketTLSv12(ctx);
		wolfSSL_CTX_no_ticket_TLSv13(ctx);
	}
	return ctx;
fail:
	wolfSSL_CTX_free(ctx);
	return NULL;
}

/* Both files of a pair into memory, with the checks that need no wolfSSL.
 * cert_label is "tls_cert" or "tls_sni NAME", key_label likewise. */
static int
pem_read(const char *cert_label, const char *cert_path, const char *key_label,
	 const char *key_path, struct tls_pem *out, char *err, size_t errlen)
{
	struct tls_pem p = {0};

	if (file_read(cert_label, cert_path, &p.cert, &p.cert_len, err, errlen) < 0)
		return -1;
	if (file_read(key_label, key_path, &p.key, &p.key_len, err, errlen) < 0)
		goto fail;
	if (count_str(p.cert, p.cert_len, "-----BEGIN CERTIFICATE-----") == 0) {
		snprintf(err, errlen, "%s: %s: not a PEM certificate (no '-----BEGIN CERTIFICATE-----')",
			 cert_label, cert_path);
		goto fail;
	}
	if (count_str(p.key, p.key_len, "-----BEGIN ") == 0 ||
	    count_str(p.key, p.key_len, "PRIVATE KEY-----") == 0) {
		snprintf(err, errlen, "%s: %s: not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----')",
			 key_label, key_path);
		goto fail;
	}
	config_tls_pem_clear(out);
	*out = p;
	return 0;
fail:
	config_tls_pem_clear(&p);
	return -1;
}

/*
 * One pair, already in memory, into a new context: the dates, then what
 * wolfSSL says about the chain and the key. The paths only name the files
 * in messages.
 */
static WOLFSSL_CTX *
pair_build(const struct tls_conf *t, const char *cert_label, const char *cert_path,
	   const char *key_label, const char *key_path, const struct tls_pem *pem,
	   int64_t now_wall, bool warn, char *err, size_t errlen)
{
	char why[160];
	WOLFSSL_CTX *ctx;
	int r;

	if (pem->cert == NULL || pem->key == NULL) {
		snprintf(err, errlen, "%s: %s: not read (tls_check() did not run)", cert_label,
			 cert_path);
		return NULL;
	}
	if (cert_dates(cert_path, pem->cert, pem->cert_len, now_wall, warn, err, errlen) < 0) {
		/* cert_dates names "tls_cert"; an SNI pair says which one. */
		if (strcmp(cert_label, "tls_cert") != 0) {
			char tmp[512];

			snprintf(tmp, sizeof tmp, "%s", err + sizeof("tls_cert: ") - 1);
			snprintf(err, errlen, "%s: %s", cert_label, tmp);
		}
		return NULL;
	}
	ctx = ctx_new(t, err, errlen);
	if (ctx == NULL)
		return NULL;
	/* The chain comes from the same file (fullchain.pem): leaf first. */
	r = wolfSSL_CTX_use_certificate_chain_buffer(ctx, (const unsigned char *)pem->cert,
						     (long)pem->cert_len);
	if (r != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "%s: %s: wolfSSL refuses the certificate chain: %s", cert_label,
			 cert_path, tls_io_strerror(r, why, sizeof why));
		goto fail;
	}
	r = wolfSSL_CTX_use_PrivateKey_buffer(ctx, (const unsigned char *)pem->key,
					      (long)pem->key_len, WOLFSSL_FILETYPE_PEM);
	if (r != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "%s: %s: cannot load the private key: %s", key_label, key_path,
			 tls_io_strerror(r, why, sizeof why));
		goto fail;
	}
	if (wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS ||
	    !key_matches(pem->cert, pem->cert_len, pem->key, pem->key_len)) {
		snprintf(err, errlen, "%s: %s: private key does not match the certificate in %s",
			 key_label, key_path, cert_path);
		goto fail;
	}
	return ctx;
fail:
	wolfSSL_CTX_free(ctx);
	return NULL;
}

/* "*.example.org" matches exactly one more label: "a.example.org". */
static bool
sni_match(const char *pattern, const char *name)
{
	if (pattern[0] == '*' && pattern[1] == '.') {
		const char *dot = strchr(name, '.');

		return dot != NULL && dot != name && strcmp(dot + 1, pattern + 2) == 0;
	}
	return strcmp(pattern, name) == 0;
}

/* wolfSSL calls this while parsing the ClientHello (TLS 1.2 and 1.3). An
 * unknown or missing name keeps the default certificate. */
static int
sni_cb(WOLFSSL *ssl, int *alert, void *arg)
{
	struct tls_set *s = arg;
	const char *req = wolfSSL_get_servername(ssl, WOLFSSL_SNI_HOST_NAME);
	char name[256];
	size_t i;

	(void)alert;
	if (req == NULL || s == NULL)
		return 0; /* SSL_TLSEXT_ERR_OK */
	for (i = 0; req[i] != '\0' && i < sizeof name - 1; i++)
		name[i] = (char)(req[i] >= 'A' && req[i] <= 'Z' ? req[i] + 32 : req[i]);
	name[i] = '\0';
	for (i = 0; i < s->nsni; i++) {
		if (sni_match(s->sni[i].name, name)) {
			wolfSSL_set_SSL_CTX(ssl, s->sni[i].ctx);
			break;
		}
	}
	return 0;
}

static void
set_free(struct tls_set *s)
{
	for (size_t i = 0; i < s->nsni; i++)
		wolfSSL_CTX_free(s->sni[i].ctx);
	wolfSSL_CTX_free(s->def);
	free(s);
}

static struct tls_set *
set_build(const struct tls_conf *t, int64_t now_wall, bool warn, char *err, size_t errlen)
{
	struct tls_set *s = calloc(1, sizeof(*s));
	char cl[300], kl[300];

	if (s == NULL) {
		snprintf(err, errlen, "tls: out of memory");
		return NULL;
	}
	s->refs = 1;
	s->def = pair_build(t, "tls_cert", t->cert, "tls_key", t->key, &t->pem, now_wall, warn, err,
			    errlen);
	if (s->def == NULL)
		goto fail;
	for (size_t i = 0; i < t->nsni; i++) {
		snprintf(cl, sizeof cl, "tls_sni %s", t->sni[i].name);
		snprintf(kl, sizeof kl, "tls_sni %s", t->sni[i].name);
		s->sni[i].ctx = pair_build(t, cl, t->sni[i].cert, kl, t->sni[i].key, &t->sni[i].pem,
					   now_wall, warn, err, errlen);
		if (s->sni[i].ctx == NULL)
			goto fail;
		snprintf(s->sni[i].name, sizeof s->sni[i].name, "%s", t->sni[i].name);
		s->nsni = i + 1;
	}
	if (t->nsni > 0) {
		wolfSSL_CTX_set_servername_callback(s->def, sni_cb);
		wolfSSL_CTX_set_servername_arg(s->def, s);
	}
	return s;
fail:
	set_free(s);
	return NULL;
}

int
tls_check(struct tls_conf *t, int64_t now_wall, char *err, size_t errlen)
{
	struct tls_set *s;
	char cl[300];

	if (t->cert[0] == '\0')
		return 0;
	if (pem_read("tls_cert", t->cert, "tls_key", t->key, &t->pem, err, errlen) < 0)
		return -1;
	for (size_t i = 0; i < t->nsni; i++) {
		snprintf(cl, sizeof cl, "tls_sni %s", t->sni[i].name);
		if (pem_read(cl, t->sni[i].cert, cl, t->sni[i].key, &t->sni[i].pem, err, errlen) < 0)
			return -1;
	}
	s = set_build(t, now_wall, true, err, errlen);
	if (s == NULL)
		return -1;
	set_free(s);
	return 0;
}

struct tls_set *
tls_set_new(const struct tls_conf *t, char *err, size_t errlen)
{
	return set_build(t, (int64_t)time(NULL), false, err, errlen);
}

void
tls_set_ref(struct tls_set *s)
{
	s->refs++;
}

void
tls_set_unref(struct tls_set *s)
{
	if (s == NULL)
		return;
	if (--s->refs == 0)
		set_free(s);
}

struct WOLFSSL *
tls_set_ssl(struct tls_set *s)
{
	return wolfSSL_new(s->def);
}
