#!/usr/bin/env python3
"""test_relay_faults - the relay when the next hop misbehaves (docs/relay.md).

  * next hop down, then up: deferred (log, `ringmx-spool queue` with a reason), then
    delivered within the backoff, queue empty;
  * 4xx for a while (tempfail_until): deferred, retried, delivered;
  * 5xx for one recipient of three: the others delivered once, a multipart/report bounce
    from <> to the sender, `status=bounced`, `sender non-delivery notification`;
  * the null sender: a 5xx recipient is bounced in the log, but no bounce is sent;
  * maximal_queue_lifetime=3s with a recipient that always gets 4xx: bounced with
    `delivery time expired`, and the bounce arrives;
  * spool_high_water: new MAIL gets 452 4.3.1 while the next hop is down, and is accepted
    again by itself once the backlog drained;
  * relay_defer_after=2s: new MAIL gets 451 4.3.0 while the next hop is down, accepted
    again after it is back;
  * online hold / release / delete / flush through ringmx-spool;
  * the connection dropped after the data: retried, delivered at least once.

Standalone: exit 0 / 1 / 77, last line "N passed, M failed". Loopback only.
"""

import email
import email.policy
import os
import re
import shutil
import signal
import tempfile
import time

from ringmx_harness import Server, Suite, check, check_eq, fail, wait_for, TIMEOUT
from nexthop import FakeMX
from relay_util import (FAST, RelayServer, hop, send_message, message, check_relayed, status_lines,
                        qid_in,
                        queue_json, queue_text, wait_queue_empty, spool_cmd, spool_tool)

T = Suite(__file__)
TMP = tempfile.mkdtemp(prefix="ringmx-relayf-")
RCPTS = ("u@example.test", "v@example.test", "w@example.test")


def spool_dir(name):
    return os.path.join(TMP, name, "spool")


def down_mx(**kw):
    """A FakeMX whose port is known but which refuses connections (next hop down)."""
    mx = FakeMX(**kw)
    mx.refuse()
    return mx


def from_sender(mx, sender="a@sender.test"):
    return [r for r in mx.messages if r.mail_from == sender]


def bounces(mx):
    return [r for r in mx.messages if r.mail_from == ""]


def check_bounce(rec, sender, rcpt, status_rx, text=None):
    check_eq(rec.rcpts, [sender], "bounce recipient")
    msg = email.message_from_bytes(rec.data_bytes, policy=email.policy.default)
    check_eq(msg.get_content_type(), "multipart/report", "bounce type")
    check_eq(msg.get_param("report-type"), "delivery-status", "report-type")
    body = rec.data_bytes.decode("utf-8", "replace")
    check("Final-Recipient: rfc822; " + rcpt in body, "no Final-Recipient %s in the bounce" % rcpt)
    check(re.search(r"^Status: %s\r?$" % status_rx, body, re.M),
          "no Status: %s in the bounce:\n%s" % (status_rx, body[-1500:]))
    if text is not None:
        check(text in re.sub(r"\r\n[ \t]+", " ", body), "bounce lacks %r" % text)


def mail_reply(srv):
    """The reply to a new MAIL on a fresh connection."""
    with srv.client() as c:
        c.ehlo()
        return c.cmd("MAIL FROM:<a@sender.test>")


@T.test("next hop down, then up: deferred with a reason in the queue, then delivered")
def _():
    with down_mx() as mx, RelayServer(spool_dir("down"), hop(mx)) as srv:
        sent = {}
        for i in range(5):
            data = message("down %d" % i)
            sent[send_message(srv, "a@sender.test", RCPTS[:1], data)] = data
        for qid in sent:
            srv.wait_log(r"%s: to=<u@example.test>, .*status=deferred \(.*\)" % qid)
        q = queue_json(srv.spool)
        check_eq(sorted(q), sorted(sent), "queued ids")
        for qid, m in q.items():
            check_eq(m["state"], "deferred", "%s state" % qid)
            check(m["reason"] and m["reason"].startswith("4"), "%s reason %r" % (qid, m["reason"]))
            check(m["attempts"] >= 1, "%s attempts %r" % (qid, m["attempts"]))
        check("deferred" in queue_text(srv.spool), "text queue")
        t0 = time.monotonic()
        mx.accept_again()
        got = mx.wait_for(5, timeout=2 + 5)       # retry_max + a few seconds
        print("     delivered %.1fs after the next hop came back" % (time.monotonic() - t0))
        for rec in got:
            qid = qid_in(rec.data_bytes)
            check_relayed(rec.data_bytes, sent[qid], qid)
        for qid in sent:
            srv.wait_log(r"%s: removed" % qid)
        wait_queue_empty(srv.spool)
        check_eq(len(mx.messages), 5, "transactions (each message once)")


