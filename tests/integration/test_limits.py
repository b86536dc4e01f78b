#!/usr/bin/env python3
"""Limits under floods and bombs: recipient_limit, error_limit, junk_limit,
line length, message_size_limit, max_connections, timeouts, many idle
connections. After each one a normal smtplib send must still succeed."""

import time

from ringmx_harness import (HOSTNAME, Client, Server, Suite, check, check_eq, smtplib_send,
                            wait_for)

T = Suite(__file__)
srv = T.shared(workers=1)
noerr = T.shared(workers=1, args=["-o", "error_limit=100000"])


def mail_rcpt(c, rcpt="u@example.test"):
    c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
    c.cmd("RCPT TO:<%s>" % rcpt).expect(250, "2.1.5")


@T.test("5000 RCPT in one write (error_limit high): 1000 x 250 2.1.5, 4000 x 452 4.5.3")
def _():
    s = noerr()
    before = s.stats()
    with s.client() as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.send_async("".join("RCPT TO:<r%d@example.test>\r\n" % i for i in range(5000)))
        for i in range(1000):
            c.expect(250, "2.1.5")
        for i in range(4000):
            c.expect(452, "4.5.3", "too many recipients")
        c.wait_sent()
        c.cmd("DATA").expect(354)
        c.send("Subject: many\r\n\r\nx\r\n.\r\n")
        c.expect(250, "2.0.0", "queued as")
        c.quit()
        s.wait_disconnect(c.local_port)
        lines = s.message_lines(c.local_port)
        check_eq(len(lines), 1, "message lines")
        check("nrcpt=1000" in lines[0], lines[0])
    after = s.stats()
    check_eq(after["rcpt_limit"] - before["rcpt_limit"], 4000, "rcpt_limit delta")
    check_eq(after["rcpt_accepted"] - before["rcpt_accepted"], 1000, "rcpt_accepted delta")
    smtplib_send(s)


@T.test("5000 RCPT with default error_limit 20: 1000 x 250, 21 x 452, 421 4.7.0, close")
def _():
    s = srv()
    with s.client() as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.send_async("".join("RCPT TO:<r%d@example.test>\r\n" % i for i in range(5000)))
        for i in range(1000):
            c.expect(250, "2.1.5")
        for i in range(21):
            c.expect(452, "4.5.3")
        check_eq(c.reply().lines, ["421 4.7.0 %s Error: too many errors" % HOSTNAME], "reply")
        c.expect_closed()
    smtplib_send(s)


@T.test("error_limit=5: 6 x 500 5.5.2 then 421 4.7.0 too many errors, close")
def _():
    with Server(workers=1, args=["-o", "error_limit=5"]) as s:
        before = s.stats()
        with s.client() as c:
            c.send("XYZZY\r\n" * 10)
            for i in range(6):
                c.expect(500, "5.5.2")
            c.expect(421, "4.7.0", "too many errors")
            c.expect_closed()
        check_eq(s.stats()["error_limit"] - before["error_limit"], 1, "error_limit delta")
        smtplib_send(s)


@T.test("100k NOOPs in one write: 101 x 250 then 421 4.7.0 too many junk commands")
def _():
    s = srv()
    with s.client() as c:
        c.ehlo()
        c.send_async(b"NOOP\r\n" * 100000)
        for i in range(101):
            c.expect(250, "2.0.0")
        check_eq(c.reply().lines, ["421 4.7.0 %s Error: too many junk commands" % HOSTNAME],
                 "reply")
        c.expect_closed()
        c.wait_sent()
    smtplib_send(s)


@T.test("20000 EHLOs in one write: the first is free, 101 more answered, then 421 4.7.0 "
        "(no ~27x reply amplifier)")
def _():
    s = srv()
    before = s.stats()
    with s.client() as c:
        c.send_async(b"EHLO x\r\n" * 20000)
        for i in range(102):
            check_eq(c.reply().code, 250, "EHLO reply %d" % i)
        check_eq(c.reply().lines, ["421 4.7.0 %s Error: too many junk commands" % HOSTNAME],
                 "reply")
        c.expect_closed()
        c.wait_sent()
    check_eq(s.stats().get("junk_limit", 0) - before.get("junk_limit", 0), 1, "junk_limit")
    smtplib_send(s)


