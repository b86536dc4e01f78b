#!/usr/bin/env python3
"""ringmxd SMTP command table over raw sockets: greeting, EHLO, sequence
and syntax errors, pipelining, synchronization, BDAT, bare CR/LF in
command lines, line length."""

from ringmx_harness import HOSTNAME, Suite, check, check_eq, qid_of, smtplib_send

T = Suite(__file__)
srv = T.shared()


def ehlo_client():
    c = srv().client()
    c.ehlo()
    return c


@T.test("greeting: 220 <hostname> ESMTP ringmx")
def _():
    with srv().client(greet=False) as c:
        r = c.reply()
        r.expect(220)
        check_eq(len(r.lines), 1, "greeting lines")
        check(r.lines[0].startswith("220 %s ESMTP" % HOSTNAME), "greeting %r" % r)
        c.quit()


@T.test("EHLO: 250-<hostname>, exact keyword set, no STARTTLS")
def _():
    with srv().client() as c:
        r = c.cmd("EHLO client.test")
        r.expect(250)
        check(r.lines[0].startswith("250-%s" % HOSTNAME), "first EHLO line %r" % r.lines[0])
        kws = sorted(t.upper() for t in r.texts[1:])
        check_eq(kws, sorted(["PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES",
                              "SMTPUTF8", "CHUNKING"]), "EHLO keywords")
        c.quit()


@T.test("HELO: single-line 250")
def _():
    with srv().client() as c:
        r = c.cmd("HELO client.test")
        r.expect(250)
        check_eq(len(r.lines), 1, "HELO reply lines")
        c.quit()


@T.test("MAIL before EHLO: 503 5.5.1")
def _():
    with srv().client() as c:
        c.cmd("MAIL FROM:<a@sender.test>").expect(503, "5.5.1")
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.quit()


@T.test("RCPT before MAIL, DATA without MAIL: 503 5.5.1")
def _():
    with ehlo_client() as c:
        c.cmd("RCPT TO:<u@example.test>").expect(503, "5.5.1")
        c.cmd("DATA").expect(503, "5.5.1")
        c.cmd("BDAT 0 LAST").expect(503, "5.5.1")
        c.quit()


@T.test("nested MAIL: 503 5.5.1, transaction kept")
def _():
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("MAIL FROM:<b@sender.test>").expect(503, "5.5.1")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.quit()


@T.test("DATA with no accepted recipient: 554 5.5.1")
def _():
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<x@elsewhere.test>").expect(550, "5.7.1")
        c.cmd("DATA").expect(554, "5.5.1", "no valid recipients")
        c.quit()


@T.test("MAIL/RCPT syntax: 501 5.5.4 / 5.1.7 / 5.1.3, 555 5.5.4")
def _():
    with ehlo_client() as c:
        c.cmd("MAIL FROM:a@sender.test").expect(501, "5.5.4")
        c.cmd("MAIL FROM:<a..b@sender.test>").expect(501, "5.1.7")
        c.cmd("MAIL FROM:<a@>").expect(501, "5.1.7")
        c.cmd("MAIL FROM:<a@sender.test> FOO=bar").expect(555, "5.5.4")
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:u@example.test").expect(501, "5.5.4")
        c.cmd("RCPT TO:<u..v@example.test>").expect(501, "5.1.3")
        c.cmd("RCPT TO:<u@example.test> NOTIFY=NEVER XYZZY=1").expect(555, "5.5.4")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.quit()


@T.test("MAIL SIZE= over the limit: 552 5.3.4; at the limit: 250")
def _():
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<a@sender.test> SIZE=10240001").expect(552, "5.3.4")
        c.cmd("MAIL FROM:<a@sender.test> SIZE=10240000").expect(250, "2.1.0")
        c.quit()


@T.test("UTF-8 address without SMTPUTF8: 553 5.6.7; with it: 250")
def _():
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<\u03b1\u03bb\u03af\u03ba\u03b7@sender.test>").expect(553, "5.6.7")
        c.cmd("MAIL FROM:<\u03b1\u03bb\u03af\u03ba\u03b7@sender.test> SMTPUTF8").expect(250, "2.1.0")
        c.cmd("RCPT TO:<\u03b4\u03bf\u03ba\u03b9\u03bc\u03ae@example.test>").expect(250, "2.1.5")
        c.quit()


