#!/usr/bin/env python3
"""ringmxd driven by swaks (/usr/bin/swaks): a pipelined send, a relay
attempt (must fail with exit 24), --quit-after RCPT, a UTF-8 body,
a multi-recipient send, the null sender. Exit 77 when swaks is not installed."""

import os
import re
import shutil
import subprocess
import tempfile

from ringmx_harness import (TIMEOUT, Server, Suite, check, check_eq, ringmxd_path, run,
                            smtplib_send)

SWAKS = "/usr/bin/swaks"
T = Suite(__file__)
srv = T.shared()


def swaks(*args, s=None):
    s = s or srv()
    cmd = [SWAKS, "--server", "127.0.0.1", "--port", str(s.port), "--timeout", "10",
           "--helo", "swaks.test"] + list(args)
    return run(cmd, timeout=30)


def transcript_qid(out):
    m = re.search(r"<-  250 2\.0\.0 Ok: queued as ([0-9A-Za-z]{13})", out)
    check(m is not None, "no 'queued as' in the swaks transcript:\n" + out[-2000:])
    return m.group(1)


@T.test("swaks --pipeline: exit 0, queued, logged status=queued")
def _():
    p = swaks("--to", "x@example.test", "--from", "a@b.test", "--pipeline")
    check_eq(p.returncode, 0, "swaks exit code (stderr %s, stdout tail %s)"
             % (p.stderr[-500:], p.stdout[-1500:]))
    qid = transcript_qid(p.stdout)
    ln = srv().wait_log(r"%s: client=\[127\.0\.0\.1\]:\d+, .*status=queued" % qid)[0]
    check("from=<a@b.test>" in ln and "helo=<swaks.test>" in ln, ln)


@T.test("swaks without --pipeline, two recipients: exit 0, nrcpt=2")
def _():
    p = swaks("--to", "x@example.test,y@example.test", "--from", "a@b.test")
    check_eq(p.returncode, 0, "swaks exit code: " + p.stdout[-1500:])
    qid = transcript_qid(p.stdout)
    ln = srv().wait_log(r"%s: .*status=queued" % qid)[0]
    check("nrcpt=2" in ln, ln)


@T.test("swaks relay attempt: exit 24 (no RCPTs accepted), 550 5.7.1 in the transcript")
def _():
    p = swaks("--to", "victim@elsewhere.test", "--from", "a@b.test")
    check_eq(p.returncode, 24, "swaks exit code: " + p.stdout[-1500:])
    check("<** 550 5.7.1 <victim@elsewhere.test>: Relay access denied" in p.stdout,
          "transcript:\n" + p.stdout[-1500:])


@T.test("swaks relay attempt with --pipeline: exit 24")
def _():
    p = swaks("--to", "victim@elsewhere.test", "--from", "a@b.test", "--pipeline")
    check_eq(p.returncode, 24, "swaks exit code: " + p.stdout[-1500:])
    check("550 5.7.1" in p.stdout, p.stdout[-1500:])


@T.test("swaks --quit-after RCPT: exit 0, 221, no message logged")
def _():
    s = srv()
    off = s.log_size()
    p = swaks("--to", "x@example.test", "--from", "a@b.test", "--quit-after", "RCPT")
    check_eq(p.returncode, 0, "swaks exit code: " + p.stdout[-1500:])
    check("<-  250 2.1.5 Ok" in p.stdout, p.stdout[-1500:])
    check("<-  221 2.0.0" in p.stdout, p.stdout[-1500:])
    ln = s.wait_log(r"disconnect from \[127\.0\.0\.1\]", since=off)[0]
    check("status=" not in s.log_since(off), "a message was logged: " + s.log_since(off))
    check("quit=1" in ln and "data" not in ln.split("commands=")[0].replace("data=0", ""),
          "disconnect line: " + ln)


@T.test("swaks UTF-8 body, dot lines and a header: exit 0")
def _():
    p = swaks("--to", "x@example.test", "--from", "a@b.test",
              "--header", "Subject: t\u00e9st", "--body", "caf\u00e9\n.\n..\nend")
    check_eq(p.returncode, 0, "swaks exit code: " + p.stdout[-1500:])
    transcript_qid(p.stdout)


@T.test("swaks null sender to <postmaster> without domain: exit 0, from=<>")
def _():
    p = swaks("--to", "postmaster", "--from", "<>", "--pipeline")
    check_eq(p.returncode, 0, "swaks exit code: " + p.stdout[-1500:])
    check(" -> MAIL FROM:<>" in p.stdout, p.stdout[-1500:])
    qid = transcript_qid(p.stdout)
    check("from=<>" in srv().wait_log(r"%s: .*status=queued" % qid)[0], "log from=<>")


@T.test("after everything: a plain smtplib send still works")
def _():
    smtplib_send(srv())


def spool_tool():
    return os.environ.get("RINGMX_SPOOL") or os.path.join(os.path.dirname(ringmxd_path()),
                                                          "tools", "ringmx-spool")


def hops(n):
    args = []
    for i in range(n):
        args += ["--add-header", "Received: from hop%d.test by hop%d.test; "
                 "Thu, 1 Jan 2026 00:00:%02d +0000" % (i, i + 1, i % 60)]
    return args


@T.test("hop_count_limit: 51 Received: (swaks --add-header) get 554 5.4.6 at end of data, "
        "nothing spooled, counted, logged; 50 are queued")
def _():
    d = tempfile.mkdtemp(prefix="ringmx-hops-")
    spool = os.path.join(d, "spool")
    try:
        with Server(args=["-o", "sink=spool", "-o", "spool_dir=" + spool], workers=1) as s:
            p = swaks("--to", "x@example.test", "--from", "a@b.test", *hops(51), s=s)
            check(p.returncode != 0, "swaks exit 0 for a looping message")
            check("<** 554 5.4.6 Too many hops" in p.stdout,
                  "transcript:\n" + p.stdout[-1500:])
            ln = s.wait_log(r"client=\[127\.0\.0\.1\]:\d+, .*status=rejected "
                            r"\(554 5\.4\.6 Too many hops\)")[0]
            check("from=<a@b.test>" in ln, ln)
            p = swaks("--to", "x@example.test", "--from", "a@b.test", *hops(50), s=s)
            check_eq(p.returncode, 0, "swaks exit code at the limit: " + p.stdout[-1500:])
            qid = transcript_qid(p.stdout)
            st = s.stats()
            check_eq(st.get("hop_limit"), 1, "hop_limit counter")
            check_eq(st.get("spool_messages"), 1, "spool_messages")
        lst = subprocess.run([spool_tool(), "-d", spool, "list"], capture_output=True,
                             timeout=TIMEOUT).stdout.decode()
        ids = re.findall(r"^([0-9A-Za-z]{13})\b", lst, re.M)
        check_eq(ids, [qid], "queued messages (only the one at the limit): %s" % lst)
    finally:
        shutil.rmtree(d)


T.main(requires=[SWAKS])