@T.test("1 MB line without CRLF, then CRLF: exactly one 500 5.5.0")
def _():
    s = srv()
    before = s.stats()
    with s.client() as c:
        c.ehlo()
        c.send_async(b"NOOP " + b"x" * (1 << 20))
        c.wait_sent(30)
        c.send("\r\nNOOP\r\n")
        c.expect(500, "5.5.0", "line too long")
        c.expect(250, "2.0.0")
        c.quit()
    check_eq(s.stats()["line_too_long"] - before["line_too_long"], 1, "line_too_long delta")
    smtplib_send(s)


@T.test("1 MB of MAIL/RCPT garbage lines in one write: all answered, server fine")
def _():
    s = noerr()
    with s.client() as c:
        c.ehlo()
        data = b"RCPT TO:<" + b"a" * 600 + b"@example.test>\r\n"
        n = (1 << 20) // len(data)
        c.send_async(data * n)
        for i in range(n):
            c.expect(500, "5.5.0", "line too long")
        c.wait_sent()
        c.quit()
    smtplib_send(s)


@T.test("message_size_limit=10000: SIZE 10000 advertised; 10000 octets ok, 10001 refused 552 5.3.4")
def _():
    with Server(workers=1, args=["-o", "message_size_limit=10000"]) as s:
        with s.client() as c:
            r = c.cmd("EHLO client.test")
            check("SIZE 10000" in r.texts, "EHLO: %r" % r)
            c.cmd("MAIL FROM:<a@sender.test> SIZE=10001").expect(552, "5.3.4")
            line = b"y" * 98 + b"\r\n"
            mail_rcpt(c)
            c.cmd("DATA").expect(354)
            c.send(line * 100 + b".\r\n")              # exactly 10000 octets
            c.expect(250, "2.0.0", "queued as")
            mail_rcpt(c)
            c.cmd("DATA").expect(354)
            c.send(line * 100 + b"z\r\n" + b".\r\n")  # 10003 octets
            check_eq(c.reply().lines, ["552 5.3.4 Message size exceeds fixed limit"], "reply")
            mail_rcpt(c)
            c.cmd("DATA").expect(354)
            c.send((b".." + b"x" * 97 + b"\r\n") * 100 + b".\r\n")  # 10100 on the wire, 10000 unstuffed
            c.expect(250, "2.0.0", "queued as")
            c.quit()
            s.wait_disconnect(c.local_port)
            check_eq(len(s.message_lines(c.local_port, "rejected")), 1, "rejected lines")
            check_eq(len(s.message_lines(c.local_port, "queued")), 2, "sent lines")
        st = s.stats()
        check_eq(st["size_limit"], 2, "size_limit counter (MAIL SIZE= and end of data)")
        smtplib_send(s)


@T.test("5 MB message over a 1 MB limit: read to the end, one 552, session goes on")
def _():
    with Server(workers=1, args=["-o", "message_size_limit=1000000"]) as s:
        with s.client() as c:
            c.ehlo()
            mail_rcpt(c)
            c.cmd("DATA").expect(354)
            c.send_async((b"z" * 998 + b"\r\n") * 5000 + b".\r\nNOOP\r\n")
            c.expect(552, "5.3.4")
            c.expect(250, "2.0.0")
            c.wait_sent()
            c.quit()
        smtplib_send(s)


@T.test("body lines over 1000 octets are accepted and counted (long_lines)")
def _():
    s = srv()
    before = s.stats()
    with s.client() as c:
        c.ehlo()
        mail_rcpt(c)
        c.cmd("DATA").expect(354)
        c.send(b"Subject: long\r\n\r\n" + b"L" * 5000 + b"\r\nshort\r\n" + b"M" * 1200 + b"\r\n.\r\n")
        c.expect(250, "2.0.0", "queued as")
        c.quit()
    check_eq(s.stats()["long_lines"] - before["long_lines"], 2, "long_lines delta")