@T.test("RSET/NOOP 250 2.0.0, VRFY 252 2.0.0, EXPN 502 5.5.1, HELP 214 2.0.0")
def _():
    with ehlo_client() as c:
        c.cmd("NOOP").expect(250, "2.0.0")
        c.cmd("RSET").expect(250, "2.0.0")
        c.cmd("VRFY u@example.test").expect(252, "2.0.0")
        c.cmd("EXPN staff").expect(502, "5.5.1")
        c.cmd("HELP").expect(214, "2.0.0")
        c.quit()


@T.test("unknown command 500 5.5.2, STARTTLS 502 5.5.1, lower case accepted")
def _():
    with ehlo_client() as c:
        c.cmd("XYZZY").expect(500, "5.5.2", "Error: command not recognized")
        c.cmd("STARTTLS").expect(502, "5.5.1")
        c.cmd("mail from:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("rcpt to:<u@example.test>").expect(250, "2.1.5")
        c.cmd("rset").expect(250, "2.0.0")
        c.send("quit\r\n")
        c.expect(221, "2.0.0")
        c.expect_closed()


@T.test("RSET ends the transaction: RCPT after RSET is 503")
def _():
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RSET").expect(250, "2.0.0")
        c.cmd("RCPT TO:<u@example.test>").expect(503, "5.5.1")
        c.quit()


@T.test("pipelining: one write of EHLO..DATA, then content+next transaction, then QUIT")
def _():
    s = srv()
    with s.client() as c:
        c.send("EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\n"
               "RCPT TO:<x@elsewhere.test>\r\nRCPT TO:<v@example.test>\r\nDATA\r\n")
        c.expect(250)
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(550, "5.7.1")
        c.expect(250, "2.1.5")
        c.expect(354)
        c.send("Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@sender.test>\r\n"
               "RCPT TO:<w@example.test>\r\nDATA\r\n")
        q1 = qid_of(c.expect(250, "2.0.0", "queued as"))
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(354)
        c.send("Subject: two\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        q2 = qid_of(c.expect(250, "2.0.0", "queued as"))
        c.expect(221, "2.0.0")
        c.expect_closed()
        check(q1 != q2, "two messages, one queue id %s" % q1)
        s.wait_disconnect(c.local_port)
        check_eq(len(s.message_lines(c.local_port, "queued")), 2, "sent message lines")


@T.test("pipelining: 200 NOOPs in one write get 200 replies in order")
def _():
    with ehlo_client() as c:
        c.send("".join("NOOP %d\r\n" % i for i in range(50)) + "RSET\r\n" + "VRFY x\r\n")
        for i in range(50):
            c.expect(250, "2.0.0")
        c.expect(250, "2.0.0")
        c.expect(252, "2.0.0")
        c.quit()


@T.test("synchronization: content before 354 -> 554 5.5.0 and close, no message")
def _():
    s = srv()
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.send("DATA\r\nSubject: early\r\n\r\nearly\r\n.\r\nQUIT\r\n")
        check_eq(c.reply().lines, ["554 5.5.0 Error: SMTP protocol synchronization"], "reply")
        c.expect_closed()
        s.wait_disconnect(c.local_port)
        check_eq(s.message_lines(c.local_port, "queued"), [], "sent message lines")


@T.test("BDAT: chunk 250 'n octets received', LAST queues")
def _():
    s = srv()
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        part1 = b"Subject: bdat\r\n\r\nline one\r\n.\r\nMAIL FROM:<evil@sender.test>\r\n"
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        c.expect(250, "2.0.0", "%d octets received" % len(part1))
        part2 = b"last line\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
        c.expect(250, "2.0.0", "queued as")
        c.quit()
        s.wait_disconnect(c.local_port)
        lines = s.message_lines(c.local_port)
        check_eq(len(lines), 1, "message lines")
        check("status=queued" in lines[0], lines[0])


@T.test("BDAT pipelined: MAIL, RCPT, two chunks, QUIT in one write")
def _():
    with ehlo_client() as c:
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\n"
               b"BDAT 5\r\nabc\r\nBDAT 0 LAST\r\nQUIT\r\n")
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(250, "2.0.0", "5 octets received")
        c.expect(250, "2.0.0", "queued as")
        c.expect(221, "2.0.0")
        c.expect_closed()


@T.test("BDAT without MAIL: chunk consumed, 503 5.5.1, session goes on")
def _():
    with ehlo_client() as c:
        c.send(b"BDAT 12\r\nNOOP\r\nNOOP\r\n")
        c.expect(503, "5.5.1")
        c.cmd("NOOP").expect(250, "2.0.0")
        c.quit()


@T.test("bare LF in a command line: never ends it; one 500 5.5.2 at CRLF")
def _():
    with ehlo_client() as c:
        c.send("NOOP\nNOOP\nNOOP\r\n")
        c.expect(500, "5.5.2", "Error: bare <LF> received")
        c.cmd("NOOP").expect(250, "2.0.0")
        c.send("MAIL FROM:<a@sender.test>\nRCPT TO:<u@example.test>\r\n")
        c.expect(500, "5.5.2")
        c.cmd("RCPT TO:<u@example.test>").expect(503, "5.5.1")
        c.quit()


@T.test("bare CR in a command line: one 500 5.5.2")
def _():
    with ehlo_client() as c:
        c.send("NOOP\rNOOP\r\n")
        c.expect(500, "5.5.2", "Error: bare <CR> received")
        c.cmd("NOOP").expect(250, "2.0.0")
        c.quit()


@T.test("NUL in a command line: 500 5.5.2 NUL in command")
def _():
    with ehlo_client() as c:
        c.send(b"NOOP \x00\r\n")
        c.expect(500, "5.5.2", "NUL in command")
        c.cmd("NOOP").expect(250, "2.0.0")
        c.quit()


@T.test("EHLO without argument / DATA with argument: 501 5.5.4")
def _():
    with srv().client() as c:
        c.cmd("EHLO").expect(501, "5.5.4")
        c.cmd("HELO").expect(501, "5.5.4")
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.cmd("DATA now").expect(501, "5.5.4")
        c.quit()


@T.test("DATA after BDAT in one transaction: 503 5.5.1")
def _():
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.send(b"BDAT 3\r\nabc")
        c.expect(250, "2.0.0", "3 octets received")
        c.cmd("DATA").expect(503, "5.5.1", "DATA not allowed with BDAT")
        c.quit()


@T.test("command line 512 octets ok, 513 -> 500 5.5.0 line too long")
def _():
    with ehlo_client() as c:
        c.send("NOOP " + "x" * 505 + "\r\n")   # 512 with CRLF
        c.expect(250, "2.0.0")
        c.send("NOOP " + "x" * 506 + "\r\n")   # 513
        c.expect(500, "5.5.0", "line too long")
        c.cmd("NOOP").expect(250, "2.0.0")
        c.quit()


@T.test("MAIL line up to 562 octets is not 'too long'; 563 is")
def _():
    with ehlo_client() as c:
        head = "MAIL FROM:<a@sender.test> SIZE=1000 BODY=8BITMIME SMTPUTF8"
        pad = 562 - 2 - len(head)
        c.cmd(head + " " * pad).expect(250, "2.1.0")  # trailing spaces are ignored
        c.cmd("RSET").expect(250, "2.0.0")
        c.cmd(head + " " * (pad + 1)).expect(500, "5.5.0", "line too long")
        c.cmd("NOOP").expect(250, "2.0.0")
        c.quit()


@T.test("QUIT: 221 2.0.0 and close; EOF mid-transaction is harmless")
def _():
    s = srv()
    with ehlo_client() as c:
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.cmd("DATA").expect(354)
        c.send("Subject: cut\r\n\r\nhalf a message")
    s.wait_log(r"(disconnect|lost connection) .*from \[127\.0\.0\.1\]:%d\b" % c.local_port)
    smtplib_send(s)


@T.test("after everything: a plain smtplib send still works")
def _():
    smtplib_send(srv())


T.main()