@T.test("4xx to MAIL for 2.5 s: deferred, retried, delivered; attempts counted")
def _():
    with FakeMX() as mx, RelayServer(spool_dir("tempfail"), hop(mx)) as srv:
        mx.tempfail_until = time.time() + 2.5
        data = message("tempfail")
        qid = send_message(srv, "a@sender.test", RCPTS[:2], data)
        srv.wait_log(r"%s: to=<u@example.test>, .*dsn=4\.3\.0, status=deferred" % qid)
        q = queue_json(srv.spool)
        check(qid in q and q[qid]["attempts"] >= 1 and "451" in (q[qid]["reason"] or ""),
              "queue: %r" % q.get(qid))
        rec = mx.wait_for(1, timeout=10)[0]
        check_relayed(rec.data_bytes, data, qid)
        srv.wait_log(r"%s: removed" % qid)
        deferred = status_lines(srv, qid, "deferred")
        check(len(deferred) >= 2, "want >= 1 deferred attempt per recipient: %s" % deferred)
        check(mx.counters()["tempfails"] >= 1, "FakeMX tempfails %r" % mx.counters())
        check_eq(len(status_lines(srv, qid, "sent")), 2, "status=sent lines")
        check_eq(len(mx.messages), 1, "transactions")


@T.test("5xx for one recipient of three: two delivered once, a bounce to the sender")
def _():
    bad = "v@example.test"
    with FakeMX(chunking=True) as mx, RelayServer(spool_dir("perm"), hop(mx)) as srv:
        mx.rcpt_reply = lambda a: (550, "5.1.1 <%s>: Recipient address rejected" % a) \
            if a == bad else None
        data = message("perm")
        qid = send_message(srv, "a@sender.test", RCPTS, data)
        lines = srv.wait_log(r"%s: sender non-delivery notification: ([0-9A-Z]{13})" % qid)
        wait_for(lambda: bounces(mx), timeout=10, what="the bounce at the FakeMX")
        srv.wait_log(r"%s: removed" % qid)
        time.sleep(0.5)
        orig = from_sender(mx)
        check_eq(len(orig), 1, "original transactions")
        check_eq(sorted(orig[0].rcpts), ["u@example.test", "w@example.test"], "delivered")
        check_relayed(orig[0].data_bytes, data, qid)
        b = status_lines(srv, qid, "bounced")
        check(len(b) == 1 and "to=<%s>" % bad in b[0] and "dsn=5.1.1" in b[0], "bounced: %s" % b)
        check_eq(len(bounces(mx)), 1, "bounces")
        check_bounce(bounces(mx)[0], "a@sender.test", bad, r"5\.1\.1", "Recipient address rejected")
        bqid = re.search(r"notification: ([0-9A-Z]{13})", lines[0]).group(1)
        srv.wait_log(r"%s: to=<a@sender.test>, .*status=sent" % bqid)


@T.test("null sender with a 5xx recipient: bounced in the log, no bounce sent")
def _():
    bad = "v@example.test"
    with FakeMX() as mx, RelayServer(spool_dir("nullsender"), hop(mx)) as srv:
        mx.rcpt_reply = lambda a: (550, "5.1.1 no such user") if a == bad else None
        data = message("null sender")
        qid = send_message(srv, "", RCPTS[:2], data)
        srv.wait_log(r"%s: to=<%s>, .*status=bounced" % (qid, bad))
        srv.wait_log(r"%s: removed" % qid)
        time.sleep(1.0)
        check_eq([r.rcpts for r in mx.messages], [["u@example.test"]], "transactions")
        check(b"multipart/report" not in mx.messages[0].data_bytes, "a report was sent")
        check("non-delivery notification" not in srv.log(), "a bounce was made")


