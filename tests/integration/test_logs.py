#!/usr/bin/env python3
"""Logs (docs/logging.md): the Postfix line shape proved with the real pflogsumm
(Debian's, --syslog-name=ringmxd) over a known load through the spool and the relay;
log_format = json carries the same events and fields; log_level = warning and debug;
both keys reload on SIGHUP; bad values are one error naming file, line and key."""

import collections
import json
import os
import re
import signal
import smtplib
import subprocess
import tempfile

from ringmx_harness import (HOSTNAME, TIMEOUT, Server, Skip, Suite, check, check_eq, fail,
                            ringmxd_path, smtplib_send, wait_for)
from relay_util import RelayServer, hop, need, send_message, message
import nexthop

T = Suite(__file__)

PFLOGSUMM = "/usr/sbin/pflogsumm"
DOMAIN = "example.test"
MAPDIR = tempfile.TemporaryDirectory(prefix="ringmx-logs-")   # the map, the spools

# The load: every figure pflogsumm reports is counted from these, not from the log.
OK = ["ok1@" + DOMAIN, "ok2@" + DOMAIN, "ok3@" + DOMAIN]
DEFER = "defer@" + DOMAIN
BOUNCE = "bounce@" + DOMAIN
UNKNOWN = "nobody@" + DOMAIN        # not in the recipient map: 550 at RCPT
# A reply with what JSON must escape (a quote, a backslash): it ends up in the log.
BOUNCE_TEXT = '5.1.1 <%s>: "no such user" here\\there' % BOUNCE
LOAD = [  # (sender, recipients); the null sender keeps bounces from making DSNs
    ("a@sender.test", [OK[0]]),
    ("a@sender.test", [OK[1]]),
    ("b@sender.test", [OK[0], OK[1]]),
    ("b@sender.test", [OK[2]]),
    ("a@sender.test", [DEFER]),
    ("b@sender.test", [DEFER]),
    ("", [BOUNCE]),
    ("", [BOUNCE]),
    ("", [BOUNCE]),
    ("", [OK[2], BOUNCE]),
]
N_REJECTED = 3


def expected():
    rcpts = [r for _, rs in LOAD for r in rs]
    return {"received": len(LOAD),
            "delivered": sum(r in OK for r in rcpts),
            "deferred": sum(DEFER in rs for _, rs in LOAD),
            "deferrals": rcpts.count(DEFER),
            "bounced": rcpts.count(BOUNCE),
            "rejected": N_REJECTED}


def map_file():
    path = os.path.join(MAPDIR.name, "users")
    with open(path, "w") as f:
        for a in OK + [DEFER, BOUNCE]:
            f.write("%s OK\n" % a)
    return path


def mx_policy(event, info, arg):
    if event != "rcpt":
        return None
    if arg == DEFER:
        return (451, "4.2.0 <%s>: try again later" % arg)
    if arg == BOUNCE:
        return (550, BOUNCE_TEXT)
    return None


def run_load(fmt):
    """The load through a relaying ringmxd with log_format = fmt; returns its log text
    (complete: ringmxd has stopped), the queue ids and the size of each message."""
    spool = os.path.join(MAPDIR.name, "spool-" + fmt)
    with nexthop.FakeMX() as mx:
        mx.policy = mx_policy
        # No retry within the test: one deferral line per deferred recipient.
        srv = RelayServer(spool, hop(mx), fast=False,
                          extra=("domains=" + DOMAIN, "recipient_maps=" + map_file(),
                                 "retry_min=1h", "retry_max=1h", "log_format=" + fmt))
        with srv:
            qids, sizes = [], []
            for sender, rcpts in LOAD:
                data = message("logs %d" % len(qids), body_lines=["x" * len(qids)])
                qids.append(send_message(srv, sender, rcpts, data))
                sizes.append(len(data))
            with smtplib.SMTP(srv.host, srv.port, timeout=TIMEOUT) as s:
                s.ehlo()
                for _ in range(N_REJECTED):
                    s.mail("a@sender.test")
                    check_eq(s.rcpt(UNKNOWN)[0], 550, "RCPT to an unknown user")
                    s.rset()
            want = expected()
            wait_for(lambda: sum(len(m.rcpts) for m in mx.messages) >= want["delivered"],
                     what="%d deliveries at the next hop" % want["delivered"])
            check_eq(sum(len(m.rcpts) for m in mx.messages), want["delivered"],
                     "recipients the next hop accepted")
            for status, n in (("sent", want["delivered"]), ("deferred", want["deferrals"]),
                              ("bounced", want["bounced"])):
                srv.wait_log(r"status=%s \(" % status, count=n)
            srv.stop()          # the whole log, and a clean exit
            return srv.log(), qids, sizes


