#!/usr/bin/env python3
"""test_screening - screening before the 220 (issue 13) on the real ringmxd with 2
workers, against real DNS on loopback (dnsd.py on python3-dnslib): DNSBL and DNSWL
scoring with weights and filters (listed, unlisted, allow-listed, filter mismatch,
SERVFAIL, NXDOMAIN, a site that never answers, IPv6 by nibbles, TTL expiry), the
enforce, drop and ignore actions, the pass cache across workers, the greet wait and
pregreet talkers (in the 220- pause and before it) beside well-behaved clients
(swaks, smtplib, Postfix smtp-source), client_access (REJECT, OK, DUNNO, first match,
SIGHUP) and a broken client_access file at start-up.

Written against the interface the lead pinned down for issue 13 (the exact replies,
log lines and counters of /tmp/briefs/screen-spec.md, summarised in docs/defences.md
once it lands); where the test and ringmxd disagree, the test says what was sent,
what was expected and what came back.

Every client comes from its own 127.x.y.z address, so neither the per-client limits
nor the pass cache of one check leaks into another:
  127.1.*  DNSBL enforce          127.5.*  DNSBL drop and ignore
  127.2.*  pregreet talkers       127.6.*  timeouts, SERVFAIL, NXDOMAIN
  127.3.*  well-behaved clients   127.7.*  TTL expiry
  127.4.*  client_access          127.0.0.1 smtp-source (it cannot pick a source)
Checks that need python3-dnslib skip without it; the IPv6 check skips without ::1.
About a minute.
"""

import atexit
import os
import re
import signal
import smtplib
import tempfile
import time

from ringmx_harness import (HOSTNAME, Client, Closed, Server, Suite, Skip, check, check_eq,
                            EOL_WORKER, free_port, ipv6_available, ringmxd_path, run,
                            worker_of_line)
from dnsd import DnsServer, DnsUnavailable, dnsbl_name

T = Suite(__file__)
SWAKS = "/usr/bin/swaks"
SMTP_SOURCE = "/usr/sbin/smtp-source"

GREET_TEASER = "220-%s ESMTP ringmx" % HOSTNAME
GREETING = "220 %s ESMTP ringmx" % HOSTNAME
PROTOCOL_550 = "550 5.5.1 Protocol error"
PROTOCOL_521 = "521 5.5.1 Protocol error"
ACCESS_503 = "503 5.5.1 Error: access denied"
SITES = "bl.test*3, fl.test=127.0.0.[2..11]*2, wl.test*-2"
SITE_ZONES = ("bl.test", "fl.test", "wl.test")

# ---------------------------------------------------------------- the shared zone

ZONE = {}


def listed(ip, site, *addrs, **kw):
    ZONE[dnsbl_name(ip, site)] = dict({"A": list(addrs) or ["127.0.0.2"]}, **kw)


# DNSBL enforce (bl 3, fl 2 when 127.0.0.2..11, wl -2; threshold 1)
listed("127.1.0.2", "bl.test")
listed("127.1.0.2", "fl.test", "127.0.0.3")              # 3 + 2 = 5, SITE bl.test
listed("127.1.0.3", "fl.test", "127.0.0.5")              # 2, SITE fl.test
listed("127.1.0.5", "fl.test", "127.0.0.4")
listed("127.1.0.5", "wl.test")                           # 2 - 2 = 0: passes
listed("127.1.0.6", "bl.test")
listed("127.1.0.6", "wl.test")                           # 3 - 2 = 1: still listed
listed("127.1.0.7", "fl.test", "127.0.0.99")             # filter mismatch: 0
listed("127.1.0.8", "fl.test", "127.0.0.12")             # just past the range: 0
listed("127.1.0.9", "fl.test", "127.0.0.1", "127.0.0.11")  # one record in range: 2
# DNSBL drop and ignore
listed("127.5.0.1", "bl.test")
listed("127.5.0.2", "bl.test")
listed("127.5.0.3", "bl.test")
# a site that never answers, SERVFAIL
ZONE[dnsbl_name("127.6.0.1", "to.test")] = {"drop": True}
ZONE[dnsbl_name("127.6.0.2", "bl.test")] = {"rcode": "SERVFAIL"}
ZONE[dnsbl_name("127.6.0.4", "to.test")] = {"drop": True}
# client_access: listed, so that OK visibly skips the DNSBL
listed("127.4.0.2", "bl.test")
listed("127.4.0.3", "bl.test")
listed("127.4.1.6", "bl.test")
# IPv6, by nibbles
listed("::1", "bl.test")
ZONES = ["bl.test", "fl.test", "wl.test", "to.test"]

_DNS = {"srv": None}


def dns():
    """The shared dnsd, started on first use; Skip without python3-dnslib."""
    d = _DNS["srv"]
    if d is None:
        try:
            d = _DNS["srv"] = DnsServer(ZONE, zones=ZONES).start()
        except DnsUnavailable as e:
            raise Skip(str(e))
    check(d.alive(), "dnsd died: %s" % d.stderr()[-2000:])
    return d


atexit.register(lambda: _DNS["srv"] is not None and _DNS["srv"].stop())


