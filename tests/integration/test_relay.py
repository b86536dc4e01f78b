#!/usr/bin/env python3
"""test_relay - ringmxd relays what it accepted to the next hop (docs/relay.md).

smtplib -> ringmxd (sink = spool, relay_host) -> a next hop from nexthop.py:

  * FakeMX, BDAT and DATA (dot-stuffing) and without PIPELINING: the message arrives
    byte-exact (ringmxd's Received: header, then the original), envelope kept, one
    `status=sent` line per recipient and `removed`;
  * segments and journals of finished messages are deleted after a rotation;
  * LMTP with one recipient refused after the data: bounced, a multipart/report bounce
    from <> reaches the sender through the same next hop, the others delivered;
  * Postfix smtp-sink (SMTP and LMTP) fed by ringmx-load --verify: every manifest id
    arrives exactly once, byte-exact (FNV-1a 64 of the body);
  * Dovecot LMTP over TCP and over its unix socket into a Maildir;
  * relay_tls encrypt / verify (delivered inside TLS, logged) and encrypt against a next
    hop without STARTTLS (deferred, not delivered).

Standalone: exit 0 / 1 / 77, last line "N passed, M failed". Loopback only.
"""

import email
import email.policy
import os
import re
import shutil
import subprocess
import tempfile
import time

from ringmx_harness import (Suite, Skip, check, check_eq, fail, ringmxd_path, scan_bad,
                            self_signed_cert, wait_for)
from dnsd import DnsServer, DnsUnavailable
import nexthop
from nexthop import FakeMX, SmtpSink, DovecotLMTP
from relay_util import (RelayServer, hop, send_message, message, check_relayed, status_lines,
                        need, qid_in, run_load, read_manifest, load_check,
                        wait_queue_empty, spool_tool, load_tool)

T = Suite(__file__)
TMP = tempfile.mkdtemp(prefix="ringmx-relay-")
RCPTS = ("u@example.test", "v@example.test", "w@example.test")


def spool_dir(name):
    return os.path.join(TMP, name, "spool")


def check_sent(srv, qid, rcpts, timeout=10):
    """One status=sent line per recipient, then `QID: removed`."""
    srv.wait_log(r"%s: removed" % qid, timeout=timeout)
    got = sorted(re.search(r"to=<([^>]*)>", ln).group(1) for ln in status_lines(srv, qid, "sent"))
    check_eq(got, sorted(rcpts), "recipients logged status=sent")
    other = [ln for ln in status_lines(srv, qid) if "status=sent" not in ln]
    check(not other, "other status lines: %s" % other)


@T.test("a relay start on an empty spool logs no sanitizer report (qsort/bsearch of nothing)")
def _():
    with FakeMX() as mx, RelayServer(spool_dir("empty"), hop(mx)) as srv:
        srv.wait_log(r"listening on")
        bad = scan_bad(srv.log())
        check(bad is None, "sanitizer report at start-up: %s" % bad)


def smtp_roundtrip(name, mx, data, rcpts=RCPTS):
    with RelayServer(spool_dir(name), hop(mx)) as srv:
        qid = send_message(srv, "a@sender.test", rcpts, data)
        got = mx.wait_for(1)
        check_eq(len(got), 1, "transactions at the FakeMX")
        rec = got[0]
        check_eq(rec.mail_from, "a@sender.test", "envelope sender")
        check_eq(sorted(rec.rcpts), sorted(rcpts), "envelope recipients")
        check_relayed(rec.data_bytes, data, qid)
        check_sent(srv, qid, rcpts)
        check(not mx.errors, "FakeMX saw protocol errors: %s" % mx.errors[:3])
        return rec


# Lines that need dot-stuffing, a lone dot, 8-bit bytes, a long line, an empty last line.
DOTS = message("dots", [".", "..", ".leading", "..two", "...", ". space", "caf\u00e9 8bit",
                        "x" * 3000, "end", ""])


@T.test("SMTP with CHUNKING: BDAT, byte-exact, envelope, status=sent per recipient, removed")
def _():
    with FakeMX(chunking=True) as mx:
        rec = smtp_roundtrip("bdat", mx, DOTS)
        check(rec.bdat, "BDAT not used though CHUNKING was offered")
        check(mx.counters()["max_pipelined"] > 1, "no pipelining though offered")


@T.test("SMTP without CHUNKING: DATA, dot-stuffed lines come back byte-exact")
def _():
    with FakeMX(chunking=False) as mx:
        rec = smtp_roundtrip("data", mx, DOTS)
        check(not rec.bdat, "BDAT used though CHUNKING was not offered")


# Larger than the relay's 64 KiB output buffer (RELAY_OUT_SIZE): the message streams
# through it, dot-stuffing resumed across the refills.
BIG = message("big", [(".%05d " % i) + "y" * 70 for i in range(4000)])


