#!/usr/bin/env python3
"""tests/integration/test_dnsd.py - self-tests of the loopback DNS server in dnsd.py.

No ringmxd here: dnsd (run by DnsServer under Debian's /usr/bin/python3 with
python3-dnslib) is queried with dnsd.query(), a stdlib client on raw UDP and TCP
sockets, so that test_screening.py can trust what it serves and what its query log
counts. Skips (exit 77) when python3-dnslib is not installed. Ends with
"N passed, M failed". Well under 30 s.

    PYTHONPATH=tests/integration python3 tests/integration/test_dnsd.py
"""
import os
import signal
import socket
import subprocess
import tempfile
import time
import json

from ringmx_harness import Suite, Skip, check, check_eq, ipv6_available
import dnsd
from dnsd import DnsServer, DnsUnavailable, query, dnsbl_name

T = Suite(__file__)

ZONE = {
    "2.0.0.127.bl.test": {"A": ["127.0.0.2"], "ttl": 7},
    "3.0.0.127.bl.test": {"A": ["127.0.0.2", "127.0.0.4"], "TXT": ["listed"], "ttl": 123},
    "4.0.0.127.bl.test": {"rcode": "SERVFAIL"},
    "5.0.0.127.bl.test": {"rcode": "REFUSED"},
    "6.0.0.127.bl.test": {"drop": True},
    "7.0.0.127.bl.test": {"A": ["127.0.0.3"], "delay": 0.6},
    "8.0.0.127.bl.test": {"A": ["127.0.0.5"], "tc": True},
    dnsbl_name("::1", "bl.test"): {"A": ["127.0.0.2"], "ttl": 30},
    "ok.wl.test": {"A": ["127.0.0.1"]},
}


def server():
    try:
        return DnsServer(ZONE).start()
    except DnsUnavailable as e:
        raise Skip(str(e))


@T.test("dnsbl_name: reversed octets for IPv4, 32 reversed nibbles for IPv6")
def _():
    check_eq(dnsbl_name("127.0.0.2", "bl.test"), "2.0.0.127.bl.test", "IPv4")
    check_eq(dnsbl_name("2001:db8::1", "bl.test"),
             "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.bl.test", "IPv6")
    check_eq(len(dnsbl_name("::1", "x").split(".")), 33, "nibble labels")
    check_eq(dnsd.guess_zone("2.0.0.127.bl.test"), "bl.test", "zone of a DNSBL name")
    check_eq(dnsd.guess_zone(dnsbl_name("::1", "bl.test")), "bl.test", "IPv6 DNSBL name")
    check_eq(dnsd.guess_zone("ok.wl.test"), "wl.test", "zone of a plain name")


@T.test("A over UDP: the records with their TTL, AA set, the name echoed as asked; two "
        "records and a TXT; the query is logged as 'qname qtype udp'")
def _():
    with server() as d:
        a = query(d.port, "2.0.0.127.bl.test")
        check_eq((a.rcode, a.aa, a.tc), ("NOERROR", True, False), "header")
        check_eq(a.answers, [("2.0.0.127.bl.test", "A", 7, "127.0.0.2")], "answer")
        a = query(d.port, "3.0.0.127.BL.Test")
        check_eq(sorted(a.addresses()), ["127.0.0.2", "127.0.0.4"], "two A")
        check_eq({x[2] for x in a.answers}, {123}, "TTLs")
        check_eq(a.answers[0][0], "3.0.0.127.BL.Test", "question case echoed")
        t = query(d.port, "3.0.0.127.bl.test", "TXT")
        check_eq([x[1:] for x in t.answers], [("TXT", 123, "listed")], "TXT")
        check_eq(d.queries("2.0.0.127.bl.test"), [("2.0.0.127.bl.test", "A", "udp")], "log")
        check_eq(d.queries("3.0.0.127.bl.test"), [("3.0.0.127.bl.test", "A", "udp"),
                                                  ("3.0.0.127.bl.test", "TXT", "udp")],
                 "log, lower case")
        check_eq(len(d.queries()), 3, "all queries")


@T.test("NXDOMAIN with the zone's SOA (negative TTL 60) in authority; NODATA for a listed "
        "name and another type; a name outside every zone: REFUSED, nothing in authority")