def pflogsumm(text):
    if not os.access(PFLOGSUMM, os.X_OK):
        raise Skip("pflogsumm is not installed (apt-get install pflogsumm)")
    p = subprocess.run([PFLOGSUMM, "--syslog-name=ringmxd"], input=text, capture_output=True,
                       text=True, timeout=60)
    check_eq(p.returncode, 0, "pflogsumm exit code (stderr %r)" % p.stderr)
    grand = p.stdout.split("Grand Totals", 1)[1].split("Per-Hour", 1)[0]
    got = {}
    for name in ("received", "delivered", "forwarded", "bounced", "bytes received",
                 "bytes delivered"):
        m = re.search(r"^\s*(\d+)\s+%s$" % name, grand, re.M)
        check(m is not None, "pflogsumm says nothing about %r:\n%s" % (name, p.stdout[:3000]))
        got[name] = int(m.group(1))
    m = re.search(r"^\s*(\d+)\s+deferred(?:\s+\((\d+)\s+deferrals\))?$", grand, re.M)
    check(m is not None, "no deferred line:\n" + grand)
    got["deferred"], got["deferrals"] = int(m.group(1)), int(m.group(2) or 0)
    m = re.search(r"^\s*(\d+)\s+rejected \(\d+%\)$", grand, re.M)
    check(m is not None, "no rejected line:\n" + grand)
    got["rejected"] = int(m.group(1))
    return got, p.stdout


# TIMESTAMP HOST ringmxd/SERVICE[PID]: [LEVEL: ][QID: ]TEXT[ worker=TAG]
POSTFIX_RX = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (ringmxd)/(\w+)"
                        r"\[(\d+)\]: (?:(error|warning|debug): )?(?:([0-9A-Z]{13}): )?(.*?)"
                        r"(?: worker=(w\d+))?$")


def parse_postfix(ln):
    m = POSTFIX_RX.match(ln)
    check(m is not None, "not a Postfix-shaped line: %r" % ln)
    keys = ("timestamp", "host", "program", "service", "pid", "level", "queue_id", "text",
            "worker")
    return {k: v for k, v in zip(keys, m.groups()) if v is not None}


def to_postfix(o):
    """The postfix-format line of a JSON object: what pflogsumm would have read."""
    word = o["level"] + ": " if o["level"] in ("error", "warning", "debug") else ""
    qid = o["queue_id"] + ": " if "queue_id" in o else ""
    tail = " worker=" + o["worker"] if "worker" in o else ""
    return "%s %s %s/%s[%d]: %s%s%s%s" % (o["timestamp"], o["host"], o["program"],
                                          o["service"], o["pid"], word, qid, o["text"], tail)


def event_key(service, text):
    """A message event without what differs between two runs (ids, ports, delays)."""
    text = re.sub(r"[0-9A-Z]{13}", "QID", text)
    return service, re.sub(r"\d+(\.\d+)?", "N", text)


def check_pflogsumm(text, sizes, what):
    """pflogsumm's figures over text equal the load's; byte figures come from the qmgr
    line, which pflogsumm reads only after the message's client= line."""
    got, out = pflogsumm(text)
    for k, v in expected().items():
        check_eq(got[k], v, "pflogsumm %s over the %s log (report:\n%s)" % (k, what, out[:2500]))
    check_eq(got["bytes received"], sum(sizes), "bytes received")
    check_eq(got["bytes delivered"],
             sum(n * sum(r in OK for r in rs) for n, (_, rs) in zip(sizes, LOAD)),
             "bytes delivered")


STATE = {}


@T.test("pflogsumm --syslog-name=ringmxd over a known load (postfix format): received, "
        "delivered, deferred (and deferrals), bounced and rejected equal the load's; bytes "
        "received and delivered equal the messages' sizes; every line has the Postfix shape")
