#!/usr/bin/env python3
"""ringmxd with Python's smtplib: plain sends, several recipients, null
sender, SMTPUTF8, EHLO keywords, per-message log lines, IPv6."""

import os
import re
import shutil
import smtplib
import subprocess
import tempfile
from email.message import EmailMessage

from ringmx_harness import (HOSTNAME, TIMEOUT, Server, Skip, Suite, check, check_eq,
                            ipv6_available, ringmxd_path, smtplib_send)

T = Suite(__file__)
srv = T.shared()


def message(sender="alice@sender.test", to=("u@example.test",), body="hello\n", subject="t"):
    m = EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(to)
    m["Subject"] = subject
    m.set_content(body)
    return m


def connect(s=None, host=None, port=None):
    s = s or srv()
    return smtplib.SMTP(host or s.host, port or s.port, local_hostname="smtplib.test",
                        timeout=TIMEOUT)


def finish(s, c):
    """QUIT, then wait for the session's disconnect line; returns its
    message log lines."""
    port = c.sock.getsockname()[1]
    code, _ = c.quit()
    check_eq(code, 221, "QUIT reply")
    s.wait_disconnect(port)
    return s.message_lines(port)


@T.test("greeting and EHLO keywords (no STARTTLS)")
def _():
    with connect() as c:
        code, text = c.ehlo()
        check_eq(code, 250, "EHLO code")
        check(text.decode().splitlines()[0].startswith(HOSTNAME),
              "EHLO first line should name %s: %r" % (HOSTNAME, text))
        f = c.esmtp_features
        for kw in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8",
                   "chunking"):
            check(kw in f, "EHLO lacks %s: %r" % (kw.upper(), f))
        check_eq(f["size"], "10240000", "SIZE value")
        check("starttls" not in f, "STARTTLS advertised without TLS: %r" % f)
        check_eq(c.quit()[0], 221, "QUIT")


@T.test("send_message: 250 2.0.0 queued as 13-char id, logged status=queued")
def _():
    s = srv()
    with connect() as c:
        c.ehlo()
        port = c.sock.getsockname()[1]
        c.mail("alice@sender.test")
        code, _ = c.rcpt("u@example.test")
        check_eq(code, 250, "RCPT")
        code, text = c.data(message().as_bytes())
        check_eq(code, 250, "end of data")
        t = text.decode()
        check(t.startswith("2.0.0 Ok: queued as "), "reply text %r" % t)
        qid = t.rsplit(" ", 1)[1]
        check(len(qid) == 13 and qid.isalnum(), "queue id %r is not 13 alphanumerics" % qid)
    lines = s.wait_log(r"%s: client=\[127\.0\.0\.1\]:%d, .*status=queued" % (qid, port))
    ln = lines[0]
    for part in ("helo=<smtplib.test>", "from=<alice@sender.test>", "nrcpt=1",
                 "(250 2.0.0 Ok: queued as %s)" % qid):
        check(part in ln, "message log line lacks %r: %s" % (part, ln))
    s.wait_disconnect(port)
    check_eq(len(s.message_lines(port)), 1, "message lines for the session")


@T.test("send_message with three recipients: nrcpt=3")
def _():
    s = srv()
    with connect() as c:
        rcpts = ["a@example.test", "B@EXAMPLE.TEST", "c@example.test"]
        refused = c.send_message(message(to=rcpts))
        check_eq(refused, {}, "refused recipients")
        lines = finish(s, c)
    check_eq(len(lines), 1, "message lines")
    check("nrcpt=3" in lines[0] and "status=queued" in lines[0], lines[0])


@T.test("null sender <> via sendmail(''), logged from=<>")
def _():
    s = srv()
    with connect() as c:
        refused = c.sendmail("", ["postmaster@example.test"], message().as_bytes(),
                             mail_options=["BODY=8BITMIME"])
        check_eq(refused, {}, "refused")
        lines = finish(s, c)
    check_eq(len(lines), 1, "message lines")
    check("from=<>" in lines[0], lines[0])


