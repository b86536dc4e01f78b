#!/usr/bin/env python3
"""test_relay_tls - required TLS to the next hop holds on every path (docs/relay.md,
"TLS to the next hop"), and relay_tls = verify checks the name it connected to.

smtplib -> ringmxd (sink = spool, relay_host) -> FakeMX with STARTTLS:

  * relay_tls = encrypt and a next hop that answers EHLO with 5xx: deferred with 4.7.4,
    never HELO and mail in the clear (it used to fall back to HELO and send in clear);
  * relay_tls = verify against an untrusted certificate: deferred with 4.7.4;
  * relay_tls = verify with an IP-literal next hop: the certificate's iPAddress names
    decide (a matching one delivers, a certificate with DNS names only is refused);
  * relay_tls = verify with a host name the certificate does not name: refused.

Standalone: exit 0 / 1 / 77, last line "N passed, M failed". Loopback only.
"""

import os
import re
import tempfile
import time

from ringmx_harness import Suite, check, check_eq, self_signed_cert
from nexthop import FakeMX
from relay_util import (RelayServer, hop, send_message, message, check_relayed, status_lines,
                        spool_tool)

T = Suite(__file__)
TMP = tempfile.mkdtemp(prefix="ringmx-relay-tls-")
RCPT = "u@example.test"


def spool_dir(name):
    return os.path.join(TMP, name, "spool")


def cert(name, cn="localhost", san=None):
    return self_signed_cert(os.path.join(TMP, "cert-" + name), cn=cn, san=san)


def deferred(srv, mx, qid, why):
    """The message is deferred with dsn=4.7.4 and `why` in the reason, and no MAIL
    reached the next hop, not even after a retry (retry_min = 1 s)."""
    lines = srv.wait_log(r"%s: to=<%s>, .*status=deferred" % (qid, RCPT), timeout=15)
    check("dsn=4.7.4" in lines[0], "deferred line without dsn=4.7.4: %s" % lines[0])
    check(re.search(why, lines[0]), "deferred line without %r: %s" % (why, lines[0]))
    time.sleep(1.5)
    check_eq(len(mx.messages), 0, "messages delivered")
    check_eq(mx.counters()["transactions"], 0, "MAIL commands accepted by the next hop")
    check(not status_lines(srv, qid, "sent"), "logged as sent")


def delivered_in_tls(srv, mx, qid, data):
    rec = mx.wait_for(1, timeout=15)[0]
    check(rec.tls, "not delivered inside TLS")
    check_relayed(rec.data_bytes, data, qid)
    srv.wait_log(r"%s: removed" % qid, timeout=10)


def refuse_ehlo(event, info, arg):
    # The first greeting command of every session (EHLO) gets 550; a HELO after it
    # would be accepted, which is exactly the downgrade this checks for.
    if event == "helo" and not info.get("refused"):
        info["refused"] = True
        return (550, "5.5.1 EHLO not welcome")
    return None


@T.test("relay_tls=encrypt, next hop answers EHLO with 550: 4.7.4, no HELO, nothing in clear")
def _():
    with FakeMX(starttls_cert=cert("main")) as mx, \
            RelayServer(spool_dir("ehlo-5xx"), hop(mx), extra=("relay_tls=encrypt",)) as srv:
        mx.policy = refuse_ehlo
        qid = send_message(srv, "a@sender.test", [RCPT], message("ehlo refused"))
        deferred(srv, mx, qid, "TLS is required .*refused EHLO")


@T.test("relay_tls=verify, next hop answers EHLO with 550: 4.7.4, nothing in clear")
def _():
    c, _k = cert("main")
    with FakeMX(starttls_cert=cert("main")) as mx, \
            RelayServer(spool_dir("ehlo-5xx-verify"), hop(mx, host="localhost"),
                        extra=("relay_tls=verify", "relay_tls_ca_file=" + c)) as srv:
        mx.policy = refuse_ehlo
        qid = send_message(srv, "a@sender.test", [RCPT], message("ehlo refused verify"))
        deferred(srv, mx, qid, "TLS is required .*refused EHLO")


@T.test("relay_tls=may, next hop answers EHLO with 550: HELO, delivered (no TLS asked for)")
def _():
    with FakeMX(starttls_cert=cert("main")) as mx, \
            RelayServer(spool_dir("ehlo-5xx-may"), hop(mx), extra=("relay_tls=may",)) as srv:
        mx.policy = refuse_ehlo
        data = message("ehlo refused may")
        qid = send_message(srv, "a@sender.test", [RCPT], data)
        rec = mx.wait_for(1, timeout=15)[0]
        check_relayed(rec.data_bytes, data, qid)


@T.test("relay_tls=verify, certificate from an untrusted CA: handshake fails, 4.7.4")
def _():
    other, _k = cert("other-ca", cn="other.test")
    with FakeMX(starttls_cert=cert("main")) as mx, \
            RelayServer(spool_dir("bad-ca"), hop(mx, host="localhost"),
                        extra=("relay_tls=verify", "relay_tls_ca_file=" + other)) as srv:
        qid = send_message(srv, "a@sender.test", [RCPT], message("bad ca"))
        deferred(srv, mx, qid, "TLS handshake with .* failed")


def verify_case(name, cn, san, host, refused):
    """relay_tls=verify to next hop `host` whose certificate (its own CA) is for cn/san:
    delivered inside TLS when refused is None, else deferred with 4.7.4 and `refused`
    in the reason."""
    c, k = cert(name, cn=cn, san=san)
    with FakeMX(starttls_cert=(c, k)) as mx, \
            RelayServer(spool_dir(name), hop(mx, host=host),
                        extra=("relay_tls=verify", "relay_tls_ca_file=" + c)) as srv:
        data = message("verify " + name)
        qid = send_message(srv, "a@sender.test", [RCPT], data)
        if refused is None:
            delivered_in_tls(srv, mx, qid, data)
            srv.wait_log(r"relay: TLS connection established to .*\(certificate verified\)")
        else:
            deferred(srv, mx, qid, refused)


@T.test("relay_tls=verify, next hop 127.0.0.1, certificate with iPAddress 127.0.0.1: delivered")
def _():
    verify_case("ip-ok", "mx.example", "DNS:mx.example,IP:127.0.0.1", "127.0.0.1", None)


@T.test("relay_tls=verify, next hop 127.0.0.1, certificate with DNS names only: 4.7.4")
def _():
    verify_case("ip-dns-only", "127.0.0.1", "DNS:localhost,DNS:127.0.0.1", "127.0.0.1",
                "iPAddress name 127.0.0.1")


@T.test("relay_tls=verify, next hop 127.0.0.1, certificate for 127.0.0.2: 4.7.4")
def _():
    verify_case("ip-other", "mx.example", "DNS:mx.example,IP:127.0.0.2", "127.0.0.1",
                "iPAddress name 127.0.0.1")


@T.test("relay_tls=verify, next hop localhost, certificate for other.test only: 4.7.4")
def _():
    verify_case("name-mismatch", "other.test", "DNS:other.test,IP:127.0.0.1", "localhost",
                "TLS handshake with .* failed")


if __name__ == "__main__":
    T.main(requires=[spool_tool()])