@T.test("max_connections=5 (1 worker): 6th connection gets 421 4.3.2 too many connections")
def _():
    with Server(workers=1, args=["-o", "max_connections=5"]) as s:
        held = [s.client() for _ in range(5)]
        c6 = Client(s.port, greet=False)
        r = c6.reply()
        check_eq(r.lines, ["421 4.3.2 %s Error: too many connections" % HOSTNAME], "6th reply")
        c6.expect_closed()
        c6.close()
        held[0].quit()
        held[0].close()

        def again():
            c = Client(s.port, greet=False)
            r = c.reply()
            if r.code == 220:
                c.quit()
                c.close()
                return True
            c.close()
            return False
        wait_for(again, what="a free slot after one QUIT")
        for c in held[1:]:
            c.quit()
            c.close()
        smtplib_send(s)
        check(s.stats()["connections_refused"] >= 1, "connections_refused counter")


@T.test("500 concurrent idle connections from 250 sources, then each QUITs cleanly")
def _():
    with Server(workers=2) as s:
        conns = []
        try:
            # 2 per source: client_connection_limit (50) is per client.
            for i in range(500):
                conns.append(s.client(source="127.0.8.%d" % (i % 250 + 1)))
            for c in conns:
                c.send("NOOP\r\n")
            for c in conns:
                c.expect(250, "2.0.0")
            for c in conns:
                c.send("QUIT\r\n")
            for c in conns:
                c.expect(221, "2.0.0")
                c.expect_closed()
        finally:
            for c in conns:
                c.close()
        st = s.stats()
        check_eq(st["connections_accepted"], 500, "connections_accepted")
        wait_for(lambda: s.stats()["connections_closed"] == 500, what="500 closed")
        smtplib_send(s)


def timeout_server(**kw):
    args = []
    for k, v in kw.items():
        args += ["-o", "%s=%s" % (k, v)]
    return Server(workers=1, args=args)


TIMEOUT_REPLY = ["421 4.4.2 %s Error: timeout exceeded" % HOSTNAME]


@T.test("greeting_timeout=1s, command_timeout=2s, data_timeout=1s: 421 4.4.2 and close")
def _():
    with timeout_server(greeting_timeout="1s", command_timeout="2s", data_timeout="1s") as s:
        with s.client() as c:               # nothing sent after the greeting
            t0 = time.monotonic()
            check_eq(c.reply().lines, TIMEOUT_REPLY, "greeting timeout")
            c.expect_closed()
            dt = time.monotonic() - t0
            check(0.5 <= dt <= 4, "greeting timeout after %.1fs" % dt)
        with s.client() as c:               # EHLO, then idle
            c.ehlo()
            t0 = time.monotonic()
            check_eq(c.reply().lines, TIMEOUT_REPLY, "command timeout")
            c.expect_closed()
            dt = time.monotonic() - t0
            check(1.5 <= dt <= 5, "command timeout after %.1fs" % dt)
        with s.client() as c:               # stalls inside DATA
            c.ehlo()
            mail_rcpt(c)
            c.cmd("DATA").expect(354)
            c.send("Subject: stall\r\n\r\nhalf")
            check_eq(c.reply().lines, TIMEOUT_REPLY, "data timeout")
            c.expect_closed()
            s.wait_disconnect(c.local_port)
            check_eq(s.message_lines(c.local_port, "queued"), [], "no message from a stalled DATA")
        check_eq(s.stats()["timeouts"], 3, "timeouts counter")
        smtplib_send(s)


@T.test("session_timeout=2s caps a busy session")
def _():
    with timeout_server(session_timeout="2s") as s:
        with s.client() as c:
            c.ehlo()
            t0 = time.monotonic()
            while True:
                r = c.cmd("NOOP")
                if r.code != 250:
                    break
                check(time.monotonic() - t0 < 6, "no session timeout after 6s")
                time.sleep(0.2)
            check_eq(r.lines, TIMEOUT_REPLY, "session timeout")
            c.expect_closed()
        smtplib_send(s)


T.main()