def screening(d, *kv, dns_host="127.0.0.1", **kw):
    """ringmxd with 2 workers asking d, plus -o key=value for each kv."""
    args = ["-o", "dns_servers=%s:%d" % ("[::1]" if dns_host == "::1" else dns_host, d.port)]
    for x in kv:
        args += ["-o", x]
    kw.setdefault("workers", 2)
    return Server(args=args, **kw)


# ---------------------------------------------------------------- helpers

def blocked(code, ip, site):
    return "%d 5.7.1 Service unavailable; client [%s] blocked using %s" % (code, ip, site)


def esc(ip):
    return re.escape(ip)


def delta(after, before, name):
    return after.get(name, 0) - before.get(name, 0)


def check_counters(s, before, want):
    """SIGUSR1 again; each counter in want moved by exactly that much."""
    after = s.stats()
    got = {k: delta(after, before, k) for k in want}
    check_eq(got, want, "counter deltas")
    return after


def refused_session(s, ip, text, host=None):
    """EHLO, MAIL 250, two RCPTs refused with exactly text; QUIT. Returns the port."""
    with s.client(source=ip, host=host) as c:
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        for rcpt in ("u@example.test", "v@example.test"):
            check_eq(c.cmd("RCPT TO:<%s>" % rcpt).lines, [text], "reply to RCPT from %s" % ip)
        c.quit()
        return c.local_port


def accepted_session(s, ip, host=None):
    """EHLO and one message accepted (250 after DATA); QUIT. Returns (port, MAIL seconds)."""
    with s.client(source=ip, host=host) as c:
        c.ehlo()
        t0 = time.monotonic()
        c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
        took = time.monotonic() - t0
        c.cmd("RCPT TO:<u@example.test>").expect(250, "2.1.5")
        c.cmd("DATA").expect(354)
        c.send("Subject: screening\r\n\r\nhello\r\n.\r\n")
        c.expect(250, "2.0.0", "queued as")
        c.quit()
        return c.local_port, took


def noqueue_line(s, ip, port, reply, helo="client.ringmx.test", since=0):
    """The session's NOQUEUE line; ip as the session logs it (IPv6 with its "IPv6:" tag)."""
    want = ("NOQUEUE: reject: RCPT from [%s]:%d: %s; from=<a@sender.test> to=<u@example.test> "
            "proto=ESMTP helo=<%s>" % (ip, port, reply, helo))
    s.wait_disconnect(port, since=since)
    lines = [ln for ln in s.log_since(since).splitlines() if want in ln]
    check(lines, "no log line %r; tail:\n%s" % (want, s.log_since(since)[-2000:]))


def has_line(s, ip, port, text, since=0):
    """A log line ending in 'text [ip]:port' (PASS NEW, PASS OLD, ...) for that session."""
    rx = re.compile(r"\b%s \[%s\]:%d" % (re.escape(text), esc(ip), port) + EOL_WORKER)
    s.wait_disconnect(port, since=since)
    return [ln for ln in s.log_since(since).splitlines() if rx.search(ln)]


def worker_of(s, port, since=0):
    ln = s.wait_disconnect(port, since=since)
    w = worker_of_line(ln)
    check(w is not None, "no worker in %r" % ln)
    return w


def queries_of(d, ip, zones=SITE_ZONES):
    return {z: len(d.queries(dnsbl_name(ip, z))) for z in zones}


# ---------------------------------------------------------------- DNSBL, enforce

enforce = {"srv": None}


def enforce_srv():
    s = enforce["srv"]
    if s is None or not s.alive():
        check(s is None, "the enforce ringmxd died; log tail:\n%s" % (s.log()[-3000:] if s else ""))
        s = enforce["srv"] = screening(dns(), "dnsbl_sites=" + SITES).start()
    return s


@T.test("DNSBL enforce: a client on bl.test (3) and fl.test (2): every RCPT gets the exact "
        "550 5.7.1 ... blocked using bl.test (the largest weight), the envelope is logged "
        "(NOQUEUE), 'DNSBL rank 5', screen_dnsbl_listed; no PASS line")
def _():
    s, d = enforce_srv(), dns()
    st, off = s.stats(), s.log_size()
    ip = "127.1.0.2"
    port = refused_session(s, ip, blocked(550, ip, "bl.test"))
    noqueue_line(s, ip, port, blocked(550, ip, "bl.test"), since=off)
    s.wait_log(r"DNSBL rank 5 for \[%s\]:%d worker=w\d+$" % (esc(ip), port), since=off)
    check_eq(has_line(s, ip, port, "PASS NEW", since=off) + has_line(s, ip, port, "PASS OLD",
                                                                      since=off), [],
             "PASS lines of a listed client")
    check_counters(s, st, {"screen_dnsbl_listed": 1, "screen_pass_new": 0, "screen_pass_old": 0})
    check_eq(queries_of(d, ip), {"bl.test": 1, "fl.test": 1, "wl.test": 1},
             "one A query per site")


@T.test("DNSBL enforce: listed on fl.test only (127.0.0.5 in [2..11]): blocked using fl.test, "
        "rank 2; a record in range among others (127.0.0.1 and .11) lists too")
def _():
    s = enforce_srv()
    off = s.log_size()
    for ip in ("127.1.0.3", "127.1.0.9"):
        port = refused_session(s, ip, blocked(550, ip, "fl.test"))
        s.wait_log(r"DNSBL rank 2 for \[%s\]:%d worker=w\d+$" % (esc(ip), port), since=off)
        noqueue_line(s, ip, port, blocked(550, ip, "fl.test"), since=off)


