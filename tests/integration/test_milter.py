#!/usr/bin/env python3
"""test_milter - content filtering through milters (issue 14) on the real ringmxd with a
durable spool, against scripted milters on python3-milter (Debian's libmilter binding:
tests/integration/milterd.py) and hand-made broken ones: every verdict at the stages where
it matters, the changes a milter makes landing in what is spooled, two milters in order,
and every failure (unreachable, slow past each timeout, dying mid-body, garbage, a
negotiation ringmxd did not offer) under each milter_default_action, with nothing
acknowledged that was not spooled.

Standalone: exit 0 / 1 / 77 (python3-milter missing), last line "N passed, M failed".
About a minute.
"""

import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time

from ringmx_harness import (HOSTNAME, TIMEOUT, Client, Server, Skip, Suite, check, check_eq,
                            fail, free_port, wait_for)

T = Suite(__file__)
PY = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
MILTERD = os.path.join(HERE, "milterd.py")


def spool_tool():
    p = os.environ.get("RINGMX_SPOOL")
    if not p:
        p = os.path.join(HERE, "..", "..", "build-test", "tools", "ringmx-spool")
    return os.path.abspath(p)


def have_milter():
    r = subprocess.run([PY, "-c", "import Milter"], capture_output=True)
    return r.returncode == 0


