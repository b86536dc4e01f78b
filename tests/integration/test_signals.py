#!/usr/bin/env python3
"""Signals: SIGUSR1 stats per worker, SIGTERM/SIGINT drain (idle 421,
open transaction finishes first, shutdown_timeout), SIGHUP reload
(domains and limits change, broken file and workers/listen changes are
refused and the old configuration keeps serving)."""

import re
import signal
import socket
import time

from ringmx_harness import (HOSTNAME, Server, Suite, check, check_eq, free_port, smtplib_send,
                            worker_of_line)

T = Suite(__file__)

COUNTERS = ["connections_accepted", "connections_refused", "connections_closed", "commands",
            "messages_accepted", "messages_rejected", "bytes_received", "message_bytes",
            "rcpt_accepted", "rcpt_relay_denied", "rcpt_limit", "size_limit", "line_too_long",
            "long_lines", "bare_lf", "bare_cr", "syntax_errors", "sequence_errors",
            "sync_errors", "error_limit", "junk_limit", "timeouts", "sink_errors"]
SHUTDOWN = ["421 4.3.2 %s Service shutting down" % HOSTNAME]


def rcpt_code(s, addr, c=None):
    own = c is None
    if own:
        c = s.client()
        c.ehlo()
    c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.cmd("RSET").expect(250, "2.0.0")
    if own:
        c.quit()
        c.close()
    return r.code


@T.test("SIGUSR1: one 'stats now:' line per worker (worker=w0, worker=w1) with every counter")
def _():
    with Server(workers=2) as s:
        for _ in range(3):
            smtplib_send(s)
        off = s.log_size()
        s.signal(signal.SIGUSR1)
        lines = s.wait_log(r"\bstats now:", count=2, since=off)
        time.sleep(0.3)
        lines = [ln for ln in s.log_since(off).splitlines() if "stats now:" in ln]
        check_eq(len(lines), 2, "stats lines")
        check_eq(sorted(worker_of_line(ln) for ln in lines), ["w0", "w1"],
                 "worker tags: %r" % lines)
        for name in COUNTERS:
            for ln in lines:
                check(re.search(r" %s=\d+" % name, ln), "counter %s missing: %s" % (name, ln))
        st = s.stats()
        check_eq(st["messages_accepted"], 3, "messages_accepted")
        check_eq(st["connections_accepted"], 3, "connections_accepted")


@T.test("SIGTERM, idle sessions: each gets 421 4.3.2 and is closed; exit 0; stats final")
def _():
    s = Server(workers=2)
    with s:
        cs = [s.client() for _ in range(4)]
        for c in cs[:2]:
            c.ehlo()
        s.signal(signal.SIGTERM)
        for c in cs:
            check_eq(c.reply().lines, SHUTDOWN, "drain reply")
            c.expect_closed()
            c.close()
        rc = s.stop()
        check_eq(rc, 0, "exit code")
        check_eq(len(re.findall(r"\bstats final:.* worker=w\d$", s.log(), re.M)), 2,
                 "stats final lines")


@T.test("SIGTERM inside DATA: the message finishes (250), then 421, exit 0")
def _():
    with Server(workers=1) as s:
        c = s.client()
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.cmd("DATA").expect(354)
        c.send("Subject: drain\r\n\r\nfirst half\r\n")
        idle = s.client()
        off = s.log_size()
        s.signal(signal.SIGTERM)
        s.wait_log(r"draining", since=off)
        check_eq(idle.reply().lines, SHUTDOWN, "idle session")
        time.sleep(0.3)
        c.send("second half\r\n.\r\n")
        c.expect(250, "2.0.0", "queued as")
        check_eq(c.reply().lines, SHUTDOWN, "after the message")
        c.expect_closed()
        s.stop()
        check_eq(len(s.message_lines(c.local_port, "queued")), 1, "message sent")


