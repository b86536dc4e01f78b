#!/usr/bin/env python3
"""tests/integration/test_nexthop.py - self-tests of the next hops in nexthop.py.

No ringmxd here: FakeMX, SmtpSink (Postfix smtp-sink) and DovecotLMTP are driven with
Python's smtplib and raw sockets, so that the relay tests built on them can trust what
they report. Checks that need smtp-sink or dovecot skip themselves when it is missing;
exit 77 when nothing ran. Ends with "N passed, M failed". Well under 30 s.

    PYTHONPATH=tests/integration python3 tests/integration/test_nexthop.py
"""
import os
import smtplib
import socket
import ssl
import tempfile
import time

from ringmx_harness import Suite, Skip, Client, check, check_eq, self_signed_cert
import nexthop
from nexthop import FakeMX, SmtpSink, DovecotLMTP, NextHopError, Unavailable

T = Suite(__file__)
TMP = tempfile.TemporaryDirectory(prefix="ringmx-nexthop-")

# A body every next hop must return byte for byte: dot lines (stuffed on the wire), a
# lone dot, 8-bit octets, a long line, an empty last line.
BODY = (b"From: a@sender.test\r\nTo: u@example.test\r\nSubject: next hop\r\n\r\n"
        b".leading dot\r\n.\r\n..two dots\r\n"
        b"caf\xc3\xa9 8bit \xff\r\n" + b"x" * 5000 + b"\r\n\r\n")


def stuffed(body):
    """body as it goes on the wire inside DATA, with the terminator."""
    out = b"".join((b"." + ln if ln.startswith(b".") else ln)
                   for ln in body.splitlines(keepends=True))
    return out + b".\r\n"


def smtp(mx, **kw):
    return smtplib.SMTP("127.0.0.1", mx.port, local_hostname="client.test", timeout=10, **kw)


def lmtp_send(port, sender, rcpts, body):
    """One LMTP transaction on a raw connection (smtplib.LMTP reads a single reply after
    the data, so it desynchronises with several recipients); returns the final replies."""
    with Client(port) as c:
        c.cmd("LHLO client.test").expect(250)
        c.cmd("MAIL FROM:<%s>" % sender).expect(250)
        for r in rcpts:
            c.cmd("RCPT TO:<%s>" % r).expect(250)
        c.cmd("DATA").expect(354)
        c.send(stuffed(body))
        finals = c.replies(len(rcpts))
        c.cmd("QUIT").expect(221)       # smtp-sink: "221 Bye", no enhanced code
        return finals


def need(fn):
    try:
        return fn()
    except Unavailable as e:
        raise Skip(str(e))


# ---------------------------------------------------------------- FakeMX

@T.test("FakeMX: smtplib, two recipients, dot-unstuffed byte-exact, queue id")
def _():
    with FakeMX() as mx, smtp(mx) as s:
        code, ehlo = s.ehlo()
        check(code == 250 and b"PIPELINING" in ehlo and b"CHUNKING" not in ehlo
              and b"STARTTLS" not in ehlo, "EHLO %r" % ehlo)
        check_eq(s.sendmail("a@sender.test", ["u@example.test", "v@example.test"], BODY), {},
                 "refused")
        msgs = mx.wait_for(1)
        check_eq(msgs[0].mail_from, "a@sender.test", "sender")
        check_eq(msgs[0].rcpts, ["u@example.test", "v@example.test"], "rcpts")
        check_eq(msgs[0].data_bytes, BODY, "data")
        check_eq((msgs[0].proto, msgs[0].bdat, msgs[0].tls), ("ESMTP", False, False), "kind")
        c = mx.counters()
        check_eq((c["connections"], c["transactions"], c["messages"]), (1, 1, 1), "counters")
        check_eq(mx.errors, [], "errors")


@T.test("FakeMX: pipelined commands in one write get their replies in order, in one write")
def _():
    with FakeMX() as mx, Client(mx.port) as c:
        c.ehlo()
        c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\n"
               "RCPT TO:<v@example.test>\r\nDATA\r\n")
        time.sleep(0.2)
        # All four replies were written together, so the read that brought the first
        # one brought the other three.
        rs = [c.reply()]
        check(c.buf.count(b"\r\n") == 3, "replies not written together: %r" % c.buf)
        rs += c.replies(3)
        check_eq([r.code for r in rs], [250, 250, 250, 354], "replies")
        c.send(stuffed(BODY) + b"MAIL FROM:<b@sender.test>\r\nRCPT TO:<w@example.test>\r\n"
               b"DATA\r\n")
        c.expect(250, "2.0.0", "queued as")
        c.expect(250)
        c.expect(250)
        c.expect(354)
        c.send(b"second\r\n.\r\nQUIT\r\n")
        c.expect(250)
        c.expect(221)
        msgs = mx.wait_for(2)
        check_eq([m.data_bytes for m in msgs], [BODY, b"second\r\n"], "data")
        check(mx.counters()["max_pipelined"] >= 4, "max_pipelined %r" % mx.counters())
        check_eq(mx.errors, [], "errors")