def _():
    text, qids, sizes = need(lambda: run_load("postfix"))
    STATE["postfix"] = text
    check_pflogsumm(text, sizes, "postfix")
    lines = text.splitlines()
    services = collections.Counter(parse_postfix(ln)["service"] for ln in lines)
    for svc in ("master", "smtpd", "qmgr", "smtp", "cleanup"):
        check(services[svc] > 0, "no %s line: %r" % (svc, services))
    check(all("worker" in parse_postfix(ln) for ln in lines
              if re.search(r"/(smtpd|qmgr|smtp)\[", ln)), "a worker line without worker=")


@T.test("log_format = json, the same load: every line one JSON object with timestamp, host, "
        "program, service, pid, level (worker, queue_id where the postfix line has them); the "
        "message events equal the postfix run's; as postfix lines pflogsumm counts the same")
def _():
    text, qids, sizes = need(lambda: run_load("json"))
    objs = []
    for ln in text.splitlines():
        try:
            o = json.loads(ln)
        except ValueError as e:
            fail("not JSON (%s): %r" % (e, ln))
        check(isinstance(o, dict), "not an object: %r" % ln)
        for k, t in (("timestamp", str), ("host", str), ("program", str), ("service", str),
                     ("pid", int), ("level", str), ("text", str)):
            check(isinstance(o.get(k), t), "%s missing or not %s in %r" % (k, t.__name__, ln))
        check(o["level"] in ("error", "warning", "notice", "info", "debug"), ln)
        objs.append(o)
    # The escaped reply text comes back exactly.
    check(any(BOUNCE_TEXT in o["text"] for o in objs), "bounce text not round-tripped")
    back = "\n".join(to_postfix(o) for o in objs) + "\n"
    for ln in back.splitlines():
        parse_postfix(ln)
    check_pflogsumm(back, sizes, "json")
    for q in qids:
        ev = [o for o in objs if o.get("queue_id") == q and o["text"].startswith("client=")]
        check_eq(len(ev), 1, "client= objects of %s" % q)
        check(ev[0]["service"] == "smtpd" and re.match(r"w\d$", ev[0].get("worker", "")),
              "client= object: %r" % ev[0])
    if "postfix" not in STATE:
        raise Skip("the postfix run did not finish")
    pf = [parse_postfix(ln) for ln in STATE["postfix"].splitlines()]
    events = lambda rows: collections.Counter(event_key(r["service"], r["text"])
                                              for r in rows if "queue_id" in r)
    check_eq(events(objs), events(pf), "message events (json vs postfix)")
    for rows, what in ((objs, "json"), (pf, "postfix")):
        check(all("worker" in r for r in rows if "queue_id" in r),
              "a message event without worker (%s)" % what)


def quiet_lines(text):
    """Lines but the start-up warning a root run without user gets once
    (test_privdrop checks that one): it is a warning, so it must show here."""
    return [ln for ln in text.splitlines()
            if ln.strip() and not (os.geteuid() == 0 and "warning: running as root: set user"
                                   in ln)]


@T.test("log_level = warning: a session, a message, a refused RCPT, SIGUSR1: not one line; "
        "a broken reload: one error line; SIGHUP to log_level = info, log_format = json: "
        "the reload's notice and the next session's lines, as JSON (both keys reload)")
