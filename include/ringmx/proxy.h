/*
 * proxy.h - HAProxy PROXY protocol v1 and v2 (doc/proxy-protocol.txt): a
 * strict, stateless, zero-copy header parser, the trusted-proxy check and
 * the peer formatter. Implemented in engine/conn/proxy.c; operator docs in
 * docs/proxy.md.
 *
 * Owner: the PROXY protocol module (engine/conn/proxy.c, tests/unit/test_proxy.c,
 * tests/fuzz/fuzz_proxy.c). `proxy_trusted` is parsed by engine/config/config.c
 * into struct proxy_trust; the connection (engine/conn/conn.c) is the only caller
 * of proxy_parse() in the daemon.
 *
 * The parser is pure: no I/O, no allocation, no global state. Like
 * picohttpparser it keeps no state between calls: on PROXY_NEED_MORE the
 * caller appends bytes and calls again from the start of the header (the
 * re-scan is cheap, headers are at most PROXY_HDR_MAX bytes). Views in
 * struct proxy_hdr (TLVs) point into the caller's buffer and are valid as
 * long as those bytes are.
 *
 * Integration contract (engine/conn/conn.c, for the lead)
 *  1. accept: on a listener with proxy=yes, check the socket peer with
 *     proxy_trusted(&cfg->proxy_trusted, peer) first. Untrusted: count
 *     stats.proxy_untrusted, log one line ("proxy: untrusted peer [a]:p on
 *     LISTENER, dropped"), close. No SMTP reply, no greeting.
 *  2. Trusted: do NOT send the greeting and do NOT start TLS yet. Arm recv;
 *     the first bytes of the connection are the PROXY header. This comes
 *     before the TLS handshake on tls=implicit listeners and before the 220
 *     greeting on all others. Start a timer (proxy_timeout, from connect).
 *  3. Every receive (conn.c's conn_stage_proxy(), CONN_STAGE_PROXY): peek
 *     the held bytes with conn_hold_copy() into a PROXY_HDR_MAX buffer (the
 *     carry; no more is ever needed) and call proxy_parse(buf, len, &hdr):
 *       > 0   the header is hdr_len = rc bytes. Count proxy_headers_v1/_v2
 *             (and proxy_local for a v2 LOCAL). proxy_peer_apply(&hdr,
 *             &c->peer) replaces the peer (address, text, port) for
 *             PROXY TCP4/TCP6; LOCAL, v1 UNKNOWN and v2 UNSPEC keep the
 *             real socket peer (health checks). Bytes after hdr_len belong
 *             to the next layer: conn_hold_consume(hdr_len) only, then
 *             conn_begin() (220, or the handshake on tls=implicit) and, if
 *             bytes remain held, conn_input(); they are never dropped.
 *       PROXY_NEED_MORE  keep waiting. The parser never asks for more than
 *             PROXY_HDR_MAX bytes in total (it returns PROXY_BAD once a
 *             v2 header declares more), so a full carry with NEED_MORE is
 *             a bug: assert.
 *       PROXY_BAD  count proxy_bad, log once ("proxy: bad header from
 *             [a]:p, dropped"; never the raw bytes), close. No SMTP reply.
 *     EOF or timeout before a complete header: close, count proxy_bad.
 *  4. Listeners without proxy=yes never call the parser: a header there is
 *     just bad SMTP (the issue: never guessed).
 *  5. Limits keyed on the client address (future per-IP limits) use the
 *     applied peer, i.e. the header's source.
 */
#ifndef RINGMX_PROXY_H
#define RINGMX_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

struct smtp_peer;

/* Return values of proxy_parse() besides the header length. */
#define PROXY_BAD       (-1)
#define PROXY_NEED_MORE (-2)

/* v1: "PROXY ... \r\n" is at most 107 bytes including the CRLF (spec 2.1). */
#define PROXY_V1_MAX 107
/* v2: 16-byte fixed part; its u16 length allows 16 + 65535 on the wire. */
#define PROXY_V2_FIXED 16
#define PROXY_V2_WIRE_MAX (PROXY_V2_FIXED + 65535)
/*
 * The largest header we accept, and so the connection's carry size. A v2
 * header with TLVs can in theory be 64 KiB, but HAProxy, nginx and stunnel
 * send well under 1 KiB (addresses, ALPN, authority, unique id <= 128, a few
 * SSL strings). Larger headers are refused (PROXY_BAD) as soon as the
 * fixed part declares them, rather than buffered.
 */
#define PROXY_HDR_MAX 4096

/* v2 signature (spec 2.2). */
#define PROXY_V2_SIG     "\r\n\r\n\0\r\nQUIT\n"
#define PROXY_V2_SIG_LEN 12

/* v2 address block sizes (spec 2.2). */
#define PROXY_V2_ADDR_TCP4 12
#define PROXY_V2_ADDR_TCP6 36

/* v2 TLV types (spec 2.2.x). */
#define PP2_TYPE_ALPN           0x01
#define PP2_TYPE_AUTHORITY      0x02
#define PP2_TYPE_CRC32C         0x03
#define PP2_TYPE_NOOP           0x04
#define PP2_TYPE_UNIQUE_ID      0x05
#define PP2_TYPE_SSL            0x20
#define PP2_SUBTYPE_SSL_VERSION 0x21
#define PP2_SUBTYPE_SSL_CN      0x22
#define PP2_SUBTYPE_SSL_CIPHER  0x23
#define PP2_SUBTYPE_SSL_SIG_ALG 0x24
#define PP2_SUBTYPE_SSL_KEY_ALG 0x25
#define PP2_TYPE_NETNS          0x30