@T.test("DNSBL enforce: bl.test (3) and the allow list wl.test (-2) sum to 1 >= 1: still "
        "blocked using bl.test, rank 1")
def _():
    s = enforce_srv()
    off = s.log_size()
    ip = "127.1.0.6"
    port = refused_session(s, ip, blocked(550, ip, "bl.test"))
    s.wait_log(r"DNSBL rank 1 for \[%s\]:%d worker=w\d+$" % (esc(ip), port), since=off)


@T.test("DNSBL: an unlisted client (NXDOMAIN everywhere): mail accepted, PASS NEW; then "
        "connections from it on both workers: PASS OLD, not one more DNS query; counters")
def _():
    s, d = enforce_srv(), dns()
    ip = "127.1.0.4"
    st, off = s.stats(), s.log_size()
    port, _t = accepted_session(s, ip)
    check(has_line(s, ip, port, "PASS NEW", since=off), "no 'PASS NEW [%s]:%d'; tail:\n%s"
          % (ip, port, s.log_since(off)[-2000:]))
    check_eq(s.log_since(off).count("DNSBL rank"), 0, "rank lines")
    first_worker = worker_of(s, port, since=off)
    q0 = queries_of(d, ip)
    check_eq(q0, {"bl.test": 1, "fl.test": 1, "wl.test": 1}, "queries of the first connection")
    workers, n = set(), 0
    while n < 16 and (len(workers) < 2 or n < 4):
        o2 = s.log_size()
        p2, _t = accepted_session(s, ip)
        check(has_line(s, ip, p2, "PASS OLD", since=o2),
              "connection %d: no 'PASS OLD [%s]:%d'; its lines:\n%s"
              % (n + 2, ip, p2, "\n".join(ln for ln in s.log_since(o2).splitlines()
                                          if str(p2) in ln)))
        workers.add(worker_of(s, p2, since=o2))
        n += 1
    check_eq(len(workers), 2, "workers that served PASS OLD connections (%d tries)" % n)
    check(first_worker in workers, "never a PASS OLD on %s, the PASS NEW worker" % first_worker)
    check_eq(queries_of(d, ip), q0, "DNS queries after the PASS OLD connections")
    check_counters(s, st, {"screen_pass_new": 1, "screen_pass_old": n, "screen_dnsbl_listed": 0,
                           "messages_accepted": n + 1})


@T.test("DNSBL: allow-listed under the threshold (fl 2 + wl -2 = 0), a filter mismatch "
        "(127.0.0.99) and 127.0.0.12 just past [2..11]: not listed, mail accepted, PASS NEW")
def _():
    s = enforce_srv()
    st, off = s.stats(), s.log_size()
    for ip in ("127.1.0.5", "127.1.0.7", "127.1.0.8"):
        port, _t = accepted_session(s, ip)
        check(has_line(s, ip, port, "PASS NEW", since=off), "no PASS NEW for %s" % ip)
    check_eq(s.log_since(off).count("DNSBL rank"), 0, "rank lines")
    check_counters(s, st, {"screen_pass_new": 3, "screen_dnsbl_listed": 0})


@T.test("DNSBL answer cache: a listed client 4 times over 2 workers: at most one query per "
        "site and worker; dns_queries equals what dnsd saw, the rest are dns_cache_hits")
def _():
    s, d = enforce_srv(), dns()
    ip = "127.1.0.2"        # listed: never in the pass cache, so DNS is asked every time
    q0 = queries_of(d, ip)
    st = s.stats()
    for _i in range(4):
        refused_session(s, ip, blocked(550, ip, "bl.test"))
    q1 = queries_of(d, ip)
    sent = sum(q1.values()) - sum(q0.values())
    check(all(q1[z] <= 2 for z in q1), "queries per site after 5 connections: %r" % q1)
    after = s.stats()
    check_eq(delta(after, st, "dns_queries"), sent, "dns_queries against dnsd's log")
    check(delta(after, st, "dns_cache_hits") >= 12 - sent,
          "dns_cache_hits %d, want >= %d" % (delta(after, st, "dns_cache_hits"), 12 - sent))
    check_eq(delta(after, st, "screen_dnsbl_listed"), 4, "screen_dnsbl_listed")


# ---------------------------------------------------------------- DNSBL, drop and ignore

@T.test("dnsbl_action=drop: no greet wait: the first MAIL gets 521 5.7.1 ... blocked using "
        "bl.test and the connection closes; with greet_wait=1s the 521 replaces the final 220")