@T.test("4xx for one recipient of two: the delivered one is not sent again on retry")
def _():
    # Engine bug (reported): each retry of the deferred recipient sends the message to
    # the recipient already delivered as well (journal and queue say it is done).
    slow = "slow@example.test"
    with FakeMX() as mx, RelayServer(spool_dir("partial"), hop(mx), workers=1) as srv:
        mx.rcpt_reply = lambda a: (451, "4.2.0 <%s>: mailbox busy" % a) if a == slow else None
        qid = send_message(srv, "a@sender.test", ("u@example.test", slow), message("partial"))
        srv.wait_log(r"%s: to=<%s>, .*status=deferred" % (qid, slow), count=2, timeout=10)
        q = queue_json(srv.spool)
        check_eq(q[qid]["recipients"], [slow], "recipients still queued")
        check_eq(len(status_lines(srv, qid, "sent")), 1, "status=sent lines for u@example.test")
        check_eq([r.rcpts for r in mx.messages], [["u@example.test"]], "transactions")


@T.test("maximal_queue_lifetime=3s, recipient always 4xx: expires, the bounce arrives")
def _():
    slow = "slow@example.test"
    with FakeMX() as mx, RelayServer(spool_dir("lifetime"), hop(mx),
                                     extra=("maximal_queue_lifetime=3s",)) as srv:
        # 4xx only for this recipient: the bounce (to a@sender.test) must get through.
        mx.rcpt_reply = lambda a: (451, "4.2.0 <%s>: mailbox busy" % a) if a == slow else None
        t0 = time.monotonic()
        qid = send_message(srv, "a@sender.test", (slow,), message("lifetime"))
        lines = srv.wait_log(r"%s: to=<%s>, .*status=bounced" % (qid, slow), timeout=15)
        took = time.monotonic() - t0
        check("delivery time expired" in lines[0], "bounced line: %s" % lines[0])
        check(took >= 2.9, "bounced after %.1fs, before the lifetime" % took)
        check(status_lines(srv, qid, "deferred"), "not deferred before it expired")
        srv.wait_log(r"%s: sender non-delivery notification" % qid)
        wait_for(lambda: bounces(mx), timeout=10, what="the bounce")
        check_bounce(bounces(mx)[0], "a@sender.test", slow, r"[45]\.4\.7", "mailbox busy")
        check_eq(from_sender(mx), [], "the original was delivered")
        srv.wait_log(r"%s: removed" % qid)


@T.test("spool_high_water=200k, next hop down: MAIL gets 452 4.3.1, accepted again after")
def _():
    with down_mx() as mx, RelayServer(spool_dir("highwater"), hop(mx), workers=1,
                                      extra=("spool_high_water=200k",)) as srv:
        body = message("high water", ["%05d %s" % (i, "h" * 90) for i in range(100)])
        n, refused = 0, None
        with srv.client() as c:
            c.ehlo()
            for _ in range(80):                      # 80 x 10 KB: well past 200 KB
                r = c.cmd("MAIL FROM:<a@sender.test>")
                if r.code != 250:
                    refused = r
                    break
                c.cmd("RCPT TO:<u@example.test>").expect(250)
                c.cmd("DATA").expect(354)
                c.send(body + b".\r\n")
                c.expect(250, "2.0.0")
                n += 1
        check(refused is not None, "MAIL still accepted after %d messages" % n)
        refused.expect(452, "4.3.1")
        check(150 * 1024 <= n * len(body) <= 260 * 1024, "refused after %d bytes" % (n * len(body)))
        srv.wait_log(r"relay: backlog .* is over")
        mail_reply(srv).expect(452, "4.3.1")
        mx.accept_again()
        mx.wait_for(n, timeout=15)
        wait_for(lambda: mail_reply(srv).code == 250, timeout=10, what="MAIL accepted again")
        srv.wait_log(r"relay: backlog .* is below spool_high_water again")
        check(srv.stats()["relay_refused_high_water"] >= 2, "relay_refused_high_water")
        check_eq(len(mx.messages), n, "transactions")


@T.test("relay_defer_after=2s, next hop down: MAIL gets 451 4.3.0, accepted again after")
def _():
    with down_mx() as mx, RelayServer(spool_dir("deferafter"), hop(mx), workers=1,
                                      extra=("relay_defer_after=2s",)) as srv:
        qid = send_message(srv, "a@sender.test", RCPTS[:1], message("defer after"))
        srv.wait_log(r"%s: .*status=deferred" % qid)
        t0 = time.monotonic()
        wait_for(lambda: mail_reply(srv).code == 451, timeout=10, what="451 to MAIL")
        check(time.monotonic() - t0 >= 0.5, "451 before relay_defer_after")
        mail_reply(srv).expect(451, "4.3.0", "next hop unavailable")
        srv.wait_log(r"relay: .* has been failing for relay_defer_after")
        mx.accept_again()
        mx.wait_for(1, timeout=10)
        wait_for(lambda: mail_reply(srv).code == 250, timeout=10, what="MAIL accepted again")
        srv.wait_log(r"relay: no next hop is failing: accepting mail")
        check(srv.stats()["relay_refused_hop_down"] >= 2, "relay_refused_hop_down")