@T.test("a 300 KiB message streams through the output buffer: BDAT and DATA, byte-exact")
def _():
    check(len(BIG) > 4 * 65536, "the message is not big enough: %d" % len(BIG))
    with FakeMX(chunking=True) as mx:
        check(smtp_roundtrip("big-bdat", mx, BIG, rcpts=RCPTS[:1]).bdat, "BDAT not used")
    with FakeMX(chunking=False) as mx:
        check(not smtp_roundtrip("big-data", mx, BIG, rcpts=RCPTS[:1]).bdat, "BDAT used")


@T.test("SMTP without PIPELINING: lock-step, 5 messages byte-exact, no pipelined command")
def _():
    with FakeMX(chunking=False, pipelining=False) as mx, \
            RelayServer(spool_dir("nopipe"), hop(mx)) as srv:
        sent = {}
        for i in range(5):
            data = message("nopipe %d" % i, ["line %d" % i, ".dot %d" % i])
            sent[send_message(srv, "a@sender.test", RCPTS[:2], data)] = data
        got = mx.wait_for(5)
        for qid in sent:
            check_sent(srv, qid, RCPTS[:2])
        check_eq(len(mx.messages), 5, "transactions")
        for rec in got:
            qid = qid_in(rec.data_bytes)
            check(qid in sent, "unknown message %s" % qid)
            check_relayed(rec.data_bytes, sent[qid], qid)
        check(not mx.errors, "FakeMX: %s" % mx.errors[:3])
        check_eq(mx.counters()["max_pipelined"], 1, "commands read before a reply was awaited")


@T.test("segment rotation (segment_size=64k): finished segments and journals are deleted")
def _():
    spool = spool_dir("rotate")
    with FakeMX(chunking=True) as mx, \
            RelayServer(spool, hop(mx), extra=("segment_size=64k",), workers=1) as srv:
        n = 60
        big = ["%04d %s" % (i, "r" * 70) for i in range(60)]      # ~4.5 KB each
        for i in range(n):
            send_message(srv, "a@sender.test", ("u@example.test",), message("rot %d" % i, big))
        mx.wait_for(n, timeout=30)
        wdir = os.path.join(spool, "w0")
        srv.wait_log(r"removed", count=n)
        # ~270 KB in 64 KiB segments: at least 4 rotations. Every closed segment holds
        # only finished messages, so only the current one (and a prepared next) may stay.
        def settled():
            segs = sorted(f for f in os.listdir(wdir) if f.endswith(".seg"))
            jnls = sorted(f for f in os.listdir(wdir) if f.endswith(".jnl"))
            return (len(segs) <= 2 and "0000000000000001.seg" not in segs
                    and all(j[:-4] + ".seg" in segs for j in jnls)) and (segs, jnls)
        try:
            segs, jnls = wait_for(settled, timeout=10, what="old segments to go")
        except AssertionError:
            fail("w0 still holds %s" % sorted(os.listdir(wdir)))
        st = srv.stats()
        check(st["relay_segments_removed"] >= 3, "relay_segments_removed=%d"
              % st["relay_segments_removed"])
        check_eq(st["relay_rcpt_sent"], n, "relay_rcpt_sent")


def bounce_check(rec, sender, rcpt, status):
    """rec is a bounce: from <>, to the sender, multipart/report naming rcpt and status."""
    check_eq(rec.mail_from, "", "bounce envelope sender")
    check_eq(rec.rcpts, [sender], "bounce recipient")
    msg = email.message_from_bytes(rec.data_bytes, policy=email.policy.default)
    check_eq(msg.get_content_type(), "multipart/report", "bounce type")
    check_eq(msg.get_param("report-type"), "delivery-status", "report-type")
    text = rec.data_bytes.decode("utf-8", "replace")
    check("Final-Recipient: rfc822; " + rcpt in text, "bounce lacks Final-Recipient %s" % rcpt)
    check("Status: " + status in text, "bounce lacks Status: %s" % status)
    check("Action: failed" in text, "bounce lacks Action: failed")


@T.test("LMTP: per-recipient replies; 550 for one is bounced, its bounce reaches the sender")
def _():
    bad = "v@example.test"
    with FakeMX(lmtp=True) as mx:
        mx.lmtp_rcpt_reply = lambda a: (550, "5.1.1 <%s>: no such user" % a) if a == bad else None
        with RelayServer(spool_dir("lmtp"), hop(mx, "lmtp")) as srv:
            data = message("lmtp", ["per recipient"])
            qid = send_message(srv, "a@sender.test", RCPTS, data)
            got = mx.wait_for(2, timeout=15)
            orig = [r for r in got if r.mail_from == "a@sender.test"]
            check_eq(len(orig), 1, "original transactions")
            check_eq(orig[0].proto, "LMTP", "protocol")
            check_eq(sorted(orig[0].rcpts), ["u@example.test", "w@example.test"], "delivered")
            check_relayed(orig[0].data_bytes, data, qid)
            lines = status_lines(srv, qid, "bounced")
            check(len(lines) == 1 and "to=<%s>" % bad in lines[0] and "dsn=5.1.1" in lines[0],
                  "bounced line: %s" % lines)
            check_eq(len(status_lines(srv, qid, "sent")), 2, "status=sent lines")
            srv.wait_log(r"%s: sender non-delivery notification: [0-9A-Z]{13}" % qid)
            bounces = [r for r in got if r.mail_from == ""]
            check_eq(len(bounces), 1, "bounces")
            bounce_check(bounces[0], "a@sender.test", bad, "5.1.1")
            srv.wait_log(r"%s: removed" % qid)