def _():
    d = dns()
    with screening(d, "dnsbl_sites=" + SITES, "dnsbl_action=drop") as s:
        ip = "127.5.0.1"
        with s.client(source=ip) as c:
            c.ehlo()
            check_eq(c.cmd("MAIL FROM:<a@sender.test>").lines, [blocked(521, ip, "bl.test")],
                     "reply to MAIL")
            c.expect_closed()
        st = s.stats()
        check_eq((st.get("screen_dropped"), st.get("screen_dnsbl_listed")), (1, 1),
                 "screen_dropped, screen_dnsbl_listed")
    with screening(d, "dnsbl_sites=" + SITES, "dnsbl_action=drop", "greet_wait=1s") as s:
        ip = "127.5.0.2"
        t0 = time.monotonic()
        c = Client(s.port, greet=False, source=ip)
        try:
            check_eq(c.line(), GREET_TEASER, "first line")
            check_eq(c.line(), blocked(521, ip, "bl.test"), "instead of the final 220")
            took = time.monotonic() - t0
            check(0.8 <= took < 3.0, "521 after %.2f s (greet_wait 1s)" % took)
            c.expect_closed()
        finally:
            c.close()
        check_eq(s.stats().get("screen_dropped"), 1, "screen_dropped")


@T.test("dnsbl_action=ignore: a listed client's mail is accepted, 'DNSBL rank 3' logged, "
        "screen_dnsbl_listed counted, no PASS NEW")
def _():
    with screening(dns(), "dnsbl_sites=" + SITES, "dnsbl_action=ignore") as s:
        ip = "127.5.0.3"
        port, _t = accepted_session(s, ip)
        s.wait_log(r"DNSBL rank 3 for \[%s\]:%d worker=w\d+$" % (esc(ip), port))
        check_eq(has_line(s, ip, port, "PASS NEW"), [], "PASS NEW lines")
        st = s.stats()
        check_eq({k: st.get(k) for k in ("screen_dnsbl_listed", "screen_pass_new",
                                         "messages_accepted")},
                 {"screen_dnsbl_listed": 1, "screen_pass_new": 0, "messages_accepted": 1},
                 "counters")


# ---------------------------------------------------------------- timeouts and failures

@T.test("a site that never answers, dnsbl_timeout=1s: the first MAIL waits ~1 s (>= 0.8, < 3) "
        "then the mail is accepted; screen_dnsbl_timeouts; not pass-cached: the next "
        "connection is screened again (no PASS OLD) and accepted")
def _():
    d = dns()
    with screening(d, "dnsbl_sites=bl.test*3, to.test*1", "dnsbl_timeout=1s") as s:
        ip = "127.6.0.1"
        name = dnsbl_name(ip, "to.test")
        off = s.log_size()
        port, took = accepted_session(s, ip)
        check(0.8 <= took < 3.0, "MAIL took %.2f s (dnsbl_timeout 1s)" % took)
        check(len(d.queries(name)) >= 1, "no query for %s" % name)
        check_eq(has_line(s, ip, port, "PASS NEW", since=off), [], "PASS NEW after a timeout")
        st = s.stats()
        check_eq({k: st.get(k) for k in ("screen_dnsbl_timeouts", "screen_dnsbl_listed",
                                         "screen_pass_new", "messages_accepted")},
                 {"screen_dnsbl_timeouts": 1, "screen_dnsbl_listed": 0, "screen_pass_new": 0,
                  "messages_accepted": 1}, "counters")
        # The next connection, on the same worker, may join the first one's query, still
        # in flight in c-ares, and get its failure before its own dnsbl_timeout (then it is
        # counted in dns_errors, not screen_dnsbl_timeouts): so no lower bound here.
        off = s.log_size()
        port, took = accepted_session(s, ip)
        check(took < 3.0, "second connection: MAIL took %.2f s" % took)
        check_eq(has_line(s, ip, port, "PASS OLD", since=off) +
                 has_line(s, ip, port, "PASS NEW", since=off), [], "second connection: PASS lines")
        after = s.stats()
        # dns_errors also counts the first query's own c-ares timeout whenever it ends.
        check(delta(after, st, "screen_dnsbl_timeouts") + delta(after, st, "dns_errors") >= 1,
              "second connection: neither screen_dnsbl_timeouts nor dns_errors moved")
        check_eq(delta(after, st, "screen_pass_old"), 0, "screen_pass_old")


@T.test("SIGTERM while a DNS query is in flight (a MAIL waiting on a site that never "
        "answers): exit 0, clean log")
def _():
    d = dns()
    s = screening(d, "dnsbl_sites=to.test*1", "dnsbl_timeout=5s").start()
    try:
        c = s.client(source="127.6.0.4")
        c.ehlo()
        c.send("MAIL FROM:<a@sender.test>\r\n")
        name = dnsbl_name("127.6.0.4", "to.test")
        deadline = time.monotonic() + 5
        while not d.queries(name) and time.monotonic() < deadline:
            time.sleep(0.02)
        check(d.queries(name), "no query for %s" % name)
        rc = s.stop(check=False)
        c.close()
        bad = [ln for ln in s.log().splitlines() if "Sanitizer" in ln or "#" in ln[:8]]
        check_eq(rc, 0, "exit code after SIGTERM with a query in flight; log:\n%s"
                 % "\n".join(bad[:12]))
        s.check_log()
    finally:
        if not s.stopped:
            s.stop(check=False)
        s.tmpdir.cleanup()


@T.test("SERVFAIL on bl.test: not listed, accepted without waiting for the timeout, counted "
        "in dns_errors, not pass-cached; NXDOMAIN everywhere: accepted, PASS NEW, dns_nxdomain")