def _():
    with server() as d:
        a = query(d.port, "9.0.0.127.bl.test")
        check_eq(a.rcode, "NXDOMAIN", "rcode")
        check_eq(a.answers, [], "answers")
        check_eq([(x[0], x[1], x[2]) for x in a.authority], [("bl.test", "SOA", 60)], "SOA")
        a = query(d.port, "2.0.0.127.bl.test", "AAAA")
        check_eq((a.rcode, a.answers, [x[1] for x in a.authority]), ("NOERROR", [], ["SOA"]),
                 "NODATA")
        a = query(d.port, "www.example.org")
        check_eq((a.rcode, a.aa, a.authority), ("REFUSED", False, []), "out of zone")
        check_eq(d.queries("www.example.org"), [("www.example.org", "A", "udp")], "logged")


@T.test("rcode entries: SERVFAIL and REFUSED, no answer")
def _():
    with server() as d:
        check_eq(query(d.port, "4.0.0.127.bl.test").rcode, "SERVFAIL", "SERVFAIL")
        check_eq(query(d.port, "5.0.0.127.bl.test").rcode, "REFUSED", "REFUSED")
        check_eq(query(d.port, "4.0.0.127.bl.test", tcp=True).rcode, "SERVFAIL", "over TCP")


@T.test("drop: never answered over UDP or TCP (1 s timeouts), but logged; the server "
        "still answers the next query at once")
def _():
    with server() as d:
        for tcp in (False, True):
            t0 = time.monotonic()
            try:
                query(d.port, "6.0.0.127.bl.test", tcp=tcp, timeout=1.0)
                check(False, "a drop entry was answered (tcp=%s)" % tcp)
            except socket.timeout:
                pass
            check(time.monotonic() - t0 >= 0.9, "timed out early")
        check_eq(d.queries("6.0.0.127.bl.test"), [("6.0.0.127.bl.test", "A", "udp"),
                                                  ("6.0.0.127.bl.test", "A", "tcp")], "log")
        t0 = time.monotonic()
        check_eq(query(d.port, "2.0.0.127.bl.test").addresses(), ["127.0.0.2"], "next")
        check(time.monotonic() - t0 < 0.5, "next query slow")


@T.test("delay 0.6 s: the answer comes after >= 0.55 s while other queries are answered "
        "meanwhile (UDP and TCP)")
def _():
    import threading
    with server() as d:
        for tcp in (False, True):
            got = {}

            def slow():
                t0 = time.monotonic()
                got["a"] = query(d.port, "7.0.0.127.bl.test", tcp=tcp)
                got["t"] = time.monotonic() - t0
            th = threading.Thread(target=slow)
            th.start()
            time.sleep(0.1)
            t0 = time.monotonic()
            query(d.port, "2.0.0.127.bl.test", tcp=tcp)
            fast = time.monotonic() - t0
            th.join(5)
            check_eq(got["a"].addresses(), ["127.0.0.3"], "delayed answer")
            check(0.55 <= got["t"] < 2.0, "delay %.2f s (tcp=%s)" % (got["t"], tcp))
            check(fast < 0.3, "the other query waited %.2f s behind the delayed one" % fast)


@T.test("TCP: A answer, two queries on one connection, and a tc entry truncated over UDP "
        "(TC, no records) but whole over TCP")
def _():
    import struct
    with server() as d:
        a = query(d.port, "2.0.0.127.bl.test", tcp=True)
        check_eq(a.answers, [("2.0.0.127.bl.test", "A", 7, "127.0.0.2")], "TCP answer")
        a = query(d.port, "8.0.0.127.bl.test")
        check_eq((a.tc, a.answers), (True, []), "UDP truncated")
        a = query(d.port, "8.0.0.127.bl.test", tcp=True)
        check_eq((a.tc, a.addresses()), (False, ["127.0.0.5"]), "TCP whole")
        # Two length-prefixed queries in one write, two answers on one connection.
        msgs = b""
        for i, name in enumerate(("2.0.0.127.bl.test", "9.0.0.127.bl.test")):
            m = struct.pack("!HHHHHH", 100 + i, 0x0100, 1, 0, 0, 0) + \
                dnsd._encode_name(name) + struct.pack("!HH", 1, 1)
            msgs += struct.pack("!H", len(m)) + m
        s = socket.create_connection(("127.0.0.1", d.port), timeout=3)
        s.sendall(msgs)
        buf, out = b"", []
        while len(out) < 2:
            buf += s.recv(4096)
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                out.append(dnsd.Answer(buf[2:2 + n]))
                buf = buf[2 + n:]
        s.close()
        check_eq([(x.id, x.rcode) for x in out], [(100, "NOERROR"), (101, "NXDOMAIN")],
                 "two answers")
        check_eq([q[2] for q in d.queries()].count("tcp"), 4, "TCP queries logged")


