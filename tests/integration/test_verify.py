#!/usr/bin/env python3
"""test_verify - verify_recipients: RCPT is checked against the recipient's own next hop
(MAIL FROM:<>, RCPT TO, then RSET or QUIT, never DATA) on the relay's connections, the
answer cached (docs/defences.md, "Recipient validation: address verification").

  * Dovecot LMTP with a passwd-file userdb: a known user gets 250, an unknown one
    550 5.1.1 with Dovecot's text; asking again is answered from the cache (counter,
    and Dovecot's log shows no new LMTP session);
  * FakeMX: the probe never sends DATA (its command counters), RSET between probes;
  * the next hop down: 450 4.1.1 ... unverified address: connect to ...;
  * a next hop that never answers the RCPT: 450 4.1.1 ... timeout (verify_timeout);
  * pipelined RCPTs behind a pending one are answered in order;
  * verify_recipients = yes without relay_host / transport_maps: a config error.

Standalone: exit 0 / 1 / 77, last line "N passed, M failed". Loopback only.
"""

import os
import socket
import subprocess
import tempfile
import time

from ringmx_harness import Suite, check, check_eq, ringmxd_path
from nexthop import FakeMX, DovecotLMTP
from relay_util import RelayServer, hop, need

T = Suite(__file__)
TMP = tempfile.mkdtemp(prefix="ringmx-verify-")
VERIFY = ("verify_recipients=yes",)


def spool_dir(name):
    return os.path.join(TMP, name, "spool")


def rcpt(srv, addr):
    with srv.client() as c:
        c.ehlo("verify.client.test")
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        r = c.cmd("RCPT TO:<%s>" % addr)
        c.quit()
        return r


@T.test("Dovecot LMTP: known user 250, unknown 550 5.1.1 with Dovecot's text, then the cache")
def _():
    dv = need(lambda: DovecotLMTP(os.path.join(TMP, "dovecot", "dv"),
                                  users=["alice@example.test"]))
    with dv, RelayServer(spool_dir("dovecot"), hop(dv, "lmtp"), extra=VERIFY,
                         workers=1) as srv:
        rcpt(srv, "alice@example.test").expect(250, "2.1.5")
        r = rcpt(srv, "bob@example.test")
        r.expect(550, "5.1.1")
        check(r.lines[0].startswith("550 5.1.1 <bob@example.test>: Recipient address "
                                    "rejected: undeliverable address: "), "reply: %r" % r)
        check("User doesn't exist" in r.text, "Dovecot's text missing: %r" % r)
        st = srv.stats()
        check_eq(st.get("verify_probes"), 2, "probes")
        check_eq(st.get("verify_ok"), 1, "verify_ok")
        check_eq(st.get("verify_rejected"), 1, "verify_rejected")
        seen = dv.log().count("lmtp(")
        rcpt(srv, "alice@example.test").expect(250, "2.1.5")
        rcpt(srv, "BOB@example.test").expect(550, "5.1.1", "User doesn't exist")
        st = srv.stats()
        check_eq(st.get("verify_probes"), 3, "probes after the repeats (BOB is another "
                                               "local part: probed)")
        rcpt(srv, "bob@EXAMPLE.TEST").expect(550, "5.1.1")
        st = srv.stats()
        check_eq(st.get("verify_probes"), 3, "probes: the domain is compared without case")
        check_eq(st.get("verify_cache_hits"), 2, "cache hits")
        check(seen > 0, "Dovecot logged no LMTP activity")


@T.test("FakeMX: probes send MAIL FROM:<> and RCPT, never DATA; RSET or QUIT after")
def _():
    with FakeMX() as mx:
        mx.rcpt_reply = lambda a: (550, "5.1.1 no such user") if a.startswith("no") else None
        with RelayServer(spool_dir("fakemx"), hop(mx), extra=VERIFY, workers=1) as srv:
            rcpt(srv, "yes1@example.test").expect(250, "2.1.5")
            rcpt(srv, "no1@example.test").expect(550, "5.1.1", "no such user")
            rcpt(srv, "yes2@example.test").expect(250, "2.1.5")
            c = mx.counters()
            check_eq(c["data"] if "data" in c else 0, 0, "DATA commands at the next hop")
            check_eq(len(mx.messages), 0, "messages at the next hop")
            check(c.get("rset", 0) + c["quits"] >= 2, "no RSET or QUIT between probes: %r" % c)


@T.test("pipelined RCPTs behind a pending verification are answered in order")
def _():
    with FakeMX() as mx:
        mx.rcpt_reply = lambda a: (550, "5.1.1 no such user") if a.startswith("no") else None
        with RelayServer(spool_dir("pipe"), hop(mx), extra=VERIFY, workers=1) as srv:
            with srv.client() as c:
                c.ehlo("verify.client.test")
                c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<p1@example.test>\r\n"
                       b"RCPT TO:<no2@example.test>\r\nRCPT TO:<p3@example.test>\r\n"
                       b"RCPT TO:<p1@example.test>\r\nRSET\r\n")
                rs = c.replies(6)
                codes = [r.code for r in rs]
                check_eq(codes, [250, 250, 550, 250, 250, 250], "reply codes in order")
                check("<no2@example.test>" in rs[2].text, "550 names no2: %r" % rs[2])
                c.quit()