def _():
    d = dns()
    with screening(d, "dnsbl_sites=bl.test*3, to.test*1", "dnsbl_timeout=2s") as s:
        ip = "127.6.0.2"
        port, took = accepted_session(s, ip)
        check(took < 0.8, "MAIL took %.2f s after a SERVFAIL" % took)
        check_eq(has_line(s, ip, port, "PASS NEW"), [], "PASS NEW after a SERVFAIL")
        check(len(d.queries(dnsbl_name(ip, "bl.test"))) >= 1, "no query for the SERVFAIL name")
        st = s.stats()
        check(st.get("dns_errors", 0) >= 1, "dns_errors %r" % st.get("dns_errors"))
        check_eq(st.get("screen_dnsbl_listed"), 0, "screen_dnsbl_listed")
        ip = "127.6.0.3"
        off = s.log_size()
        port, took = accepted_session(s, ip)
        check(took < 0.8, "MAIL took %.2f s after NXDOMAINs" % took)
        check(has_line(s, ip, port, "PASS NEW", since=off), "no PASS NEW after NXDOMAINs")
        after = s.stats()
        check_eq(delta(after, st, "dns_nxdomain"), 2, "dns_nxdomain")
        check_eq(delta(after, st, "dns_errors"), 0, "dns_errors for NXDOMAIN")


@T.test("IPv6: ringmxd on ::1 asking dnsd on [::1]: the client ::1 is listed by its 32-nibble "
        "name: 550 5.7.1 Service unavailable; client [::1] blocked using bl.test")
def _():
    if not ipv6_available():
        raise Skip("no IPv6 loopback")
    d = dns()
    if not d.ipv6:
        raise Skip("dnsd could not bind ::1")
    name = dnsbl_name("::1", "bl.test")
    with screening(d, "dnsbl_sites=" + SITES, dns_host="::1", listen=("::1",)) as s:
        port = refused_session(s, None, blocked(550, "::1", "bl.test"), host="::1")
        # Log lines name the client as every session line does, [IPv6:::1]:port; the
        # spec's shapes show IPv4 only, so the bare [::1] is taken too.
        s.wait_log(r"DNSBL rank 3 for \[(?:IPv6:)?::1\]:%d worker=w\d+$" % port)
        noqueue_line(s, "IPv6:::1", port, blocked(550, "::1", "bl.test"))
        check_eq(len(d.queries(name)), 1, "queries for %s" % name)


@T.test("TTL expiry (screen_cache_ttl=0): listed with ttl 2 and cached on both workers; the "
        "zone drops the entry: still refused while cached, accepted once the TTL is over")
def _():
    ip = "127.7.0.1"
    name = dnsbl_name(ip, "bl.test")
    try:
        d = DnsServer({name: {"A": ["127.0.0.2"], "ttl": 2}}, zones=["bl.test"]).start()
    except DnsUnavailable as e:
        raise Skip(str(e))
    with d, screening(d, "dnsbl_sites=bl.test*3", "screen_cache_ttl=0") as s:
        refuse = blocked(550, ip, "bl.test")
        workers, first_query, last_query = set(), None, None
        for _i in range(12):
            n = len(d.queries(name))
            t0 = time.monotonic()
            off = s.log_size()
            port = refused_session(s, ip, refuse)
            workers.add(worker_of(s, port, since=off))
            if len(d.queries(name)) > n:
                first_query = first_query or t0
                last_query = time.monotonic()
            if len(workers) == 2:
                break
        check_eq(len(d.queries(name)), 2, "queries once both workers have the answer cached")
        d.set_zone({})
        t_zone = time.monotonic()
        check(t_zone - last_query < 1.5, "too slow to test within the TTL (%.2f s)"
              % (t_zone - last_query))
        for _i in range(3):
            refused_session(s, ip, refuse)
        check(time.monotonic() - first_query < 2.0, "the cached checks ran past the TTL")
        check_eq(len(d.queries(name)), 2, "queries while the answer is cached")
        time.sleep(max(0.0, last_query + 2.6 - time.monotonic()))
        for _i in range(3):
            accepted_session(s, ip)
        check(len(d.queries(name)) >= 3, "no new query after the TTL: %d" % len(d.queries(name)))
        st = s.stats()
        check_eq(st.get("screen_pass_new"), 0, "screen_pass_new with screen_cache_ttl=0")


# ---------------------------------------------------------------- greet wait, pregreet

greet = {"srv": None}


def greet_srv():
    s = greet["srv"]
    if s is None or not s.alive():
        check(s is None, "the greet_wait ringmxd died; log tail:\n%s" % (s.log()[-3000:] if s
                                                                         else ""))
        s = greet["srv"] = Server(workers=2, args=["-o", "greet_wait=1s"]).start()
    return s


def pregreet_rx(ip, port, nbytes, text):
    return (r"PREGREET %d after (\d+\.\d\d) from \[%s\]:%d: %s worker=w\d+$"
            % (nbytes, esc(ip), port, re.escape(text)))


@T.test("greet_wait=1s: '220-' at once, the final '220 ' about 1 s later; the client then "
        "passes (PASS NEW), and its next connection gets a plain 220 at once (PASS OLD)")