@T.test("IPv6: the same port on ::1, UDP and TCP; the nibble name of ::1 is listed")
def _():
    if not ipv6_available():
        raise Skip("no IPv6 loopback")
    with server() as d:
        check(d.ipv6, "dnsd did not bind ::1")
        name = dnsbl_name("::1", "bl.test")
        for tcp in (False, True):
            a = query(d.port, name, host="::1", tcp=tcp)
            check_eq(a.answers, [(name, "A", 30, "127.0.0.2")], "answer (tcp=%s)" % tcp)


@T.test("set_zone: the new records answer at once after it returns (SIGHUP, reload "
        "reported); a record removed is NXDOMAIN, a TTL changed; a broken file keeps "
        "the old zone")
def _():
    with server() as d:
        check_eq(query(d.port, "2.0.0.127.bl.test").answers[0][2], 7, "TTL before")
        z = dict(ZONE)
        z["2.0.0.127.bl.test"] = {"A": ["127.0.0.10"], "ttl": 2}
        del z["3.0.0.127.bl.test"]
        z["9.0.0.127.bl.test"] = {"A": ["127.0.0.11"]}
        d.set_zone(z)
        check_eq(query(d.port, "2.0.0.127.bl.test").answers,
                 [("2.0.0.127.bl.test", "A", 2, "127.0.0.10")], "changed")
        check_eq(query(d.port, "3.0.0.127.bl.test").rcode, "NXDOMAIN", "removed")
        check_eq(query(d.port, "9.0.0.127.bl.test").addresses(), ["127.0.0.11"], "added")
        with open(d.zone_path, "w") as f:
            f.write("{not json")
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reload failed" not in d.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        check("reload failed, keeping the old zone" in d.stderr(), d.stderr())
        check_eq(query(d.port, "9.0.0.127.bl.test").addresses(), ["127.0.0.11"], "old kept")
        check(d.alive(), "dnsd died on a broken zone file")


@T.test("explicit zones: a name under a zone with no records is NXDOMAIN, another zone "
        "is REFUSED")
def _():
    try:
        d = DnsServer({}, zones=["empty.test"]).start()
    except DnsUnavailable as e:
        raise Skip(str(e))
    with d:
        check_eq(query(d.port, "2.0.0.127.empty.test").rcode, "NXDOMAIN", "in zone")
        check_eq(query(d.port, "empty.test", "SOA").rcode, "NOERROR", "apex")
        check_eq(query(d.port, "2.0.0.127.bl.test").rcode, "REFUSED", "other zone")


@T.test("command line: --port 0 prints 'port N', SIGTERM exits 0; without dnslib the "
        "server says so and exits 2")
def _():
    if not dnsd.dnslib_available():
        raise Skip("python3-dnslib is not installed")
    with tempfile.TemporaryDirectory(prefix="ringmx-dnsd-cli-") as tmp:
        zp, lp = os.path.join(tmp, "z.json"), os.path.join(tmp, "q.log")
        with open(zp, "w") as f:
            json.dump({"zones": ["cli.test"], "records": {"a.cli.test": {"A": ["10.0.0.1"]}}},
                      f)
        p = subprocess.Popen([dnsd.SYSTEM_PYTHON, os.path.join(dnsd.HERE, "dnsd.py"),
                              "--port", "0", "--zone", zp, "--log", lp],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = p.stdout.readline().split()
            check_eq(first[0], "port", "first line")
            port = int(first[1])
            check_eq(query(port, "a.cli.test").addresses(), ["10.0.0.1"], "answer")
            with open(lp) as f:
                check_eq(f.read(), "a.cli.test A udp\n", "log file")
        finally:
            p.terminate()
            rc = p.wait(5)
            p.stdout.close()
            p.stderr.close()
        check_eq(rc, 0, "exit code after SIGTERM")
    # A python with no dnslib (-S: no site-packages, so no dist-packages) gets the message.
    r = subprocess.run([dnsd.SYSTEM_PYTHON, "-S", os.path.join(dnsd.HERE, "dnsd.py"),
                        "--zone", "/nonexistent", "--log", "/dev/null"],
                       capture_output=True, text=True, timeout=20)
    check_eq((r.returncode, r.stderr.strip()), (2, "dnsd: python3-dnslib is not installed"),
             "without dnslib")


T.main(needs_ringmxd=False)