@T.test("FakeMX: pipelining=False does not offer it and records a client that pipelines")
def _():
    with FakeMX(pipelining=False) as mx, Client(mx.port) as c:
        r = c.ehlo()
        check("PIPELINING" not in r.text, "offered: %r" % r)
        c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\n")
        c.expect(250)
        c.expect(250)
        check(any("pipelined without PIPELINING" in e for e in mx.errors), "errors %r" % mx.errors)


@T.test("FakeMX: BDAT chunks (CHUNKING) arrive verbatim, pipelined with MAIL/RCPT")
def _():
    with FakeMX(chunking=True) as mx, Client(mx.port) as c:
        r = c.ehlo()
        check("CHUNKING" in r.text, "not offered: %r" % r)
        a, b = BODY[:100] + b"\r\n.\r\n", BODY[100:]
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\n"
               b"BDAT %d\r\n%sBDAT %d LAST\r\n%s" % (len(a), a, len(b), b))
        check_eq([x.code for x in c.replies(4)], [250, 250, 250, 250], "replies")
        m = mx.wait_for(1)[0]
        check_eq((m.data_bytes, m.bdat), (a + b, True), "data")
        c.send(b"BDAT 3 LAST\r\nabc")
        c.expect(503)       # no MAIL: refused, the 3 octets consumed
        c.cmd("NOOP").expect(250)


@T.test("FakeMX: BDAT without CHUNKING offered: 500 and the connection closes")
def _():
    with FakeMX() as mx, Client(mx.port) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250)
        c.cmd("RCPT TO:<u@example.test>").expect(250)
        c.send("BDAT 3 LAST\r\nabc")
        c.expect(500, "5.5.1")
        c.expect_closed()
        check(any("BDAT without CHUNKING" in e for e in mx.errors), "errors %r" % mx.errors)


@T.test("FakeMX: LMTP, LHLO only, one reply per accepted recipient after the data")
def _():
    with FakeMX(lmtp=True) as mx:
        mx.rcpt_reply = lambda a: (550, "5.1.1 <%s>: no such user" % a) if a.startswith("bad") else None
        mx.lmtp_rcpt_reply = lambda a: (452, "4.2.2 <%s>: mailbox full" % a) if a.startswith("full") else None
        with Client(mx.port) as c:
            c.cmd("EHLO x.test").expect(500)
            r = c.cmd("LHLO client.test")
            r.expect(250)
            c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<ok@example.test>\r\n"
                   "RCPT TO:<bad@example.test>\r\nRCPT TO:<full@example.test>\r\n"
                   "RCPT TO:<ok2@example.test>\r\nDATA\r\n")
            rs = c.replies(6)
            check_eq([x.code for x in rs], [250, 250, 550, 250, 250, 354], "replies")
            c.send(stuffed(BODY))
            finals = c.replies(3)       # ok, full, ok2: one each, in RCPT order
            check_eq([x.code for x in finals], [250, 452, 250], "final replies")
            check("<ok@example.test>" in finals[0].text and "full" in finals[1].text,
                  "final replies name the recipient: %r" % finals)
            c.quit()
        m = mx.wait_for(1)[0]
        check_eq((m.rcpts, m.proto, m.data_bytes), (["ok@example.test", "ok2@example.test"],
                                                    "LMTP", BODY), "message")
        check_eq(mx.counters()["rcpts_refused"], 1, "rcpts_refused")


@T.test("FakeMX: LMTP over a unix socket with smtplib.LMTP")
def _():
    path = os.path.join(TMP.name, "fakemx.lmtp")
    with FakeMX(lmtp=True, unix_path=path) as mx:
        s = smtplib.LMTP(path, timeout=10)
        try:
            check_eq(s.sendmail("a@sender.test", ["u@example.test"], BODY), {}, "refused")
        finally:
            s.quit()
        check_eq(mx.wait_for(1)[0].data_bytes, BODY, "data")