@T.test("SIGTERM after MAIL: RSET gets 250, then 421")
def _():
    with Server(workers=1) as s:
        c = s.client()
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        s.signal(signal.SIGTERM)
        time.sleep(0.3)
        c.send("RSET\r\n")
        c.expect(250, "2.0.0")
        check_eq(c.reply().lines, SHUTDOWN, "after RSET")
        c.expect_closed()


@T.test("shutdown_timeout=1s: a stalled DATA gets 421 at the deadline, no message, exit 0")
def _():
    with Server(workers=1, args=["-o", "shutdown_timeout=1s"]) as s:
        c = s.client()
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.cmd("DATA").expect(354)
        c.send("Subject: stall\r\n\r\n")
        t0 = time.monotonic()
        s.signal(signal.SIGTERM)
        check_eq(c.reply().lines, SHUTDOWN, "forced drain")
        c.expect_closed()
        dt = time.monotonic() - t0
        check(0.5 <= dt <= 5, "421 after %.1fs" % dt)
        s.stop()
        check_eq(s.message_lines(c.local_port, "queued"), [], "no message")


@T.test("SIGINT drains like SIGTERM: exit 0")
def _():
    with Server(workers=2) as s:
        c = s.client()
        c.ehlo()
        s.signal(signal.SIGINT)
        check_eq(c.reply().lines, SHUTDOWN, "drain reply")
        c.expect_closed()
        check_eq(s.stop(sig=signal.SIGINT), 0, "exit code")
        check("SIGINT: draining" in s.log(), "log says SIGINT")


def reload(s, text, ok=True):
    s.write_config(text)
    off = s.log_size()
    s.signal(signal.SIGHUP)
    pat = r"configuration reloaded" if ok else r"reload refused, keeping the running configuration"
    return s.wait_log(pat, since=off)[0]


@T.test("SIGHUP: domains change for new commands, also in an open session")
def _():
    with Server(workers=2, config_text="domains = old.test\n") as s:
        check_eq(rcpt_code(s, "u@old.test"), 250, "old.test before")
        check_eq(rcpt_code(s, "u@new.test"), 550, "new.test before")
        open_c = s.client()
        open_c.ehlo()
        reload(s, "domains = new.test\n")
        check_eq(rcpt_code(s, "u@new.test"), 250, "new.test after (new session)")
        check_eq(rcpt_code(s, "u@old.test"), 550, "old.test after")
        check_eq(rcpt_code(s, "u@new.test", open_c), 250, "new.test after (open session)")
        open_c.quit()
        open_c.close()
        smtplib_send(s, rcpts=("x@new.test",))


@T.test("SIGHUP: message_size_limit and recipient_limit change (EHLO SIZE, 452)")
def _():
    with Server(workers=1, config_text="message_size_limit = 20000\nrecipient_limit = 3\n") as s:
        c = s.client()
        check("SIZE 20000" in c.cmd("EHLO a.test").texts, "SIZE before")
        c.quit()
        reload(s, "message_size_limit = 30000\nrecipient_limit = 2\n")
        c = s.client()
        check("SIZE 30000" in c.cmd("EHLO a.test").texts, "SIZE after reload")
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        c.cmd("RCPT TO:<a@example.test>").expect(250, "2.1.5")
        c.cmd("RCPT TO:<b@example.test>").expect(250, "2.1.5")
        c.cmd("RCPT TO:<c@example.test>").expect(452, "4.5.3")
        c.quit()