@T.test("next hop down: 450 4.1.1 ... unverified address: connect to ...: Connection refused")
def _():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with RelayServer(spool_dir("down"), "smtp:127.0.0.1:%d" % port, extra=VERIFY,
                     workers=1) as srv:
        r = rcpt(srv, "u@example.test")
        r.expect(450, "4.1.1")
        check(r.lines[0].startswith("450 4.1.1 <u@example.test>: Recipient address rejected: "
                                    "unverified address: connect to 127.0.0.1[127.0.0.1]:%d" % port),
              "reply: %r" % r)
        check("Connection refused" in r.text, "reason: %r" % r)
        # While the hop is not retried (retry_min), the answer comes at once.
        t0 = time.monotonic()
        rcpt(srv, "v@example.test").expect(450, "4.1.1", "Connection refused")
        check(time.monotonic() - t0 < 2, "second answer took %.1fs" % (time.monotonic() - t0))
        check_eq(srv.stats().get("verify_tempfail"), 2, "verify_tempfail")


@T.test("a next hop that never answers RCPT: 450 4.1.1 ... timeout after verify_timeout")
def _():
    with FakeMX() as mx:
        mx.rcpt_reply = lambda a: time.sleep(4) or None
        with RelayServer(spool_dir("slow"), hop(mx), extra=VERIFY + ("verify_timeout=1s",),
                         workers=1) as srv:
            t0 = time.monotonic()
            r = rcpt(srv, "slow@example.test")
            took = time.monotonic() - t0
            r.expect(450, "4.1.1", "unverified address: timeout")
            check(0.8 < took < 3.5, "answered after %.1fs" % took)


@T.test("verify_recipients = yes without relay_host or transport_maps: config error")
def _():
    p = subprocess.run([ringmxd_path(), "-t", "-o", "verify_recipients=yes"],
                       capture_output=True, text=True, timeout=20)
    check(p.returncode != 0, "exit 0")
    check("verify_recipients" in p.stderr and "relay_host" in p.stderr,
          "error: %r" % p.stderr)


class Utf8MX(FakeMX):
    """Like Postfix with smtputf8_enable = yes: a non-ASCII RCPT in a transaction whose
    MAIL did not say SMTPUTF8 gets 553 5.6.7 (RFC 6531 3.5)."""

    def __init__(self, **kw):
        self.mail_lines = []
        super().__init__(**kw)

    def _session(self, conn, info):
        orig = conn.line

        def line(*a):
            raw = orig(*a)
            if raw[:4].upper() == b"MAIL":
                info["utf8"] = b"SMTPUTF8" in raw.upper()
                self.mail_lines.append(raw)
            return raw

        conn.line = line
        return super()._session(conn, info)


@T.test("a UTF-8 address is probed with MAIL FROM:<> SMTPUTF8 (not refused as unknown)")
def _():
    mx = Utf8MX()

    def pol(ev, info, arg):
        if ev == "rcpt" and any(ord(ch) > 127 for ch in arg) and not info.get("utf8"):
            return (553, "5.6.7 Must declare SMTPUTF8 to send unicode address")
        return None

    mx.policy = pol
    with mx, RelayServer(spool_dir("utf8"), hop(mx), extra=VERIFY, workers=1) as srv:
        with srv.client() as c:
            c.ehlo("x.test")
            c.cmd("MAIL FROM:<a@sender.test> SMTPUTF8").expect(250)
            r = c.cmd("RCPT TO:<j\u00f6rg@example.test>")
            check(r.code == 250, "valid UTF-8 mailbox refused: %r (next hop saw %r)"
                  % (r.lines, mx.mail_lines))
            check(any(b"SMTPUTF8" in m.upper() for m in mx.mail_lines),
                  "the probe's MAIL lacks SMTPUTF8: %r" % mx.mail_lines)


@T.test("a probe does not wait behind a slow delivery: a free connection is opened")
def _():
    mx = FakeMX()
    slow = {"on": False}

    def data_reply(rec):
        if slow["on"]:
            time.sleep(5)
        return None

    mx.data_reply = data_reply
    with mx, RelayServer(spool_dir("slow"), hop(mx),
                         extra=VERIFY + ("verify_timeout=3s", "relay_idle_timeout=30s"),
                         workers=1, fast=False) as srv:
        with srv.client() as c:  # a probe opens the one connection, then a message
            c.ehlo("x.test")
            c.cmd("MAIL FROM:<a@sender.test>").expect(250)
            c.cmd("RCPT TO:<known@example.test>").expect(250)
            slow["on"] = True
            c.cmd("DATA").expect(354)
            c.send(b"Subject: t\r\n\r\nhi\r\n.\r\n")
            c.expect(250)
            c.quit()
        time.sleep(0.5)  # the delivery now waits for its end-of-data reply
        t0 = time.monotonic()
        with srv.client() as c:
            c.ehlo("x.test")
            c.cmd("MAIL FROM:<a@sender.test>").expect(250)
            r = c.cmd("RCPT TO:<other@example.test>")
            took = time.monotonic() - t0
            check(r.code == 250, "probe answered %r after %.1fs; next hop %r"
                  % (r.lines, took, mx.counters()))
            check(took < 2.5, "the probe waited %.1fs behind the delivery" % took)


if __name__ == "__main__":
    T.main()