def sink_load(name, lmtp, n, conns):
    if not os.access(load_tool(), os.X_OK):
        raise Skip("ringmx-load not built at %s (set RINGMX_LOAD)" % load_tool())
    dump = os.path.join(TMP, name, "dump")
    sink = need(lambda: SmtpSink(lmtp=lmtp, dump_dir=dump))
    with sink:
        with RelayServer(spool_dir(name), hop(sink, "lmtp" if lmtp else "smtp"),
                         extra=("relay_connections=4",)) as srv:
            man = os.path.join(TMP, name, "manifest")
            rc, js, err = run_load(["-c", str(conns), "-m", str(n), "-s", "200-6k",
                                    "--rcpts", "2", "--verify", man,
                                    "127.0.0.1:%d" % srv.port])
            check(rc == 0 and js and js["accepted"] == n, "ringmx-load: rc %d %s %s"
                  % (rc, js and {k: js[k] for k in ("accepted", "rejected", "failed")}, err[-300:]))
            manifest = read_manifest(man)
            check_eq(len(manifest), n, "manifest lines")
            msgs = sink.wait_for(n, timeout=60)
            wait_queue_empty(srv.spool, timeout=20)
            time.sleep(0.5)        # anything sent twice would show up now
            msgs = sink.messages()
        counts, problems = load_check(manifest, [m.data for m in msgs])
        check(not problems, "%d problems, e.g. %s" % (len(problems), problems[:3]))
        missing = [i for i in manifest if i not in counts]
        dups = [i for i, c in counts.items() if c > 1]
        check(not missing, "%d ids never arrived, e.g. %s" % (len(missing), missing[:3]))
        check(not dups, "%d ids arrived more than once, e.g. %s" % (len(dups), dups[:3]))
        check(all(m.data.startswith(b"Received: from ") for m in msgs), "no Received: first")
        check(all(len(m.rcpts) == 2 and m.sender.startswith("load") for m in msgs),
              "envelope: %s" % [(m.sender, m.rcpts) for m in msgs[:2]])


@T.test("smtp-sink: ringmx-load --verify 2000 messages over 20 connections, each once, exact")
def _():
    sink_load("sink-smtp", False, 2000, 20)


@T.test("smtp-sink -L (LMTP): ringmx-load --verify 1000 messages, each once, exact")
def _():
    sink_load("sink-lmtp", True, 1000, 10)


def dovecot_case(name, unix):
    dv = need(lambda: DovecotLMTP(os.path.join(TMP, name, "dovecot")))
    with dv:
        nh = "lmtp:unix:" + dv.unix_path if unix else hop(dv, "lmtp")
        with RelayServer(spool_dir(name), nh) as srv:
            data = message("dovecot " + name, ["to a maildir", ".dot"])
            qid = send_message(srv, "a@sender.test", ("alice@example.test",), data)
            stored = dv.wait_for("alice", "example.test", 1, timeout=15)
            check_eq(len(stored), 1, "messages in the Maildir")
            added, original = nexthop.strip_dovecot_headers(stored[0])
            check_eq(added.get("Return-Path"), "<a@sender.test>", "Return-Path")
            check_eq(added.get("Delivered-To"), "alice@example.test", "Delivered-To")
            check_relayed(original, data, qid)
            check_sent(srv, qid, ("alice@example.test",))


@T.test("Dovecot LMTP over TCP: into the Maildir, content exact")
def _():
    dovecot_case("dovecot-tcp", False)


@T.test("Dovecot LMTP over its unix socket (lmtp:unix:PATH): into the Maildir, content exact")
def _():
    dovecot_case("dovecot-unix", True)


def cert():
    return self_signed_cert(os.path.join(TMP, "cert"))