def _():
    # max_connections: no start-up warning about the open file limit.
    s = Server(config_text="log_level = warning\n", ready="connect",
               args=["-o", "max_connections=64"])
    with s:
        smtplib_send(s)
        with s.client() as c:
            c.ehlo()
            c.cmd("MAIL FROM:<a@sender.test>").expect(250)
            c.cmd("RCPT TO:<x@elsewhere.test>").expect(550)
            c.quit()
        s.signal(signal.SIGUSR1)
        with s.client() as c:       # a session after the dump: the dump is done by then
            c.quit()
        check_eq(quiet_lines(s.log()), [], "lines at log_level = warning")
        s.write_config("log_level = warning\nlog_level = info\n")  # set twice: refused
        s.signal(signal.SIGHUP)
        ln = s.wait_log(r"reload refused")
        check(re.search(r"ringmxd/master\[\d+\]: error: reload refused", ln[0]), ln[0])
        check_eq(len(quiet_lines(s.log())), 1, "lines after the broken reload: %r" % s.log())
        s.write_config("log_level = info\nlog_format = json\n")
        off = s.log_size()
        s.signal(signal.SIGHUP)
        s.wait_log(r'"text":"configuration reloaded', since=off)
        port = None
        with s.client() as c:
            port = c.local_port
            c.quit()
        ln = s.wait_log(r'"text":"disconnect from \[127\.0\.0\.1\]:%d ' % port, since=off)[0]
        o = json.loads(ln)
        check(o["service"] == "smtpd" and o["level"] == "info" and "queue_id" not in o, o)
        for ln in quiet_lines(s.log_since(off)):
            json.loads(ln)


@T.test("log_level = debug: debug lines ('debug: spool: ... zero-filled ahead of need' once "
        "half a 64 KiB segment is used); the default (info) has none for the same load")
def _():
    with tempfile.TemporaryDirectory(prefix="ringmx-logs-") as tmp:
        for level, want in (("debug", True), ("info", False)):
            spool = os.path.join(tmp, "spool-" + level)
            s = Server(args=["-o", "sink=spool", "-o", "spool_dir=" + spool, "-o",
                             "segment_size=64k", "-o", "log_level=" + level], workers=1)
            with s:
                for _ in range(3):   # 3 x 16 KiB: past half the segment
                    smtplib_send(s, body="x" * 76 + "\n" * 0 + ("y" * 75 + "\n") * 210)
                if want:
                    s.wait_log(r"ringmxd/cleanup\[\d+\]: debug: spool: .*\.seg zero-filled "
                               r"ahead of need in \d+ us worker=w0$")
                else:
                    # The same preparation, seen in the spool directory instead.
                    wait_for(lambda: len(os.listdir(os.path.join(spool, "w0"))) >= 2,
                             what="a prepared second segment")
                    s.stop()
                    check_eq([ln for ln in s.log().splitlines() if "debug: " in ln], [],
                             "debug lines at log_level = info")


@T.test("bad log_level / log_format: one line FILE:LINE: KEY: ..., exit 1; -o names the key; "
        "--print-config prints both and the printed file loads back")
def _():
    with tempfile.TemporaryDirectory(prefix="ringmx-logs-") as tmp:
        for text, line, key in (("# x\nlog_level = loud\n", 2, "log_level"),
                                ("log_format = xml\n", 1, "log_format"),
                                ("\n\n\nlog_level = error\n", 4, "log_level")):
            path = os.path.join(tmp, "bad.conf")
            with open(path, "w") as f:
                f.write(text)
            p = subprocess.run([ringmxd_path(), "-t", "-c", path], capture_output=True,
                               text=True, timeout=TIMEOUT)
            check_eq(p.returncode, 1, "exit code for %r" % text)
            lines = p.stderr.strip().splitlines()
            check_eq(len(lines), 1, "stderr lines %r" % lines)
            want = "ringmxd: %s:%d: %s: not one of " % (path, line, key)
            check(lines[0].startswith(want), "%r should start with %r" % (lines[0], want))
        p = subprocess.run([ringmxd_path(), "-t", "-o", "log_format=syslog"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        check(p.returncode == 1 and "log_format" in p.stderr and "postfix, json" in p.stderr,
              (p.returncode, p.stderr))
        p = subprocess.run([ringmxd_path(), "--print-config", "-o", "log_level=notice", "-o",
                            "log_format=json"], capture_output=True, text=True, timeout=TIMEOUT)
        check_eq(p.returncode, 0, "print-config exit")
        check(re.search(r"^log_level = notice$", p.stdout, re.M) and
              re.search(r"^log_format = json$", p.stdout, re.M), p.stdout)
        path = os.path.join(tmp, "printed.conf")
        with open(path, "w") as f:
            f.write(p.stdout)
        q = subprocess.run([ringmxd_path(), "--print-config", "-c", path], capture_output=True,
                           text=True, timeout=TIMEOUT)
        check_eq(q.stdout, p.stdout, "printed config re-read: " + q.stderr)


T.main()
