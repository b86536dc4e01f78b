#!/usr/bin/env python3
"""SMTP smuggling: only <CRLF>.<CRLF> ends DATA. For every end-of-data
look-alike inside a message, followed by a smuggled MAIL/RCPT/DATA, the
real end and a pipelined QUIT, the client must get exactly one
end-of-data reply then 221, and the server must log exactly one message
for the session (and none from the smuggled sender)."""

import socket
import time

from ringmx_harness import Server, Suite, check, check_eq, smtplib_send

T = Suite(__file__)
normal = T.shared()
reject = T.shared(args=["-o", "bare_newline=reject"])

LOOKALIKES = [
    (b"\n.\n", "LF . LF"),
    (b"\r.\r", "CR . CR"),
    (b"\r\n.\n", "CRLF . LF"),
    (b"\n.\r\n", "LF . CRLF"),
    (b"\r\n.\x00\r\n", "CRLF . NUL CRLF"),
    (b"\r\n. \r\n", "CRLF . SP CRLF"),
    (b"\r\n..\r\n", "CRLF .. CRLF (stuffed dot)"),
    (b"\r.\r\n", "CR . CRLF"),
    (b"\r\n.\rX", "CRLF . CR X"),
    (b"\n..\n", "LF .. LF"),
]

SMUGGLED = (b"MAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@example.test>\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")


def bare(seq):
    """'LF' or 'CR': the first bare newline character the decoder meets
    when seq sits between ordinary text, else None."""
    s = b"x" + seq + b"M"
    cr = any(ch == 0x0D and s[i + 1] != 0x0A for i, ch in enumerate(s))
    lf = any(ch == 0x0A and s[i - 1] != 0x0D for i, ch in enumerate(s))
    # docs/smtp.md: bare CR is always refused; bare LF only with
    # bare_newline=reject; bare CR wins when both occur.
    return "CR" if cr else "LF" if lf else None


def smuggle(srv, seq, mode, split):
    with srv.client() as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.ehlo()
        c.cmd("MAIL FROM:<honest@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.cmd("DATA").expect(354)
        head = b"Subject: look-alike\r\n\r\nhello"
        tail = SMUGGLED + b".\r\nQUIT\r\n"
        if split:
            c.send(head)
            for b in (b"o" + seq + b"M"):
                c.send(bytes([b]))
                time.sleep(0.003)
            c.send(tail[1:])
        else:
            c.send(head + seq + tail)
        r = c.reply()
        b = bare(seq)
        if b == "CR" or (mode == "reject" and b == "LF"):
            check_eq(r.lines, ["550 5.5.2 Error: bare <%s> received" % b], "end-of-data reply")
        else:
            r.expect(250, "2.0.0", "queued as")
        c.expect(221, "2.0.0")
        c.expect_closed()
        srv.wait_disconnect(c.local_port)
        lines = srv.message_lines(c.local_port)
        check_eq(len(lines), 1, "message log lines for the session (%r)" % lines)
        check("from=<honest@sender.test>" in lines[0], lines[0])
        want = "queued" if r.code == 250 else "rejected"
        check("status=%s" % want in lines[0], "want status=%s: %s" % (want, lines[0]))
        if mode == "normalize" and r.code == 250:
            counts["seen250"] = counts.get("seen250", 0) + 1
        return r.code


def add(seq, name, mode, split):
    get = normal if mode == "normalize" else reject

    @T.test("%s, bare_newline=%s, %s: one reply, one message"
            % (name, mode, "byte by byte" if split else "one write"))
    def _():
        smuggle(get(), seq, mode, split)


counts = {}


@T.test("baseline: messages_accepted counter before the look-alikes")
def _():
    s = normal()
    counts["before"] = s.stats()["messages_accepted"]
    counts["seen250"] = 0


for seq, name in LOOKALIKES:
    add(seq, name, "normalize", False)
    add(seq, name, "normalize", True)
for seq, name in LOOKALIKES:
    add(seq, name, "reject", False)


@T.test("SIGUSR1 messages_accepted grew by the 250s the clients saw, none smuggled")
def _():
    s = normal()
    after = s.stats()["messages_accepted"]
    sent = len([ln for ln in s.log().splitlines() if "status=queued" in ln])
    check_eq(after - counts["before"], counts["seen250"],
             "messages_accepted delta vs 250 replies the clients saw")
    check_eq(after, sent, "messages_accepted vs status=queued log lines")
    for srv in (normal(), reject()):
        check("from=<evil@sender.test>" not in srv.log(), "a smuggled message was logged")


@T.test("real end split across writes: '\\r\\n.' then '\\r\\n' ends the message")
def _():
    s = normal()
    with s.client() as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.cmd("DATA").expect(354)
        c.send(b"Subject: s\r\n\r\nbody\r")
        time.sleep(0.05)
        c.send(b"\n.")
        time.sleep(0.05)
        c.send(b"\r")
        time.sleep(0.05)
        c.send(b"\nQUIT\r\n")
        c.expect(250, "2.0.0", "queued as")
        c.expect(221, "2.0.0")
        c.expect_closed()


@T.test("empty message: DATA then '.' at once")
def _():
    with normal().client() as c:
        c.ehlo()
        c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(354)
        c.send(".\r\nQUIT\r\n")
        c.expect(250, "2.0.0", "queued as")
        c.expect(221, "2.0.0")
        c.expect_closed()


@T.test("BDAT chunk holding every look-alike and a real CRLF.CRLF: one reply, one message")
def _():
    s = normal()
    data = b"Subject: bdat\r\n\r\n" + b"x".join(seq for seq, _ in LOOKALIKES) + \
        b"\r\n.\r\n" + SMUGGLED + b".\r\n"
    with s.client() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<honest@sender.test>\r\nRCPT TO:<u@example.test>\r\n"
               b"BDAT %d LAST\r\n" % len(data) + data + b"QUIT\r\n")
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        # the look-alikes include bare CRs: the message is refused, once.
        c.expect(550, "5.5.2", "bare <CR> received")
        c.expect(221, "2.0.0")
        c.expect_closed()
        s.wait_disconnect(c.local_port)
        check_eq(len(s.message_lines(c.local_port)), 1, "message lines")


@T.test("after everything: a plain smtplib send still works (both servers)")
def _():
    smtplib_send(normal())
    smtplib_send(reject())


T.main()