@T.test("relay_tls=encrypt: delivered inside TLS, 'TLS connection established' logged")
def _():
    with FakeMX(chunking=True, starttls_cert=cert()) as mx, \
            RelayServer(spool_dir("tls-encrypt"), hop(mx), extra=("relay_tls=encrypt",)) as srv:
        data = message("tls encrypt")
        qid = send_message(srv, "a@sender.test", RCPTS[:1], data)
        rec = mx.wait_for(1)[0]
        check(rec.tls, "not delivered inside TLS")
        check_relayed(rec.data_bytes, data, qid)
        srv.wait_log(r"relay: TLS connection established to .*\(certificate not verified\)")
        check_sent(srv, qid, RCPTS[:1])
        check(not mx.errors, "FakeMX: %s" % mx.errors[:3])


@T.test("relay_tls=verify with the CA and relay_host localhost: verified, delivered in TLS")
def _():
    c, _k = cert()
    with FakeMX(starttls_cert=cert()) as mx, \
            RelayServer(spool_dir("tls-verify"), hop(mx, host="localhost"),
                        extra=("relay_tls=verify", "relay_tls_ca_file=" + c)) as srv:
        data = message("tls verify")
        qid = send_message(srv, "a@sender.test", RCPTS[:1], data)
        rec = mx.wait_for(1, timeout=15)[0]
        check(rec.tls, "not delivered inside TLS")
        check_relayed(rec.data_bytes, data, qid)
        srv.wait_log(r"relay: TLS connection established to .*\(certificate verified\)")
        check_sent(srv, qid, RCPTS[:1])


@T.test("relay_tls=verify against a certificate from another CA: deferred, not delivered")
def _():
    other, _k = self_signed_cert(os.path.join(TMP, "other-ca"), cn="other.test")
    with FakeMX(starttls_cert=cert()) as mx, \
            RelayServer(spool_dir("tls-badca"), hop(mx, host="localhost"),
                        extra=("relay_tls=verify", "relay_tls_ca_file=" + other)) as srv:
        qid = send_message(srv, "a@sender.test", RCPTS[:1], message("tls bad ca"))
        srv.wait_log(r"%s: to=<u@example.test>, .*status=deferred" % qid, timeout=15)
        time.sleep(1.0)
        check_eq(len(mx.messages), 0, "messages delivered with an unverifiable certificate")
        check(not status_lines(srv, qid, "sent"), "logged as sent")


@T.test("relay_tls=encrypt, next hop without STARTTLS: deferred ('TLS is required'), not sent")
def _():
    with FakeMX() as mx, \
            RelayServer(spool_dir("tls-missing"), hop(mx), extra=("relay_tls=encrypt",)) as srv:
        qid = send_message(srv, "a@sender.test", RCPTS[:1], message("tls missing"))
        lines = srv.wait_log(r"%s: to=<u@example.test>, .*status=deferred" % qid, timeout=15)
        check("TLS is required" in lines[0], "deferred line: %s" % lines[0])
        time.sleep(1.5)     # a retry (retry_min=1s) must not send it in the clear either
        check_eq(len(mx.messages), 0, "messages delivered without TLS")
        check_eq(mx.counters()["transactions"], 0, "MAIL commands in the clear")



@T.test("relay_host by a name only dns_servers knows: resolved through c-ares, delivered; "
        "a name it does not know: ringmxd -t names the key and exits 1")
def _():
    # relay.test exists only in dnsd's zone: getaddrinfo (the C library's resolver,
    # /etc/resolv.conf) could not find it, so this passes only if the next hop's name
    # goes through c-ares and dns_servers, as screening's lookups do (issue 13).
    try:
        dns = DnsServer({"relay.test": {"A": ["127.0.0.1"], "ttl": 60}},
                        zones=["test"]).start()
    except DnsUnavailable as e:
        raise Skip(str(e))
    try:
        servers = "dns_servers=127.0.0.1:%d" % dns.port
        with FakeMX() as mx, \
                RelayServer(spool_dir("dns-name"), "smtp:relay.test:%d" % mx.port,
                            extra=(servers,)) as srv:
            data = message("next hop by name")
            qid = send_message(srv, "a@sender.test", RCPTS[:1], data)
            rec = mx.wait_for(1, timeout=15)[0]
            check_relayed(rec.data_bytes, data, qid)
            check_sent(srv, qid, RCPTS[:1])
        asked = {q[1] for q in dns.queries("relay.test")}
        check("A" in asked, "relay.test was not asked of dns_servers: %s" % asked)
        p = subprocess.run([ringmxd_path(), "-t", "-o", "sink=spool",
                            "-o", "spool_dir=" + spool_dir("dns-none"),
                            "-o", "relay_host=smtp:nohost.test:25", "-o", servers],
                           capture_output=True, text=True, timeout=30)
        check_eq(p.returncode, 1, "ringmxd -t exit with an unknown next-hop name")
        check("relay_host" in p.stderr and "nohost.test" in p.stderr
              and "no such host" in p.stderr, "error: %r" % p.stderr)
    finally:
        dns.stop()

if __name__ == "__main__":
    try:
        T.main(requires=[spool_tool()])
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