def ctl(spool, *args):
    r = spool_cmd(spool, *args, timeout=20)
    check(r.returncode == 0, "ringmx-spool %s: exit %d: %s %s" % (" ".join(args), r.returncode,
                                                                 r.stdout, r.stderr))
    return r.stdout


def delivered_ids(mx):
    return {qid_in(r.data_bytes) for r in mx.messages}


SLOW = ("retry_min=30s", "retry_max=60s", "relay_idle_timeout=1s")


@T.test("online hold / release / delete / flush ID (retry_min=30s: only flush explains a retry)")
def _():
    busy = {"on": True}
    with FakeMX() as mx, RelayServer(spool_dir("ctl"), hop(mx), fast=False, workers=1,
                                     extra=SLOW) as srv:
        # 4xx at RCPT: the next hop answers (it is not marked down), the messages wait
        # for their 30 s backoff.
        mx.rcpt_reply = lambda a: (451, "4.2.0 busy") if busy["on"] else None
        a, b, c = (send_message(srv, "a@sender.test", RCPTS[:1], message("ctl %s" % x))
                   for x in "abc")
        for qid in (a, b, c):
            srv.wait_log(r"%s: .*status=deferred" % qid)
        check_eq(ctl(srv.spool, "hold", a).strip(), "ok hold " + a, "hold")
        check_eq(queue_json(srv.spool)[a]["state"], "held", "state after hold")
        check(re.search(r"^%s .* held " % a, queue_text(srv.spool), re.M), "text queue: held")
        check_eq(ctl(srv.spool, "delete", c).strip(), "ok delete " + c, "delete C")
        srv.wait_log(r"%s: deleted" % c)
        busy["on"] = False
        t0 = time.monotonic()
        check_eq(ctl(srv.spool, "flush", b).strip(), "ok flush " + b, "flush B")
        wait_for(lambda: b in delivered_ids(mx), timeout=8, what="B after flush")
        check(time.monotonic() - t0 < 10, "B only after the backoff")
        ctl(srv.spool, "flush")
        time.sleep(2.0)
        check_eq(delivered_ids(mx), {b}, "delivered while A held and C deleted")
        q = queue_json(srv.spool)
        check_eq(sorted(q), [a], "queue")
        check_eq(q[a]["state"], "held", "A state")
        check_eq(ctl(srv.spool, "release", a).strip(), "ok release " + a, "release")
        wait_for(lambda: a in delivered_ids(mx), timeout=8, what="A after release")
        wait_queue_empty(srv.spool)
        time.sleep(0.5)
        check_eq(delivered_ids(mx), {a, b}, "delivered in the end (C never)")
        r = spool_cmd(srv.spool, "release", c)
        check(r.returncode == 1 and "no such message" in r.stdout, "release of a deleted one: %r"
              % r.stdout)


@T.test("flush ID of a message whose next hop is marked down: tried at once")
def _():
    # Engine bug (reported): `flush ID` is ignored while the next hop is marked down
    # (retry_min after a refused connect); `flush` without IDs clears the mark.
    with down_mx() as mx, RelayServer(spool_dir("flushdown"), hop(mx), fast=False, workers=1,
                                      extra=SLOW) as srv:
        a = send_message(srv, "a@sender.test", RCPTS[:1], message("flush down"))
        srv.wait_log(r"%s: .*status=deferred .*Connection refused" % a)
        mx.accept_again()
        check_eq(ctl(srv.spool, "flush", a).strip(), "ok flush " + a, "flush A")
        try:
            wait_for(lambda: mx.messages, timeout=6, what="A after flush A")
        finally:
            ctl(srv.spool, "flush")         # let the server drain before it stops
            mx.wait_for(1, timeout=8)


@T.test("connection dropped after the data: retried, delivered at least once")
def _():
    with FakeMX(chunking=True) as mx, RelayServer(spool_dir("drop"), hop(mx)) as srv:
        mx.drop_after_data = 1
        data = message("dropped")
        qid = send_message(srv, "a@sender.test", RCPTS[:2], data)
        rec = mx.wait_for(1, timeout=10)[0]
        check_eq(len(mx.dropped), 1, "dropped transactions")
        check_relayed(rec.data_bytes, data, qid)
        srv.wait_log(r"%s: removed" % qid)
        check(status_lines(srv, qid, "deferred"), "no deferred line for the lost reply")
        check_eq(len(mx.messages), 1, "transactions acknowledged")