@T.test("SMTPUTF8: UTF-8 local part \u03b4\u03bf\u03ba\u03b9\u03bc\u03ae@example.test accepted")
def _():
    s = srv()
    with connect() as c:
        m = message(sender="\u03b1\u03bb\u03af\u03ba\u03b7@sender.test",
                    to=["\u03b4\u03bf\u03ba\u03b9\u03bc\u03ae@example.test"],
                    body="\u03ba\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1\n")
        # send_message sees non-ASCII addresses and uses SMTPUTF8 BODY=8BITMIME.
        refused = c.send_message(m)
        check_eq(refused, {}, "refused")
        lines = finish(s, c)
    check_eq(len(lines), 1, "message lines")
    check("status=queued" in lines[0], lines[0])


@T.test("relay refused: 550 5.7.1 Relay access denied (SMTPRecipientsRefused)")
def _():
    with connect() as c:
        try:
            c.sendmail("a@sender.test", ["victim@elsewhere.test"], message().as_bytes())
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients["victim@elsewhere.test"]
            check_eq(code, 550, "RCPT code")
            t = text.decode()
            check(t.startswith("5.7.1 <victim@elsewhere.test>: Relay access denied"), t)
        else:
            raise AssertionError("relay recipient was accepted")
        check_eq(c.quit()[0], 221, "QUIT")


@T.test("one relay and one local recipient: message sent to the local one")
def _():
    s = srv()
    with connect() as c:
        refused = c.sendmail("a@sender.test", ["x@elsewhere.test", "u@example.test"],
                             message().as_bytes())
        check_eq(list(refused), ["x@elsewhere.test"], "refused recipients")
        check_eq(refused["x@elsewhere.test"][0], 550, "refused code")
        lines = finish(s, c)
    check_eq(len(lines), 1, "message lines")
    check("nrcpt=1" in lines[0], lines[0])


@T.test("NOOP/RSET 250 2.0.0, VRFY 252, EXPN 502 5.5.1, HELP 214")
def _():
    with connect() as c:
        c.ehlo()
        code, text = c.noop()
        check_eq((code, text.decode()[:5]), (250, "2.0.0"), "NOOP")
        code, text = c.rset()
        check_eq((code, text.decode()[:5]), (250, "2.0.0"), "RSET")
        code, text = c.verify("u@example.test")
        check_eq((code, text.decode()[:5]), (252, "2.0.0"), "VRFY")
        code, text = c.expn("list")
        check_eq((code, text.decode()[:5]), (502, "5.5.1"), "EXPN")
        c.putcmd("HELP")
        code, text = c.getreply()
        check_eq((code, text.decode()[:5]), (214, "2.0.0"), "HELP")
        check_eq(c.quit()[0], 221, "QUIT")


@T.test("HELO (not EHLO) then a message")
def _():
    s = srv()
    with connect() as c:
        code, _ = c.helo("old.client.test")
        check_eq(code, 250, "HELO")
        check_eq(c.sendmail("a@sender.test", ["u@example.test"], b"Subject: x\r\n\r\nx\r\n"),
                 {}, "refused")
        lines = finish(s, c)
    check_eq(len(lines), 1, "message lines")
    check("helo=<old.client.test>" in lines[0], lines[0])


@T.test("20 messages on one connection, distinct queue ids")
def _():
    s = srv()
    qids = set()
    with connect() as c:
        c.ehlo()
        for i in range(20):
            c.mail("a@sender.test")
            check_eq(c.rcpt("u%d@example.test" % i)[0], 250, "RCPT")
            code, text = c.data(message(body="message %d\n" % i).as_bytes())
            check_eq(code, 250, "end of data %d" % i)
            qids.add(text.decode().rsplit(" ", 1)[1])
        lines = finish(s, c)
    check_eq(len(qids), 20, "distinct queue ids")
    check_eq(len(lines), 20, "message log lines")