@T.test("FakeMX: STARTTLS, EHLO again, mail inside TLS; plaintext after STARTTLS is flagged")
def _():
    cert, key = self_signed_cert(os.path.join(TMP.name, "tls"))
    with FakeMX(starttls_cert=(cert, key)) as mx:
        with smtp(mx) as s:
            s.ehlo()
            check(s.has_extn("starttls"), "STARTTLS not offered")
            ctx = ssl.create_default_context(cafile=cert)
            s.starttls(context=ctx)
            s.ehlo()
            check(not s.has_extn("starttls"), "STARTTLS offered again inside TLS")
            s.sendmail("a@sender.test", ["u@example.test"], BODY)
        m = mx.wait_for(1)[0]
        check_eq((m.tls, m.data_bytes), (True, BODY), "message")
        check_eq(mx.counters()["tls"], 1, "tls")
        with Client(mx.port) as c:
            c.ehlo()
            c.send("STARTTLS\r\nMAIL FROM:<evil@sender.test>\r\n")
            c.expect(220)
        deadline = time.monotonic() + 5
        while not any("CVE-2011-0411" in e for e in mx.errors) and time.monotonic() < deadline:
            time.sleep(0.02)
        check(any("CVE-2011-0411" in e for e in mx.errors), "errors %r" % mx.errors)


@T.test("FakeMX: tempfail_until: 451 4.3.0 to MAIL inside the window, 250 after it")
def _():
    with FakeMX() as mx:
        mx.tempfail_until = time.time() + 0.5
        with Client(mx.port) as c:
            c.ehlo()
            c.cmd("MAIL FROM:<a@sender.test>").expect(451, "4.3.0")
            time.sleep(0.6)
            c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        check_eq(mx.counters()["tempfails"], 1, "tempfails")


@T.test("FakeMX: 5xx for one recipient, the others delivered; mail_reply and data_reply")
def _():
    with FakeMX() as mx:
        mx.rcpt_reply = lambda a: (550, "5.1.1 No such user") if a == "bad@example.test" else None
        with smtp(mx) as s:
            refused = s.sendmail("a@sender.test", ["u@example.test", "bad@example.test"], BODY)
            check_eq(refused, {"bad@example.test": (550, b"5.1.1 No such user")}, "refused")
            mx.data_reply = (554, "5.7.1 Spam")
            try:
                s.sendmail("a@sender.test", ["u@example.test"], BODY)
                check(False, "554 to the data was not raised")
            except smtplib.SMTPDataError as e:
                check_eq(e.smtp_code, 554, "code")
            mx.data_reply = None
            mx.mail_reply = lambda f: (553, "5.7.1 Sender refused") if f == "" else None
            try:
                s.sendmail("", ["u@example.test"], BODY)
                check(False, "553 to MAIL was not raised")
            except smtplib.SMTPSenderRefused as e:
                check_eq(e.smtp_code, 553, "code")
        msgs = mx.messages
        check_eq([m.rcpts for m in msgs], [["u@example.test"]], "delivered")
        check_eq(mx.counters()["mail_refused"], 1, "mail_refused")


@T.test("FakeMX: refuse() then accept_again() on the same port")
def _():
    with FakeMX() as mx:
        port = mx.port
        c = Client(port)
        c.ehlo()
        mx.refuse()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            check(False, "connect succeeded while refusing")
        except ConnectionRefusedError:
            pass
        try:
            c.cmd("NOOP")
            check(False, "the open session survived refuse()")
        except Exception:   # noqa: BLE001 - closed or reset, either is "down"
            pass
        c.close()
        mx.accept_again()
        check_eq(mx.port, port, "port")
        with smtp(mx) as s:
            s.sendmail("a@sender.test", ["u@example.test"], BODY)
        mx.wait_for(1)
        check_eq(mx.counters()["connections"], 2, "connections")


@T.test("FakeMX: drop_after_data=1 closes without a reply once, then delivers")
def _():
    with FakeMX() as mx:
        mx.drop_after_data = 1
        with smtp(mx) as s:
            try:
                s.sendmail("a@sender.test", ["u@example.test"], BODY)
                check(False, "no disconnect")
            except smtplib.SMTPServerDisconnected:
                pass
        check_eq([m.data_bytes for m in mx.dropped], [BODY], "dropped")
        check_eq(mx.messages, [], "messages")
        with smtp(mx) as s:
            s.sendmail("a@sender.test", ["u@example.test"], BODY)
        check_eq(len(mx.wait_for(1)), 1, "delivered after the drop")
        check_eq(mx.counters()["dropped"], 1, "dropped counter")


@T.test("FakeMX: strict CRLF: bare LF command 500 5.5.2, bare LF in data 550 5.6.11")
def _():
    with FakeMX() as mx, Client(mx.port) as c:
        c.ehlo()
        c.send("NOOP\n")
        c.expect(500, "5.5.2")
        c.cmd("MAIL FROM:<a@sender.test>").expect(250)
        c.cmd("RCPT TO:<u@example.test>").expect(250)
        c.cmd("DATA").expect(354)
        c.send(b"a\nb\r\n.\r\n")
        c.expect(550, "5.6.11")
        check_eq(mx.messages, [], "messages")
        check_eq(len(mx.errors), 2, "errors %r" % mx.errors)