class Milterd:
    """A scripted milter on a free port (milterd.py), with its call log."""

    def __init__(self, *args, raw=None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ringmx-milterd-")
        self.log_path = os.path.join(self.dir, "calls.jsonl")
        cmd = [PY, MILTERD, "--port", str(self.port), "--log", self.log_path] + list(args)
        if raw:
            cmd += ["--raw", raw]
        self.errf = open(os.path.join(self.dir, "stderr"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.errf)

        def up():
            if self.proc.poll() is not None:
                fail("milterd exited: %s" % open(self.errf.name, "rb").read()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        wait_for(up, what="milterd on port %d" % self.port)

    @property
    def spec(self):
        return "inet:127.0.0.1:%d" % self.port

    def calls(self, ev=None):
        try:
            with open(self.log_path) as f:
                out = [json.loads(ln) for ln in f if ln.strip()]
        except FileNotFoundError:
            out = []
        return [c for c in out if ev is None or c["ev"] == ev]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.errf.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class MServer(Server):
    """ringmxd with a spool the test owns and the given milters."""

    def __init__(self, milters, extra=(), timeout="3s", **kw):
        self.spool_root = tempfile.mkdtemp(prefix="ringmx-milter-spool-")
        self.spool = os.path.join(self.spool_root, "spool")
        args = ["-o", "sink=spool", "-o", "spool_dir=" + self.spool,
                "-o", "milters=" + ", ".join(milters),
                "-o", "milter_connect_timeout=2s", "-o", "milter_command_timeout=" + timeout,
                "-o", "milter_content_timeout=" + timeout] + list(extra)
        super().__init__(args=args, workers=kw.pop("workers", 1), **kw)

    def spooled(self):
        r = subprocess.run([spool_tool(), "-d", self.spool, "list"], capture_output=True,
                           timeout=TIMEOUT)
        check_eq(r.returncode, 0, "ringmx-spool list exit")
        return [ln for ln in r.stdout.decode().splitlines() if re.match(r"^[0-9A-Z]{13}\b", ln)]

    def cat(self, qid):
        r = subprocess.run([spool_tool(), "-d", self.spool, "cat", qid], capture_output=True,
                           timeout=TIMEOUT)
        check_eq(r.returncode, 0, "ringmx-spool cat exit")
        return r.stdout

    def queue_json(self):
        r = subprocess.run([spool_tool(), "-d", self.spool, "queue", "--json"],
                           capture_output=True, timeout=TIMEOUT)
        check_eq(r.returncode, 0, "ringmx-spool queue exit")
        return {q["queue_id"]: q for q in map(json.loads, r.stdout.decode().splitlines())}

    def show(self, qid):
        r = subprocess.run([spool_tool(), "-d", self.spool, "show", qid], capture_output=True,
                           timeout=TIMEOUT)
        check_eq(r.returncode, 0, "ringmx-spool show exit")
        return r.stdout.decode()

    def stop(self, *a, **kw):
        try:
            return super().stop(*a, **kw)
        finally:
            shutil.rmtree(self.spool_root, ignore_errors=True)


MSG = ("From: s@sender.test\r\nTo: u@example.test\r\nSubject: milter test\r\n"
       "X-Old: one\r\nX-Old: two\r\n\r\nHello milter.\r\n.dot line\r\nbye\r\n")


def session(srv, rcpts=("u@example.test",), body=MSG, sender="s@sender.test"):
    """A raw session; returns (mail reply, [rcpt replies], data-end reply or None)."""
    with Client(srv.port) as c:
        c.ehlo("client.milter.test")
        mail = c.cmd("MAIL FROM:<%s>" % sender)
        if mail.code != 250:
            c.quit()
            return mail, [], None
        rr = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
        if not any(r.code == 250 for r in rr):
            c.quit()
            return mail, rr, None
        c.cmd("DATA").expect(354)
        data = body.replace("\r\n.", "\r\n..")
        c.send(data.encode() + b".\r\n")
        end = c.reply()
        c.quit()
        return mail, rr, end


def qid_of(reply):
    m = re.search(r"queued as ([0-9A-Z]{13})", str(reply))
    check(m is not None, "no queue id in %r" % reply)
    return m.group(1)


@T.test("a milter that adds a header: spooled with it; it saw every stage and the macros")
def _():
    with Milterd("--add-header", "X-Milter: seen by milterd") as m, MServer([m.spec]) as srv:
        mail, rr, end = session(srv)
        end.expect(250)
        qid = qid_of(end)
        out = srv.cat(qid)
        check(b"\r\nX-Milter: seen by milterd\r\n" in out, "header not spooled: %r" % out[:600])
        check(out.endswith(b"\r\n\r\nHello milter.\r\n.dot line\r\nbye\r\n"),
              "body changed: %r" % out[-80:])
        check(out.index(b"X-Milter:") < out.index(b"\r\n\r\n"), "header after the body")
        conn = m.calls("connect")
        check_eq(len(conn), 1, "connect calls")
        mc = conn[0]["macros"]
        check_eq(mc.get("{client_addr}"), "127.0.0.1", "{client_addr}")
        check_eq(mc.get("j"), HOSTNAME, "macro j")
        check_eq(mc.get("{daemon_name}"), "ringmxd", "{daemon_name}")
        check(mc.get("{client_port}", "").isdigit(), "{client_port}: %r" % mc)
        check_eq(m.calls("helo")[0]["name"], "client.milter.test", "HELO name")
        check_eq(m.calls("mail")[0]["addr"], "<s@sender.test>", "MAIL address")
        check_eq(m.calls("mail")[0]["macros"].get("{mail_addr}"), "s@sender.test",
                 "{mail_addr}")
        check_eq(m.calls("rcpt")[0]["macros"].get("{rcpt_addr}"), "u@example.test",
                 "{rcpt_addr}")
        names = [c["name"] for c in m.calls("header")]
        check(names[0] == "Received" and "Subject" in names and names.count("X-Old") == 2,
              "headers shown: %r" % names)
        subj = [c["value"] for c in m.calls("header") if c["name"] == "Subject"][0]
        check_eq(subj, "milter test", "Subject value (leading space dropped)")
        body = "".join(c["text"] for c in m.calls("body"))
        check_eq(body, "Hello milter.\r\n.dot line\r\nbye\r\n", "body shown (dot-unstuffed)")
        check_eq(m.calls("eom")[0]["macros"].get("i"), qid, "macro i at end of message")


@T.test("reject at end of message with a multi-line reply: the client gets it; nothing spooled")
def _():
    with Milterd("--act", "eom=reply:550:5.7.1:Rejected by policy|second line") as m, \
            MServer([m.spec]) as srv:
        _mail, _rr, end = session(srv)
        check_eq(end.code, 550, "end of data code: %r" % end)
        check_eq(end.lines, ["550-5.7.1 Rejected by policy", "550 5.7.1 second line"],
                 "reply lines")
        check_eq(srv.spooled(), [], "spooled")


@T.test("reject and tempfail at MAIL; per-recipient reject at RCPT")
def _():
    with Milterd("--act", "mail=tempfail") as m, MServer([m.spec]) as srv:
        mail, _rr, _end = session(srv)
        mail.expect(451, "4.7.1")
    with Milterd("--act", "mail=reject") as m, MServer([m.spec]) as srv:
        mail, _rr, _end = session(srv)
        mail.expect(550, "5.7.1")
    with Milterd("--rcpt-reject", "bad@example.test") as m, MServer([m.spec]) as srv:
        _mail, rr, end = session(srv, rcpts=("bad@example.test", "good@example.test"))
        rr[0].expect(550, "5.1.1", contains="no such user here")
        rr[1].expect(250)
        end.expect(250)
        env = srv.show(qid_of(end))
        check("good@example.test" in env and "bad@example.test" not in env,
              "envelope: %s" % env)


@T.test("discard at end of message: 250, nothing spooled, counted")
def _():
    with Milterd("--act", "eom=discard") as m, MServer([m.spec]) as srv:
        _mail, _rr, end = session(srv)
        end.expect(250)
        check_eq(srv.spooled(), [], "spooled")
        srv.wait_log(r"discard: milter")


@T.test("changes land in the spool: change/delete/insert header, body, sender, recipients")
def _():
    args = ["--chg-header", "Subject:1:changed subject", "--chg-header", "X-Old:2:",
            "--ins-header", "0:X-Top: first", "--repl-body", "new body\\nline two\\n",
            "--chg-from", "<new@sender.test>", "--add-rcpt", "<added@example.test>",
            "--del-rcpt", "<u@example.test>"]
    with Milterd(*args) as m, MServer([m.spec]) as srv:
        _mail, _rr, end = session(srv, rcpts=("u@example.test", "keep@example.test"))
        end.expect(250)
        qid = qid_of(end)
        out = srv.cat(qid)
        check(out.startswith(b"X-Top: first\r\n"), "inserted header not first: %r" % out[:80])
        check(b"\r\nSubject: changed subject\r\n" in out, "Subject not changed: %r" % out)
        check(b"X-Old: one\r\n" in out and b"X-Old: two" not in out, "X-Old: %r" % out)
        check(out.endswith(b"\r\n\r\nnew body\r\nline two\r\n"), "body: %r" % out[-60:])
        env = srv.show(qid)
        check("new@sender.test" in env, "sender not changed: %s" % env)
        check("added@example.test" in env and "keep@example.test" in env and
              "<u@example.test>" not in env and " u@example.test" not in env,
              "recipients: %s" % env)


@T.test("two milters in order: the second sees the first one's header")
def _():
    with Milterd("--add-header", "X-First: 1") as m1, Milterd("--add-header", "X-Second: 2") as m2, \
            MServer([m1.spec, m2.spec]) as srv:
        _mail, _rr, end = session(srv)
        end.expect(250)
        out = srv.cat(qid_of(end))
        check(out.index(b"X-First: 1") < out.index(b"X-Second: 2"), "order: %r" % out[:400])
        seen = [c["name"] for c in m2.calls("header")]
        check("X-First" in seen, "second milter did not see X-First: %r" % seen)


@T.test("unreachable milter: milter_default_action tempfail (451), accept (250), reject (550)")
def _():
    dead = "inet:127.0.0.1:%d" % free_port()
    with MServer([dead]) as srv:
        mail, _rr, _end = session(srv)
        mail.expect(451, "4.7.1")
        srv.wait_log(r"milter inet:127\.0\.0\.1:\d+: cannot connect")
    with MServer([dead], extra=["-o", "milter_default_action=accept"]) as srv:
        _mail, _rr, end = session(srv)
        end.expect(250)
        check_eq(len(srv.spooled()), 1, "spooled")
    with MServer([dead], extra=["-o", "milter_default_action=reject"]) as srv:
        mail, _rr, _end = session(srv)
        mail.expect(550, "5.7.1")


@T.test("slow milters: past milter_command_timeout at MAIL, past milter_content_timeout at EOM")
def _():
    with Milterd("--act", "mail=sleep:6") as m, MServer([m.spec]) as srv:
        t0 = time.monotonic()
        mail, _rr, _end = session(srv)
        mail.expect(451, "4.7.1")
        check(time.monotonic() - t0 < 5.5, "MAIL waited %.1fs" % (time.monotonic() - t0))
        srv.wait_log(r"no reply MAIL|no reply mail")
    with Milterd("--act", "eom=sleep:6") as m, MServer([m.spec]) as srv:
        _mail, _rr, end = session(srv)
        end.expect(451, "4.7.1")
        check_eq(srv.spooled(), [], "spooled")
        srv.wait_log(r"no reply .*within 3s")
    # progress resets the content timeout: 4 x 1 s of progress with a 3 s timeout
    with Milterd("--progress", "4") as m, MServer([m.spec]) as srv:
        _mail, _rr, end = session(srv)
        end.expect(250)


@T.test("a milter dying mid-body, garbage, a negotiation not offered: default action, no loss")
def _():
    big = MSG.replace("Hello milter.", "x" * 200000)
    with Milterd("--act", "body=exit") as m, MServer([m.spec]) as srv:
        _mail, _rr, end = session(srv, body=big)
        end.expect(451, "4.7.1")
        check_eq(srv.spooled(), [], "spooled")
    for mode in ("garbage", "bad-optneg", "silent"):
        with Milterd(raw=mode) as m, MServer([m.spec]) as srv:
            mail, _rr, _end = session(srv)
            mail.expect(451, "4.7.1")
            check(srv.alive(), "ringmxd died (%s)" % mode)
    with Milterd("--act", "body=exit") as m, \
            MServer([m.spec], extra=["-o", "milter_default_action=accept"]) as srv:
        _mail, _rr, end = session(srv, body=big)
        end.expect(250)
        out = srv.cat(qid_of(end))
        check(out.endswith(big.split("\r\n\r\n", 1)[1].encode()), "message changed")


@T.test("the body goes in chunks of at most 64 KiB; SMFIR_SKIP ends them")
def _():
    big = MSG.replace("Hello milter.", "y" * 300000)
    body_len = len(big.split("\r\n\r\n", 1)[1])
    with Milterd() as m, MServer([m.spec]) as srv:
        session(srv, body=big)[2].expect(250)
        lens = [c["len"] for c in m.calls("body")]
        check(max(lens) <= 65535 and sum(lens) == body_len and len(lens) >= 5,
              "chunks %r for %d octets" % (lens, body_len))
    with Milterd("--act", "body=skip") as m, MServer([m.spec]) as srv:
        session(srv, body=big)[2].expect(250)
        check_eq(len(m.calls("body")), 1, "body calls after a skip")
        check_eq(len(m.calls("eom")), 1, "end of message after the skip")


@T.test("quarantine: 250, spooled on hold (ringmx-spool queue), never tried until released")
def _():
    # The next hop answers nothing (a closed port): a delivery attempt shows as a deferral.
    hop = "127.0.0.1:%d" % free_port()
    with Milterd("--quarantine", "suspicious attachment") as m, \
            MServer([m.spec], extra=["-o", "relay_host=" + hop, "-o", "retry_min=1s"]) as srv:
        _mail, _rr, end = session(srv)
        end.expect(250)
        qid = qid_of(end)
        srv.wait_log(r"%s: held: quarantined by a milter \(suspicious attachment\)" % qid)
        q = srv.queue_json()
        check_eq(q[qid]["state"], "held", "state in ringmx-spool queue")
        time.sleep(2)
        check(not re.search(r"%s: .*(deferred|status=deferred)" % qid, srv.log()),
              "a held message was tried:\n%s" % srv.log()[-2000:])
        r = subprocess.run([spool_tool(), "-d", srv.spool, "release", qid], capture_output=True,
                           timeout=TIMEOUT)
        check_eq(r.returncode, 0, "ringmx-spool release: %r" % r.stderr)
        srv.wait_log(r"%s.*(deferred|status=deferred|connect)" % qid)
        check(srv.queue_json()[qid]["state"] != "held", "still held after release")


@T.test("a slow end of message on one session does not delay another on the same worker")
def _():
    import threading
    with Milterd("--act", "eom=sleep:2") as m, MServer([m.spec]) as srv:
        done = {}

        def slow():
            done["end"] = session(srv)[2]
        t = threading.Thread(target=slow)
        t.start()
        wait_for(lambda: m.calls("eom"), what="the first session at end of message")
        t0 = time.monotonic()
        with Client(srv.port) as c:
            c.ehlo("quick.milter.test")
            c.cmd("MAIL FROM:<q@sender.test>").expect(250)
            c.cmd("RCPT TO:<u@example.test>").expect(250)
            took = time.monotonic() - t0
            c.quit()
        t.join(TIMEOUT)
        check(took < 1.5, "the second session waited %.2fs behind the first" % took)
        done["end"].expect(250)


@T.test("connect-stage reject: every MAIL of the session is refused")
def _():
    with Milterd("--act", "connect=reply:554:5.7.1:go away") as m, MServer([m.spec]) as srv:
        mail, _rr, _end = session(srv)
        mail.expect(554, "5.7.1", contains="go away")


@T.test("smtplib through a milter on two workers, 20 messages, all spooled once")
def _():
    with Milterd("--add-header", "X-Scanned: yes") as m, MServer([m.spec], workers=2) as srv:
        for i in range(20):
            with smtplib.SMTP(srv.host, srv.port, local_hostname="smtplib.test",
                              timeout=TIMEOUT) as s:
                code, resp = s.sendmail("a@sender.test", ["u@example.test"],
                                        "Subject: %d\r\n\r\nbody %d\r\n" % (i, i)), None
                check_eq(code, {}, "refused")
        wait_for(lambda: len(srv.spooled()) == 20, what="20 messages spooled")
        for ln in srv.spooled():
            check(b"X-Scanned: yes" in srv.cat(ln.split()[0]), "header missing")


if __name__ == "__main__":
    if not have_milter():
        print("skip test_milter: python3-milter is not installed (Debian: python3-milter)")
        print("0 passed, 0 failed")
        raise SystemExit(77)
    T.main()