@T.test("1 MB message with dot-leading lines accepted")
def _():
    s = srv()
    body = "".join((".dot %06d\n" if i % 3 == 0 else "line %06d padding padding\n") % i
                   for i in range(50000))
    check(len(body) > 1000000, "body size")
    with connect() as c:
        check_eq(c.sendmail("a@sender.test", ["u@example.test"],
                            message(body=body).as_bytes()), {}, "refused")
        lines = finish(s, c)
    check_eq(len(lines), 1, "message lines")
    import re
    m = re.search(r"size=(\d+)", lines[0])
    check(m is not None and int(m.group(1)) >= len(body), "size in %s" % lines[0])


@T.test("IPv6 [::1] listener next to 127.0.0.1")
def _():
    if not ipv6_available():
        raise Skip("::1 cannot be bound here")
    with Server(listen=("127.0.0.1", "::1"), workers=1) as s6:
        check("[::1]:%d" % s6.ports[1] in s6.log(), "startup line should name [::1]:%d: %s"
              % (s6.ports[1], s6.log()))
        smtplib_send(s6, host="::1", port=s6.ports[1])
        smtplib_send(s6)
        s6.wait_log(r"client=\[[^\]]*::1\]:\d+, .*status=queued")


def spool_tool():
    p = os.environ.get("RINGMX_SPOOL")
    if not p:
        p = os.path.join(os.path.dirname(ringmxd_path()), "tools", "ringmx-spool")
    return p


@T.test("send_message(mail_options=[SMTPUTF8, BODY=8BITMIME]), UTF-8 recipient: "
        "the doubled parameters are accepted and the message is stored")
def _():
    # smtplib adds SMTPUTF8 and BODY=8BITMIME itself for a non-ASCII
    # address, so MAIL carries each twice (issue 12); Postfix accepts it.
    d = tempfile.mkdtemp(prefix="ringmx-smtplib-")
    try:
        with Server(args=["-o", "sink=spool", "-o", "spool_dir=" + os.path.join(d, "spool")],
                    workers=1) as s:
            rcpt = "\u00fcmlaut.\u00e9t\u00e9@example.test"
            m = message(sender="a@sender.test", to=[rcpt], body="gr\u00fc\u00dfe\n")
            with connect(s) as c:
                sent = []
                orig = c.putcmd

                def spy(cmd, args=""):
                    sent.append((cmd, args))
                    return orig(cmd, args)
                c.putcmd = spy
                refused = c.send_message(m, "a@sender.test", [rcpt],
                                         mail_options=["SMTPUTF8", "BODY=8BITMIME"])
                check_eq(refused, {}, "refused")
                lines = finish(s, c)
            mail = [a for cmd, a in sent if cmd.lower() == "mail"]
            check(len(mail) == 1 and mail[0].count("SMTPUTF8") == 2
                  and mail[0].count("BODY=8BITMIME") == 2,
                  "smtplib no longer doubles the parameters: %r" % mail)
            check_eq(len(lines), 1, "message lines")
            check("status=queued" in lines[0], lines[0])
            qid = re.search(r"queued as (\w+)", lines[0]).group(1)
            out = subprocess.run([spool_tool(), "-d", os.path.join(d, "spool"), "cat", qid],
                                 capture_output=True, timeout=TIMEOUT)
            check_eq(out.returncode, 0, "ringmx-spool cat exit")
            check(("gr\u00fc\u00dfe").encode() in out.stdout and
                  ("To: " + rcpt).encode() in out.stdout,
                  "stored message lacks the UTF-8 content: %r" % out.stdout[-300:])
            show = subprocess.run([spool_tool(), "-d", os.path.join(d, "spool"), "show", qid],
                                  capture_output=True, timeout=TIMEOUT).stdout.decode()
            check(rcpt in show, "envelope lacks %s: %s" % (rcpt, show))
    finally:
        shutil.rmtree(d)


@T.test("after everything: a plain smtplib send still works")
def _():
    smtplib_send(srv())


T.main()