@T.test("next hop silent after the data (relay_reply_timeout=1s): deferred on the timeout, then delivered")
def _():
    stalled = []

    def policy(event, info, arg):
        if event in ("eom", "bdat") and not stalled:
            stalled.append(time.monotonic())
            time.sleep(2.5)  # past relay_reply_timeout: ringmxd gives up on this connection
        return None

    with FakeMX() as mx, RelayServer(spool_dir("stall"), hop(mx),
                                     extra=("relay_reply_timeout=1s",)) as srv:
        mx.policy = policy
        data = message("stalled")
        qid = send_message(srv, "a@sender.test", RCPTS[:1], data)
        srv.wait_log(r"%s: to=<u@example\.test>, .*status=deferred \(.*timeout waiting for "
                     r"end of data" % qid)
        srv.wait_log(r"%s: removed" % qid, timeout=15)
        check(status_lines(srv, qid, "sent"), "no sent line after the timeout")
        # The stalled transaction may count too (its reply came after ringmxd left):
        # at least once, never lost.
        check(len(from_sender(mx)) >= 1, "not delivered")


@T.test("SIGHUP re-reads transport_maps: new mail goes to the new next hop")
def _():
    with FakeMX() as mx1, FakeMX() as mx2:
        tmap = os.path.join(TMP, "transport")
        with open(tmap, "w") as f:
            f.write("example.test smtp:127.0.0.1:%d\n" % mx1.port)
        with RelayServer(spool_dir("reload"), hop(mx2),
                         extra=("transport_maps=" + tmap,)) as srv:
            q1 = send_message(srv, "a@sender.test", RCPTS[:1], message("before"))
            mx1.wait_for(1)
            srv.wait_log(r"%s: removed" % q1)
            with open(tmap, "w") as f:
                f.write("example.test smtp:127.0.0.1:%d\n" % mx2.port)
            since = srv.log_size()
            srv.signal(signal.SIGHUP)
            srv.wait_log(r"configuration reloaded", since=since)
            q2 = send_message(srv, "a@sender.test", RCPTS[:1], message("after"))
            mx2.wait_for(1)
            srv.wait_log(r"%s: removed" % q2)
            check_eq(len(mx1.messages), 1, "messages at the old next hop")
            check_eq(len(mx2.messages), 1, "messages at the new next hop")


@T.test("restart after routes changed: an unroutable <> message fails, the rest of its segment is delivered")
def _():
    # Both messages wait in one segment while the next hop is down. The restart drops the
    # route of the first (null sender: it fails at once, without a bounce) while the
    # segment is being read: the second must still be loaded and delivered.
    spool = spool_dir("reroute")
    with down_mx() as mx:
        with RelayServer(spool, hop(mx), workers=1,
                         extra=("domains=example.test,other.example",)) as srv:
            q1 = send_message(srv, "", ["x@example.test"], message("orphan"))
            q2 = send_message(srv, "a@sender.test", ["y@other.example"], message("kept"))
            srv.wait_log(r"%s: to=<y@other\.example>, .*status=deferred" % q2)
        tmap = os.path.join(TMP, "transport-reroute")
        with open(tmap, "w") as f:
            f.write("other.example smtp:127.0.0.1:%d\n" % mx.port)
        mx.accept_again()
        args = []
        for kv in FAST + ("sink=spool", "spool_dir=" + spool, "segment_size=1m",
                          "domains=other.example", "transport_maps=" + tmap):
            args += ["-o", kv]
        with Server(args=args, workers=1) as srv:  # no relay_host: example.test has no route
            srv.wait_log(r"%s: to=<x@example\.test>, .*dsn=5\.4\.4, status=bounced" % q1)
            srv.wait_log(r"%s: removed" % q1)
            srv.wait_log(r"%s: to=<y@other\.example>, .*status=sent" % q2)
            got = mx.wait_for(1)
            check_eq([r.rcpts for r in got], [["y@other.example"]], "delivered")
            check(not bounces(mx), "a bounce for a <> message")


if __name__ == "__main__":
    try:
        T.main(requires=[spool_tool()])
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