@T.test("SIGHUP: hop_count_limit and proxy_timeout change (554 5.4.6, PROXY header closed)")
def _():
    pport = free_port()
    loop = "Received: a\r\nReceived: b\r\nReceived: c\r\nSubject: t\r\n\r\nhi\r\n"
    with Server(workers=1, config_text="hop_count_limit = 5\nproxy_timeout = 30s\n",
                args=["--listen", "127.0.0.1:%d proxy=yes" % pport]) as s:
        with s.client() as c:
            c.ehlo()
            c.transaction(body=loop)
        reload(s, "hop_count_limit = 2\nproxy_timeout = 1s\n")
        with s.client() as c:
            c.ehlo()
            c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
            c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
            c.cmd("DATA").expect(354)
            c.send(loop + ".\r\n")
            c.expect(554, "5.4.6", "Too many hops")
            c.quit()
        p = socket.create_connection(("127.0.0.1", pport), timeout=10)
        p.sendall(b"PROXY TCP4 ")
        t0 = time.monotonic()
        try:
            check_eq(p.recv(10), b"", "bytes before the close")
        except ConnectionResetError:
            pass
        took = time.monotonic() - t0
        p.close()
        check(took < 4, "half PROXY header closed after %.1fs (proxy_timeout=1s)" % took)


@T.test("SIGHUP with a broken file: refused with FILE:LINE, old config keeps serving")
def _():
    with Server(workers=2, config_text="domains = old.test\n") as s:
        ln = reload(s, "domains = new.test\nno_such_key = 1\n", ok=False)
        check("%s:2:" % s.config_path in ln, "refusal names file:line: " + ln)
        check("no_such_key" in ln, ln)
        check_eq(rcpt_code(s, "u@old.test"), 250, "old.test still ours")
        check_eq(rcpt_code(s, "u@new.test"), 550, "new.test not ours")
        ln = reload(s, "domains = new.test\nmessage_size_limit = lots\n", ok=False)
        check("%s:2:" % s.config_path in ln and "message_size_limit" in ln, ln)
        smtplib_send(s, rcpts=("x@old.test",))
        check(s.alive(), "server still running")


@T.test("SIGHUP changing workers or listen: refused, server keeps serving")
def _():
    port = free_port()
    base = "listen = 127.0.0.1:%d\nworkers = 1\ndomains = example.test\n" % port
    with Server(workers=None, listen=(), port=port, config_text=base) as s:
        ln = reload(s, base.replace("workers = 1", "workers = 2"), ok=False)
        check("workers" in ln and "cannot be changed by a reload" in ln, ln)
        other = free_port()
        ln = reload(s, base.replace(str(port), str(other)), ok=False)
        check("listen" in ln and "cannot be changed by a reload" in ln, ln)
        smtplib_send(s)
        reload(s, base.replace("example.test", "example.test, extra.test"))
        smtplib_send(s, rcpts=("u@extra.test",))


def never_reader_drain(extra):
    # Pipelined EHLOs fill the output; they are junk after the first, so
    # junk_limit must not close the client first.
    with Server(workers=1, args=["-o", "command_timeout=1s", "-o", "shutdown_timeout=1s",
                                 "-o", "junk_limit=1000000"] + extra) as s:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect((s.host, s.port))
        c.setblocking(False)
        chunk = b"EHLO x\r\n" * 512
        t0 = time.monotonic()
        cut = False
        while time.monotonic() - t0 < 3:     # fill both directions; never read
            try:
                c.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
            except ConnectionError:
                cut = True                   # fair sharing cut it off first
                break
        if cut:
            # Its unread input passed CONN_HOLD_HARD receive buffers
            # (docs/defences.md, "Fair sharing"): gone before the drain.
            check(s.stats().get("recv_hold_cutoffs", 0) >= 1, "reset, but not counted")
        else:
            s.wait_log(r"timeout after EHLO")
        t0 = time.monotonic()
        rc = s.stop()                        # SIGTERM: must not hang on that client
        dt = time.monotonic() - t0
        check_eq(rc, 0, "exit code")
        check(dt < 14, "drain took %.1fs (linger is 10s)" % dt)
        if not cut:
            check("did not read its last replies" in s.log(), s.log()[-2000:])
        print("  %s" % ("cut off for its unread input (recv_hold_cutoffs)" if cut else
                        "dropped after the linger"), flush=True)
        c.close()
        return cut


@T.test("a client that never reads cannot pin its slot or the drain: cut off for its unread "
        "input, or dropped after the 10 s linger")
def _():
    never_reader_drain([])


T.main()