/* PP2_TYPE_SSL client bits. */
#define PP2_CLIENT_SSL       0x01
#define PP2_CLIENT_CERT_CONN 0x02
#define PP2_CLIENT_CERT_SESS 0x04

/* Spec 2.2.5: "The value MUST NOT exceed 128 bytes." */
#define PP2_UNIQUE_ID_MAX 128

enum proxy_cmd {
	PROXY_CMD_LOCAL = 0, /* v2 LOCAL: health check; use the real peer */
	PROXY_CMD_PROXY = 1, /* relayed connection (every v1 header) */
};

enum proxy_family {
	PROXY_FAM_UNSPEC = 0, /* v2 0x00: no addresses; use the real peer */
	PROXY_FAM_UNKNOWN,    /* v1 "UNKNOWN": no addresses; use the real peer */
	PROXY_FAM_TCP4,       /* v1 TCP4, v2 0x11 */
	PROXY_FAM_TCP6,       /* v1 TCP6, v2 0x21 */
};

/* A view into the caller's buffer; n == 0 (p == NULL) when absent. */
struct proxy_view {
	const uint8_t *p;
	size_t n;
};

struct proxy_tlv {
	uint8_t type;
	uint16_t len;
	const uint8_t *value; /* into the caller's buffer */
};

struct proxy_hdr {
	uint8_t version;          /* 1 or 2 */
	enum proxy_cmd command;   /* v1: always PROXY */
	enum proxy_family family;
	/* AF_INET/AF_INET6 with address and port (network order, as a socket
	 * address) for TCP4/TCP6; ss_family == AF_UNSPEC otherwise. v2 LOCAL
	 * headers that carry addresses have them filled, but they are not the
	 * client's: proxy_peer_apply() ignores them. */
	struct sockaddr_storage src, dst;

	/* v2 only: the whole TLV area after the address block (already
	 * checked to tile exactly; walk it with proxy_tlv_next()), and the
	 * recognised TLVs. Duplicates of a recognised type are refused. */
	struct proxy_view tlv;
	struct proxy_view alpn, authority, unique_id, netns;
	bool crc32c;      /* a PP2_TYPE_CRC32C was present and matched */
	bool ssl;         /* a PP2_TYPE_SSL was present */
	uint8_t ssl_client;  /* PP2_CLIENT_* bits */
	uint32_t ssl_verify; /* 0: client certificate verified (host order) */
	struct proxy_view ssl_sub; /* the SSL sub-TLV area (proxy_tlv_next()) */
	struct proxy_view ssl_version, ssl_cn, ssl_cipher, ssl_sig_alg, ssl_key_alg;
};

/*
 * Parse a PROXY header at the start of p[0..n). Returns the header length
 * (> 0, <= PROXY_HDR_MAX; bytes after it are not looked at beyond what the
 * header itself declares), PROXY_NEED_MORE if p is a proper prefix of a
 * header that could still be valid, or PROXY_BAD. out is written on
 * success only (left unspecified otherwise). Never reads p[n] or beyond.
 */
int proxy_parse(const uint8_t *p, size_t n, struct proxy_hdr *out);

/*
 * Walk TLVs in area[0..len): *off starts at 0. Returns 1 with *tlv filled
 * and *off advanced, 0 at the exact end, PROXY_BAD if a TLV overruns the
 * area. Works for the top level (hdr.tlv) and for SSL sub-TLVs
 * (hdr.ssl_sub). proxy_parse() has already validated both areas.
 */
int proxy_tlv_next(const uint8_t *area, size_t len, size_t *off, struct proxy_tlv *tlv);

/* ---- trusted proxies (config key proxy_trusted) ---- */

#define PROXY_TRUST_MAX 64

struct proxy_cidr {
	sa_family_t family; /* AF_INET or AF_INET6 */
	uint8_t prefix;     /* 0..32 or 0..128 */
	uint8_t addr[16];   /* network order; host bits zero; v4 uses 4 bytes */
};

struct proxy_trust {
	size_t n;
	struct proxy_cidr net[PROXY_TRUST_MAX];
};

/* Is peer (AF_INET or AF_INET6; a v4-mapped IPv6 address ::ffff:a.b.c.d
 * as seen on a dual-stack [::] listener is matched as the IPv4 address)
 * inside one of t's networks? Any other family: false. */
bool proxy_trusted(const struct proxy_trust *t, const struct sockaddr *peer);

/* ---- formatting ---- */

/* Size of the text proxy_addr_text() writes (== smtp_peer.addr_text). */
#define PROXY_ADDR_TEXT_MAX 64

/*
 * The address of sa in struct smtp_peer's addr_text form: "192.0.2.1" or
 * "IPv6:2001:db8::1" (RFC 5321 4.1.3 literal body, as Received: wants), and
 * its port in *port (may be NULL). Returns 0, or -1 for another family
 * (text "unknown", port 0). cap must be >= PROXY_ADDR_TEXT_MAX.
 */
int proxy_addr_text(const struct sockaddr *sa, char *text, size_t cap, uint16_t *port);

/*
 * After a successful proxy_parse(): if hdr relays a TCP4/TCP6 client
 * (command PROXY), replace peer's address, text and port with the header's
 * source and return true. Otherwise (LOCAL, UNKNOWN, UNSPEC) leave the real
 * socket peer in place and return false.
 */
bool proxy_peer_apply(const struct proxy_hdr *hdr, struct smtp_peer *peer);

#endif
