#!/usr/bin/env python3
"""test_relay_failover - a next hop may be a list (relay_host = smtp:[A]:25, smtp:[B]:25),
and every address of a next hop is tried in order: one that fails before greeting is
skipped for retry_min while the next one takes the mail (docs/relay.md, "Next hops").

smtplib -> ringmxd (sink = spool, relay_host = a list) -> FakeMX next hops:

  * the first member refuses connections: delivered at once through the second, with
    retry_min = 30 s (no wait for a retry), relay= naming the second;
  * the first member drops the connection before its greeting: the same;
  * both up: mail goes to the first only (in order, not spread);
  * the first goes down while in use: the next message goes to the second; back up, it is
    used again once retry_min has passed;
  * every member down: deferred (4.4.1), then delivered when one comes back;
  * an IPv6 literal that refuses, then an IPv4 one (skipped where ::1 cannot be bound).

Standalone: exit 0 / 1 / 77, last line "N passed, M failed". Loopback only.
"""

import os
import socket
import tempfile
import time

from ringmx_harness import Skip, Suite, check, check_eq
from nexthop import FakeMX
from relay_util import RelayServer, send_message, message, check_relayed, status_lines, spool_tool

T = Suite(__file__)
TMP = tempfile.mkdtemp(prefix="ringmx-relay-failover-")
RCPT = "u@example.test"
# A failed member is skipped for retry_min: 30 s proves the next one is used at once.
SLOW = ("retry_min=30s", "retry_max=1h", "relay_idle_timeout=1s")


def spool_dir(name):
    return os.path.join(TMP, name, "spool")


def dead_port():
    """A loopback port with nothing listening (connects get ECONNREFUSED)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sent_via(srv, qid, port, timeout=10):
    lines = srv.wait_log(r"%s: to=<%s>, relay=[^ ]*:%d, .*status=sent" % (qid, RCPT, port),
                         timeout=timeout)
    return lines[0]


@T.test("first member refuses connections: delivered through the second at once")
def _():
    dead = dead_port()
    with FakeMX() as mx, \
            RelayServer(spool_dir("refused"), "smtp:[127.0.0.1]:%d, smtp:[127.0.0.1]:%d"
                        % (dead, mx.port), extra=SLOW, fast=False) as srv:
        data = message("failover refused")
        t0 = time.time()
        qid = send_message(srv, "a@sender.test", [RCPT], data)
        rec = mx.wait_for(1, timeout=10)[0]
        check(time.time() - t0 < 10, "took %.1fs: waited for a retry" % (time.time() - t0))
        check_relayed(rec.data_bytes, data, qid)
        sent_via(srv, qid, mx.port)
        srv.wait_log(r"relay: 127\.0\.0\.1\[127\.0\.0\.1\]:%d failed; trying the next address"
                     % dead)
        check(not status_lines(srv, qid, "deferred"), "deferred although a member was up")


@T.test("first member closes before its greeting: delivered through the second at once")
def _():
    with FakeMX() as bad, FakeMX() as mx, \
            RelayServer(spool_dir("dropped"), "smtp:127.0.0.1:%d,smtp:127.0.0.1:%d"
                        % (bad.port, mx.port), extra=SLOW, fast=False) as srv:
        bad.policy = lambda event, info, arg: "drop" if event == "connect" else None
        data = message("failover dropped")
        qid = send_message(srv, "a@sender.test", [RCPT], data)
        rec = mx.wait_for(1, timeout=10)[0]
        check_relayed(rec.data_bytes, data, qid)
        sent_via(srv, qid, mx.port)
        check_eq(len(bad.messages), 0, "messages on the dropping member")


@T.test("both up: in order (the first takes every message); first down: the second; "
        "first back: used again after retry_min")
def _():
    with FakeMX() as one, FakeMX() as two, \
            RelayServer(spool_dir("order"), "smtp:[127.0.0.1]:%d, smtp:[127.0.0.1]:%d"
                        % (one.port, two.port), workers=1) as srv:
        for i in range(3):
            send_message(srv, "a@sender.test", [RCPT], message("in order %d" % i))
        one.wait_for(3, timeout=10)
        check_eq(len(two.messages), 0, "messages on the second while the first is up")
        one.refuse()
        time.sleep(0.3)
        data = message("while the first is down")
        qid = send_message(srv, "a@sender.test", [RCPT], data)
        rec = two.wait_for(1, timeout=10)[0]
        check_relayed(rec.data_bytes, data, qid)
        one.accept_again()
        # retry_min = 1 s marks the first member down; relay_idle_timeout = 1 s closes the
        # connection to the second: then the first is the first choice again.
        time.sleep(3.0)
        data = message("first back")
        qid = send_message(srv, "a@sender.test", [RCPT], data)
        rec = one.wait_for(4, timeout=10)[3]
        check_relayed(rec.data_bytes, data, qid)
        check_eq(len(two.messages), 1, "messages on the second")


@T.test("every member down: deferred 4.4.1; one back up: delivered")
def _():
    with FakeMX() as one, FakeMX() as two, \
            RelayServer(spool_dir("all-down"), "smtp:[127.0.0.1]:%d, smtp:[127.0.0.1]:%d"
                        % (one.port, two.port)) as srv:
        one.refuse()
        two.refuse()
        data = message("all down")
        qid = send_message(srv, "a@sender.test", [RCPT], data)
        lines = srv.wait_log(r"%s: to=<%s>, .*status=deferred" % (qid, RCPT), timeout=10)
        check("dsn=4.4.1" in lines[0], "deferred line: %s" % lines[0])
        two.accept_again()
        rec = two.wait_for(1, timeout=15)[0]
        check_relayed(rec.data_bytes, data, qid)
        sent_via(srv, qid, two.port)


@T.test("an IPv6 literal that refuses, then an IPv4 one: delivered through IPv4")
def _():
    try:
        s6 = socket.socket(socket.AF_INET6)
        s6.bind(("::1", 0))
        dead6 = s6.getsockname()[1]
        s6.close()
    except OSError as e:
        raise Skip("cannot bind ::1: %s" % e)
    with FakeMX() as mx, \
            RelayServer(spool_dir("v6-v4"), "smtp:[::1]:%d, smtp:127.0.0.1:%d"
                        % (dead6, mx.port), extra=SLOW, fast=False) as srv:
        data = message("v6 then v4")
        qid = send_message(srv, "a@sender.test", [RCPT], data)
        rec = mx.wait_for(1, timeout=10)[0]
        check_relayed(rec.data_bytes, data, qid)
        sent_via(srv, qid, mx.port)
        srv.wait_log(r"relay: ::1\[::1\]:%d failed; trying the next address" % dead6)


if __name__ == "__main__":
    T.main(requires=[spool_tool()])
