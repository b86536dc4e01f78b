#!/usr/bin/env python3
"""Postfix smtp-source (/usr/sbin/smtp-source) load against ringmxd:
10000 messages over 50 sessions, with and without connection reuse (-d);
zero client errors, and the summed SIGUSR1 messages_accepted must match
exactly. Exit 77 when smtp-source is not installed."""

import os

from ringmx_harness import Server, Suite, check, check_eq, run, smtplib_send

SMTP_SOURCE = "/usr/sbin/smtp-source"
T = Suite(__file__)
MSGS = int(os.environ.get("RINGMX_SMTP_SOURCE_MSGS", "10000"))


def source(s, *extra):
    cmd = [SMTP_SOURCE, "-s", "50", "-m", str(MSGS), "-l", "1024", "-f", "a@example.test",
           "-t", "b@example.test"] + list(extra) + ["127.0.0.1:%d" % s.port]
    p = run(cmd, timeout=75)
    check_eq(p.returncode, 0, "smtp-source exit code (stderr: %s)" % p.stderr[-1500:])
    check(p.stderr.strip() == "", "smtp-source reported errors: %s" % p.stderr[-1500:])
    return p


def load(extra, workers):
    with Server(workers=workers) as s:
        source(s, *extra)
        st = s.stats()
        check_eq(st["messages_accepted"], MSGS, "messages_accepted summed over %d workers" % workers)
        check_eq(st["rcpt_accepted"], MSGS, "rcpt_accepted")
        check_eq(st["messages_rejected"], 0, "messages_rejected")
        check_eq(st["sync_errors"] + st["syntax_errors"] + st["sequence_errors"], 0,
                 "protocol errors")
        check(st["message_bytes"] >= MSGS * 1024, "message_bytes %d" % st["message_bytes"])
        sent = sum(1 for ln in s.log().splitlines() if "status=queued" in ln)
        check_eq(sent, MSGS, "status=queued log lines")
        smtplib_send(s)


@T.test("smtp-source -s 50 -m %d -l 1024 (one message per connection), 2 workers" % MSGS)
def _():
    load([], 2)


@T.test("smtp-source -d (connection reuse) -s 50 -m %d, 2 workers" % MSGS)
def _():
    load(["-d"], 2)


@T.test("smtp-source -d -r 5 (5 recipients per message), 1 worker")
def _():
    with Server(workers=1) as s:
        source(s, "-d", "-r", "5")
        st = s.stats()
        check_eq(st["messages_accepted"], MSGS, "messages_accepted")
        check_eq(st["rcpt_accepted"], 5 * MSGS, "rcpt_accepted")


T.main(requires=[SMTP_SOURCE])
