#!/usr/bin/env python3
"""Relay policy: RCPT is accepted only for the configured domains (and
Postmaster); every relay trick is refused with 550 5.7.1, even from
loopback. Checks the reply, the NOQUEUE log line and the counter."""

from ringmx_harness import Server, Suite, check, check_eq, smtplib_send

T = Suite(__file__)
srv = T.shared()

ACCEPT = [
    "u@example.test",
    "U@EXAMPLE.TEST",
    "first.last@Example.Test",
    "u+tag@example.test",
    "u@localhost",
    "u@LocalHost",
    "Postmaster",
    "postmaster",
    "POSTMASTER",
    "PostMaster@example.test",
    "postmaster@EXAMPLE.TEST",
    "\"john doe\"@example.test",
]

DENY = [
    ("u@elsewhere.test", "foreign domain"),
    ("u@sub.example.test", "subdomain not listed"),
    ("u@example.test.evil.test", "listed domain as a prefix"),
    ("u@notexample.test", "listed domain as a suffix"),
    ("u@example", "truncated domain"),
    ("@relay.test:u@example.test", "source route"),
    ("@a.test,@b.test:u@example.test", "source route, two hops"),
    ("u%elsewhere.test@example.test", "percent hack"),
    ("elsewhere.test!u@example.test", "bang path"),
    ("\"u@elsewhere.test\"@example.test", "quoted local part with @"),
    ("u@[127.0.0.1]", "IPv4 address literal"),
    ("u@[IPv6:::1]", "IPv6 address literal"),
    ("u", "no domain"),
    ("abuse", "no domain, not Postmaster"),
]


def rcpt(srv, addr, sender="a@sender.test"):
    with srv.client() as c:
        c.ehlo("relay.client.test")
        c.cmd("MAIL FROM:<%s>" % sender).expect(250, "2.1.0")
        r = c.cmd("RCPT TO:<%s>" % addr)
        c.quit()
        return r, c.local_port


for addr in ACCEPT:
    def _mk(addr=addr):
        @T.test("accept <%s>: 250 2.1.5" % addr)
        def _():
            r, _p = rcpt(srv(), addr)
            r.expect(250, "2.1.5")
    _mk()


for addr, why in DENY:
    def _mk(addr=addr, why=why):
        @T.test("deny <%s> (%s): 550 5.7.1 Relay access denied" % (addr, why))
        def _():
            r, _p = rcpt(srv(), addr)
            r.expect(550, "5.7.1", "Relay access denied")
    _mk()


@T.test("reply names the address: 550 5.7.1 <u@elsewhere.test>: Relay access denied")
def _():
    r, _p = rcpt(srv(), "u@elsewhere.test")
    check_eq(r.lines, ["550 5.7.1 <u@elsewhere.test>: Relay access denied"], "reply")


@T.test("NOQUEUE reject log line with from, to, proto, helo")
def _():
    s = srv()
    r, port = rcpt(s, "victim@elsewhere.test", sender="spammer@sender.test")
    r.expect(550, "5.7.1")
    ln = s.wait_log(r"NOQUEUE: reject: RCPT from \[127\.0\.0\.1\]:%d: " % port)[0]
    want = ("NOQUEUE: reject: RCPT from [127.0.0.1]:%d: 550 5.7.1 <victim@elsewhere.test>: "
            "Relay access denied; from=<spammer@sender.test> to=<victim@elsewhere.test> "
            "proto=ESMTP helo=<relay.client.test>" % port)
    check(want in ln, "log line\n  %s\nlacks\n  %s" % (ln, want))


@T.test("any sender domain is fine: MAIL FROM:<u@elsewhere.test> 250")
def _():
    with srv().client() as c:
        c.ehlo()
        c.cmd("MAIL FROM:<u@elsewhere.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.quit()


@T.test("counter rcpt_relay_denied counts refusals exactly")
def _():
    s = srv()
    before = s.stats()
    for addr, _why in DENY[:5]:
        rcpt(s, addr)[0].expect(550, "5.7.1")
    for addr in ACCEPT[:3]:
        rcpt(s, addr)[0].expect(250, "2.1.5")
    after = s.stats()
    check_eq(after["rcpt_relay_denied"] - before["rcpt_relay_denied"], 5, "rcpt_relay_denied delta")
    check_eq(after["rcpt_accepted"] - before["rcpt_accepted"], 3, "rcpt_accepted delta")


@T.test("mixed recipients: denied ones dropped, message goes to the rest (nrcpt=2)")
def _():
    s = srv()
    with s.client() as c:
        c.ehlo()
        c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@elsewhere.test>\r\n"
               "RCPT TO:<u@example.test>\r\nRCPT TO:<u@[127.0.0.1]>\r\n"
               "RCPT TO:<Postmaster>\r\nDATA\r\n")
        c.expect(250, "2.1.0")
        c.expect(550, "5.7.1")
        c.expect(250, "2.1.5")
        c.expect(550, "5.7.1")
        c.expect(250, "2.1.5")
        c.expect(354)
        c.send("Subject: mixed\r\n\r\nx\r\n.\r\n")
        c.expect(250, "2.0.0", "queued as")
        c.quit()
        s.wait_disconnect(c.local_port)
        lines = s.message_lines(c.local_port)
        check_eq(len(lines), 1, "message lines")
        check("nrcpt=2" in lines[0], lines[0])


@T.test("domains with a .subdomain entry: x.sub.test and a.b.sub.test yes, sub.test no")
def _():
    with Server(args=["-o", "domains=mail.test, .sub.test"], workers=1) as s:
        rcpt(s, "u@mail.test")[0].expect(250, "2.1.5")
        rcpt(s, "u@x.sub.test")[0].expect(250, "2.1.5")
        rcpt(s, "u@A.B.SUB.TEST")[0].expect(250, "2.1.5")
        rcpt(s, "u@sub.test")[0].expect(550, "5.7.1")
        rcpt(s, "u@xsub.test")[0].expect(550, "5.7.1")
        rcpt(s, "u@example.test")[0].expect(550, "5.7.1")
        rcpt(s, "Postmaster")[0].expect(250, "2.1.5")
        rcpt(s, "postmaster@elsewhere.test")[0].expect(550, "5.7.1")


@T.test("domains from a config file (comments, case)")
def _():
    conf = "# test\ndomains = Mail.Example.Test, other.test\n"
    with Server(config_text=conf, workers=1) as s:
        rcpt(s, "u@mail.example.test")[0].expect(250, "2.1.5")
        rcpt(s, "u@OTHER.test")[0].expect(250, "2.1.5")
        rcpt(s, "u@example.test")[0].expect(550, "5.7.1")


@T.test("after everything: a plain smtplib send still works")
def _():
    smtplib_send(srv())


T.main()