def _():
    s = greet_srv()
    ip = "127.2.0.1"
    st, off = s.stats(), s.log_size()
    t0 = time.monotonic()
    c = Client(s.port, greet=False, source=ip)
    try:
        check_eq(c.line(), GREET_TEASER, "first line")
        t1 = time.monotonic() - t0
        check(t1 < 0.5, "220- after %.2f s" % t1)
        check_eq(c.line(), GREETING, "final line")
        t2 = time.monotonic() - t0
        check(0.8 <= t2 < 3.0, "final 220 after %.2f s (greet_wait 1s)" % t2)
        c.ehlo()
        c.transaction()
        c.quit()
    finally:
        c.close()
    check(has_line(s, ip, c.local_port, "PASS NEW", since=off), "no PASS NEW")
    off = s.log_size()
    port = unscreened_session(s, ip, "a PASS OLD client")
    check(has_line(s, ip, port, "PASS OLD", since=off), "no PASS OLD")
    check_counters(s, st, {"screen_greet_waits": 1, "screen_pass_new": 1, "screen_pass_old": 1,
                           "screen_pregreet": 0})


def unscreened_session(s, ip, who):
    """A plain one-line 220 within 0.5 s (no greet wait), then a message. Returns the port."""
    t0 = time.monotonic()
    c = Client(s.port, greet=False, source=ip)
    try:
        check_eq(c.line(), GREETING, "greeting of " + who)
        took = time.monotonic() - t0
        check(took < 0.5, "greeting of %s after %.2f s" % (who, took))
        c.ehlo()
        c.transaction()
        c.quit()
    finally:
        c.close()
    return c.local_port


def talker(s, ip, early):
    """A client that sends 'EHLO abc' before the final 220: right after connect (early), or
    after the 220- line. Returns the Client, the lines read before its EHLO reply."""
    c = Client(s.port, greet=False, source=ip)
    if early:
        c.send("EHLO abc\r\n")
        first = c.line()
    else:
        first = c.line()
        c.send("EHLO abc\r\n")
    return c, first


@T.test("greet_action=enforce: a talker in the 220- pause and one that sends at once: "
        "'PREGREET 10 after T from [ip]:port: EHLO abc\\r\\n', the session goes on, every "
        "RCPT gets 550 5.5.1 Protocol error (NOQUEUE line), not pass-cached")
def _():
    s = greet_srv()
    st = s.stats()
    for ip, early in (("127.2.0.2", False), ("127.2.0.3", True)):
        off = s.log_size()
        c, first = talker(s, ip, early)
        try:
            check_eq(first, GREET_TEASER, "first line (early=%s)" % early)
            check_eq(c.line(), GREETING, "final 220 (early=%s)" % early)
            c.reply().expect(250)           # to the early EHLO
            c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
            for rcpt in ("u@example.test", "v@example.test"):
                check_eq(c.cmd("RCPT TO:<%s>" % rcpt).lines, [PROTOCOL_550],
                         "RCPT of a talker (early=%s)" % early)
            c.quit()
        finally:
            c.close()
        port = c.local_port
        ln = s.wait_log(pregreet_rx(ip, port, 10, "EHLO abc\\r\\n"), since=off)[0]
        after = float(re.search(r"after (\d+\.\d\d)", ln).group(1))
        check(after < 1.0, "PREGREET after %.2f s" % after)
        noqueue_line(s, ip, port, PROTOCOL_550, helo="abc", since=off)
        check_eq(has_line(s, ip, port, "PASS NEW", since=off), [], "PASS NEW of a talker")
    check_counters(s, st, {"screen_pregreet": 2, "screen_pass_new": 0, "screen_greet_waits": 2})


@T.test("greet_action=drop: a talker gets 521 5.5.1 Protocol error at once (well before the "
        "end of the wait) and is closed; in the pause and before the 220-")
def _():
    with Server(workers=2, args=["-o", "greet_wait=2s", "-o", "greet_action=drop"]) as s:
        for ip, early in (("127.2.1.1", False), ("127.2.1.2", True)):
            t0 = time.monotonic()
            c, first = talker(s, ip, early)
            try:
                lines = [first]
                if first == GREET_TEASER:
                    lines.append(c.line())
                took = time.monotonic() - t0
                check_eq(lines[-1], PROTOCOL_521, "reply to a talker (early=%s), lines %r"
                         % (early, lines))
                # One that sends at once may be caught before the 220- goes out.
                check(lines[:-1] == [GREET_TEASER] or early and lines[:-1] == [],
                      "lines before the 521: %r" % lines)
                check(took < 1.0, "521 after %.2f s (greet_wait 2s)" % took)
                c.expect_closed()
            finally:
                c.close()
            s.wait_log(pregreet_rx(ip, c.local_port, 10, "EHLO abc\\r\\n"))
        st = s.stats()
        check_eq({k: st.get(k) for k in ("screen_pregreet", "screen_dropped")},
                 {"screen_pregreet": 2, "screen_dropped": 2}, "counters")


@T.test("greet_action=ignore: a talker is logged (PREGREET) and counted, its mail accepted, "
        "no PASS NEW")