@T.test("FakeMX: wait_for times out with a reason; close() joins idle sessions")
def _():
    mx = FakeMX(timeout=2)
    c = Client(mx.port)
    t0 = time.monotonic()
    try:
        mx.wait_for(1, timeout=0.2)
        check(False, "wait_for did not time out")
    except NextHopError as e:
        check("0 message(s)" in str(e), str(e))
    mx.close()
    check(time.monotonic() - t0 < 3, "close took %.1fs" % (time.monotonic() - t0))
    c.close()


# ---------------------------------------------------------------- smtp-sink

@T.test("SmtpSink: -d dumps read back byte-exact (sender, rcpts, data), -c counts")
def _():
    d = os.path.join(TMP.name, "sink-dump")
    with need(lambda: SmtpSink(dump_dir=d)) as sink:
        with smtp(sink) as s:
            s.sendmail("a@sender.test", ["u@example.test", "v@example.test"], BODY)
            s.sendmail("", ["w@example.test"], b"Subject: 2\r\n\r\nsecond\r\n")
        msgs = sink.wait_for(2)
        check_eq(sink.count(), 2, "mesg counter")
        byfrom = {m.sender: m for m in msgs}
        m = byfrom["a@sender.test"]
        check_eq((m.rcpts, m.data, m.proto, m.helo),
                 (["u@example.test", "v@example.test"], BODY, "ESMTP", "client.test"), "first")
        m = byfrom[""]
        check_eq((m.rcpts, m.data), (["w@example.test"], b"Subject: 2\r\n\r\nsecond\r\n"), "second")


@T.test("SmtpSink: LMTP (-L), one final reply per recipient, dump proto LMTP")
def _():
    d = os.path.join(TMP.name, "sink-lmtp")
    with need(lambda: SmtpSink(lmtp=True, dump_dir=d)) as sink:
        finals = lmtp_send(sink.port, "a@sender.test", ["u@example.test", "v@example.test"], BODY)
        check_eq([r.code for r in finals], [250, 250], "one final reply per recipient")
        m = sink.wait_for(1)[0]
        check_eq((m.proto, m.rcpts, m.data), ("LMTP", ["u@example.test", "v@example.test"], BODY),
                 "message")


@T.test("SmtpSink: extra_args -r RCPT gives 4xx to every recipient")
def _():
    with need(lambda: SmtpSink(extra_args=("-r", "RCPT"))) as sink, smtp(sink) as s:
        try:
            s.sendmail("a@sender.test", ["u@example.test"], BODY)
            check(False, "not refused")
        except smtplib.SMTPRecipientsRefused as e:
            check_eq(e.recipients["u@example.test"][0], 450, "code")


# ---------------------------------------------------------------- Dovecot

@T.test("DovecotLMTP: delivery into Maildir byte-exact after Dovecot's own headers")
def _():
    d = os.path.join(TMP.name, "dovecot")
    with need(lambda: DovecotLMTP(d)) as dc:
        finals = lmtp_send(dc.port, "a@sender.test", ["bob@example.test", "Carol@Example.test"],
                           BODY)
        check_eq([r.code for r in finals], [250, 250], "final replies %r" % finals)
        lmtp_send(dc.port, "b@sender.test", ["bob@example.test"], b"Subject: 2\r\n\r\nsecond\r\n")
        bob = dc.wait_for("bob", "example.test", 2)
        carol = dc.wait_for("carol", "example.test", 1)
        added, orig = nexthop.strip_dovecot_headers(bob[0])
        check_eq(orig, BODY, "bob's first message")
        check_eq(added.get("Return-Path"), "<a@sender.test>", "Return-Path")
        check("Delivered-To" not in added, "Delivered-To with two recipients: %r" % added)
        check("with LMTP" in added.get("Received", ""), "Received: %r" % added)
        check_eq(nexthop.strip_dovecot_headers(carol[0])[1], BODY, "carol's message")
        added, orig = nexthop.strip_dovecot_headers(bob[1])
        check_eq(orig, b"Subject: 2\r\n\r\nsecond\r\n", "bob's second message")
        check_eq(added.get("Delivered-To"), "bob@example.test", "Delivered-To, one recipient")
        check(b"\r" not in bob[0], "Maildir stores LF line ends")
        # and over the unix socket
        s = smtplib.LMTP(dc.unix_path, timeout=10)
        try:
            s.sendmail("c@sender.test", ["dave@example.test"], BODY)
        finally:
            s.quit()
        check_eq(nexthop.strip_dovecot_headers(dc.wait_for("dave", "example.test", 1)[0])[1],
                 BODY, "unix socket delivery")
        check("Error" not in dc.log() and "Fatal" not in dc.log(), "log: %s" % dc.log()[-1000:])
    check(dc.proc.poll() is not None, "dovecot still running after close()")


if __name__ == "__main__":
    try:
        T.main(needs_ringmxd=False)
    finally:
        TMP.cleanup()