def _():
    with Server(workers=2, args=["-o", "greet_wait=1s", "-o", "greet_action=ignore"]) as s:
        ip = "127.2.2.1"
        c, first = talker(s, ip, False)
        try:
            check_eq(first, GREET_TEASER, "first line")
            check_eq(c.line(), GREETING, "final 220")
            c.reply().expect(250)
            c.transaction()
            c.quit()
        finally:
            c.close()
        port = c.local_port
        s.wait_log(pregreet_rx(ip, port, 10, "EHLO abc\\r\\n"))
        check_eq(has_line(s, ip, port, "PASS NEW"), [], "PASS NEW lines")
        st = s.stats()
        check_eq({k: st.get(k) for k in ("screen_pregreet", "screen_pass_new",
                                         "messages_accepted")},
                 {"screen_pregreet": 1, "screen_pass_new": 0, "messages_accepted": 1}, "counters")


@T.test("PREGREET shows the first 100 bytes escaped (CR \\r, LF \\n, others ?) and counts "
        "every byte received so far")
def _():
    s = greet_srv()
    ip = "127.2.0.4"
    data = b"\x00\x7fHELO x\tz\r\n" + b"A" * 150
    c = Client(s.port, greet=False, source=ip)
    try:
        c.send(data)
        c.line()
        c.line()
    except Closed:
        pass
    finally:
        c.close()
    shown = "??HELO x?z\\r\\n" + "A" * (100 - 12)
    s.wait_log(pregreet_rx(ip, c.local_port, len(data), shown))


@T.test("well-behaved clients wait out the greeting: swaks, smtplib and smtp-source deliver; "
        "PASS NEW, then PASS OLD with no second greet wait")
def _():
    s = greet_srv()
    if os.access(SWAKS, os.X_OK):
        ip = "127.3.0.1"
        outs = []
        for i in (1, 2):
            off = s.log_size()
            p = run([SWAKS, "--server", "127.0.0.1", "--port", str(s.port), "--local-interface",
                     ip, "--from", "a@sender.test", "--to", "u@example.test", "--timeout", "10"],
                    timeout=60)
            check_eq(p.returncode, 0, "swaks run %d exit code:\n%s" % (i, p.stdout[-2000:]))
            outs.append(p.stdout)
            s.wait_log(r"\bPASS %s \[%s\]:\d+ worker=w\d+$" % ("NEW" if i == 1 else "OLD", esc(ip)),
                       since=off)
        check("<-  " + GREET_TEASER in outs[0], "first swaks saw no 220-:\n" + outs[0][:800])
        check("220-" not in outs[1], "second swaks saw a 220-:\n" + outs[1][:800])
    ip = "127.3.0.2"
    took = []
    for i in (1, 2):
        off = s.log_size()
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", s.port, local_hostname="smtplib.test", timeout=10,
                          source_address=(ip, 0)) as m:
            took.append(time.monotonic() - t0)
            check_eq(m.sendmail("a@sender.test", ["u@example.test"],
                                b"Subject: smtplib\r\n\r\nhi\r\n"), {}, "refused")
        s.wait_log(r"\bPASS %s \[%s\]:\d+ worker=w\d+$" % ("NEW" if i == 1 else "OLD", esc(ip)), since=off)
    check(took[0] >= 0.8 and took[1] < 0.5, "smtplib connect times %r" % took)
    if os.access(SMTP_SOURCE, os.X_OK):
        st, off = s.stats(), s.log_size()
        p = run([SMTP_SOURCE, "-m", "3", "-s", "1", "-f", "a@sender.test", "-t",
                 "u@example.test", "127.0.0.1:%d" % s.port], timeout=60)
        check_eq(p.returncode, 0, "smtp-source exit code: %s" % p.stderr[-1500:])
        after = s.stats()
        check_eq(delta(after, st, "messages_accepted"), 3, "messages_accepted from smtp-source")
        text = s.log_since(off)
        check_eq((len(re.findall(r"PASS NEW \[127\.0\.0\.1\]:\d+ worker=w\d+$", text, re.M)),
                  len(re.findall(r"PASS OLD \[127\.0\.0\.1\]:\d+ worker=w\d+$", text, re.M))), (1, 2),
                 "PASS NEW, PASS OLD of smtp-source's 3 connections")
        check_eq(delta(after, st, "screen_greet_waits"), 1, "greet waits of smtp-source")


# ---------------------------------------------------------------- client_access

ACCESS = """# client_access for test_screening
127.4.0.1 REJECT Go away now
127.4.0.2 OK
127.4.0.3 DUNNO
127.4.1.5 REJECT first match
127.4.1.0/24 OK
127.4.0.0/24 REJECT
"""


def access_denied(s, ip, text):
    """554 5.7.1 text instead of the 220, 503 to EHLO and MAIL, 221 to QUIT."""
    c = Client(s.port, greet=False, source=ip)
    try:
        check_eq(c.line(), "554 5.7.1 " + text, "first line to %s" % ip)
        for cmd in ("EHLO client.ringmx.test", "MAIL FROM:<a@sender.test>", "NOOP"):
            check_eq(c.cmd(cmd).lines, [ACCESS_503], "reply to %s" % cmd)
        check_eq(c.cmd("QUIT").lines, ["221 2.0.0 Bye"], "reply to QUIT")
        c.expect_closed()
    finally:
        c.close()
    port = c.local_port
    s.wait_log(r"\bDENYLISTED \[%s\]:%d worker=w\d+$" % (esc(ip), port))
    s.wait_log(r"NOQUEUE: reject: CONNECT from \[%s\]:%d: %s worker=w\d+$"
               % (esc(ip), port, re.escape("554 5.7.1 " + text)))
    return port


@T.test("client_access: REJECT with and without text (554 5.7.1, 503 5.5.1, 221), first match "
        "wins; OK: no greet wait, no DNS query though listed, ALLOWLISTED; DUNNO: screened; "
        "SIGHUP with an edited file applies to new connections; a broken one is refused")
def _():
    d = dns()
    with tempfile.TemporaryDirectory(prefix="ringmx-access-") as tmp:
        path = os.path.join(tmp, "client_access")
        with open(path, "w") as f:
            f.write(ACCESS)
        conf = ("client_access = %s\ngreet_wait = 1s\ndnsbl_sites = bl.test*3\n"
                "dns_servers = 127.0.0.1:%d\n" % (path, d.port))
        with Server(workers=2, config_text=conf) as s:
            st = s.stats()
            access_denied(s, "127.4.0.1", "Go away now")
            access_denied(s, "127.4.0.9", "Access denied")
            access_denied(s, "127.4.1.5", "first match")
            for ip in ("127.4.0.2", "127.4.1.6"):
                port = unscreened_session(s, ip, "allow-listed %s" % ip)
                s.wait_log(r"\bALLOWLISTED \[%s\]:%d worker=w\d+$" % (esc(ip), port))
                check_eq(len(d.queries(dnsbl_name(ip, "bl.test"))), 0, "queries for %s" % ip)
            # DUNNO ends the search (first match), so the /24 REJECT below it does not apply.
            ip = "127.4.0.3"
            c = Client(s.port, greet=False, source=ip)
            try:
                check_eq(c.line(), GREET_TEASER, "DUNNO: first line")
                check_eq(c.line(), GREETING, "DUNNO: final line")
                c.ehlo()
                c.cmd("MAIL FROM:<a@sender.test>").expect(250)
                check_eq(c.cmd("RCPT TO:<u@example.test>").lines, [blocked(550, ip, "bl.test")],
                         "DUNNO client listed on bl.test")
                c.quit()
            finally:
                c.close()
            check_counters(s, st, {"screen_access_reject": 3, "screen_access_ok": 2,
                                   "screen_dnsbl_listed": 1, "screen_greet_waits": 1})
            # 127.4.3.1 passes and is pass-cached; the access list comes first after SIGHUP.
            port, _t = accepted_session(s, "127.4.3.1")
            check(has_line(s, "127.4.3.1", port, "PASS NEW"), "127.4.3.1 PASS NEW")
            with open(path + ".new", "w") as f:
                f.write("127.4.3.1 REJECT Changed\n" + ACCESS)
            os.rename(path + ".new", path)
            off = s.log_size()
            s.signal(signal.SIGHUP)
            s.wait_log(r"configuration reloaded", since=off)
            access_denied(s, "127.4.3.1", "Changed")
            # A broken file: the reload is refused naming FILE:LINE, the old table stays.
            with open(path, "w") as f:
                f.write("127.4.3.2 REJECT\n127.4.3.3 MAYBE\n")
            off = s.log_size()
            s.signal(signal.SIGHUP)
            ln = s.wait_log(r"reload refused", since=off)[0]
            check("%s:2:" % path in ln, "refused reload does not name %s:2: %r" % (path, ln))
            access_denied(s, "127.4.3.1", "Changed")
            with s.client(source="127.4.3.2") as c:   # not in the kept table
                c.quit()


def start_fails(extra, path, want):
    """ringmxd exits non-zero with one output line that contains want."""
    for mode in (["-t"], ["--listen", "127.0.0.1:%d" % free_port(), "--workers", "1"]):
        p = run([ringmxd_path()] + mode + extra, timeout=30)
        lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
        check(p.returncode != 0, "exit code %d with %s (%s): %r"
              % (p.returncode, mode, path, lines))
        check_eq(len(lines), 1, "output lines with %s: %r" % (mode, lines))
        check(want in lines[0], "%r does not name %r" % (lines[0], want))


@T.test("a broken client_access file (an unknown action, host bits set, missing): ringmxd "
        "exits non-zero with one error naming the file and line, from -o and from the config")
def _():
    with tempfile.TemporaryDirectory(prefix="ringmx-access-bad-") as tmp:
        def table(name, text):
            p = os.path.join(tmp, name)
            with open(p, "w") as f:
                f.write(text)
            return p
        p = table("action", "# ok\n127.0.0.1 OK\n\n127.0.0.2 MAYBE\n")
        start_fails(["-o", "client_access=" + p], p, "%s:4:" % p)
        p = table("hostbits", "10.0.0.1/8 REJECT\n")
        start_fails(["-o", "client_access=" + p], p, "%s:1:" % p)
        conf = table("ringmxd.conf", "sink = discard\nclient_access = %s\n" % p)
        start_fails(["-c", conf], p, "%s:1:" % p)
        missing = os.path.join(tmp, "absent")
        start_fails(["-o", "client_access=" + missing], missing, missing)


def _stop_shared():
    for holder in (enforce, greet):
        s = holder["srv"]
        if s is not None:
            s.stop()
            s.tmpdir.cleanup()


T.test("shared servers: SIGTERM, exit 0, clean log")(_stop_shared)

T.main()
