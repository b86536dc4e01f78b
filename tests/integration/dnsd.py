#!/usr/bin/python3
"""dnsd - a small authoritative DNS server on loopback, for the screening tests.

Owned by the integration tests (tests/integration/); nothing in ringmxd depends on it.
Two halves in one file:

  * the server (`/usr/bin/python3 dnsd.py --port 0 --zone FILE --log FILE`), which
    needs Debian's python3-dnslib and so must run under Debian's /usr/bin/python3
    (the pyenv python3 on PATH has no dnslib);
  * DnsServer, query() and dnsbl_name(), Python 3 stdlib only, imported by the
    test scripts whatever python runs them. DnsServer runs the server as a child.

Why a server of our own rather than unbound or nsd: the tests need answers a real
resolver would never give on purpose (a name that is never answered, SERVFAIL on
demand, a zone changed between two queries) and a log of every query, to count
what ringmxd's answer cache saved.

Wire protocol over UDP and TCP on 127.0.0.1, and on ::1 when it can be bound, all on
one port (0: pick one; the port is printed as "port N" on stdout).

Zone file (JSON), re-read on SIGHUP (then "loaded SERIAL" is printed):

    {"serial": 1,
     "zones": ["bl.test", "wl.test"],
     "records": {"2.0.0.127.bl.test": {"A": ["127.0.0.2"], "ttl": 300},
                 "3.0.0.127.bl.test": {"rcode": "SERVFAIL"},
                 "4.0.0.127.bl.test": {"rcode": "REFUSED"},
                 "5.0.0.127.bl.test": {"drop": true},
                 "6.0.0.127.bl.test": {"A": ["127.0.0.2"], "delay": 1.5},
                 "7.0.0.127.bl.test": {"A": ["127.0.0.2"], "tc": true}}}

  - a listed name answers the records of the asked type (A, AAAA, TXT), each with
    "ttl" (default 300); a listed name without records of that type: NOERROR, no
    answer, the zone's SOA in the authority section (NODATA);
  - "rcode": any rcode by name, no answer; "drop": the query is never answered;
    "delay": seconds before the answer goes out; "tc": over UDP the answer is
    truncated (TC bit, no records), so the resolver retries over TCP;
  - a name under a zone that is not listed: NXDOMAIN, SOA in the authority section
    (its minimum, the negative TTL, is "neg_ttl" of the file, default 60);
  - a name outside every zone: REFUSED.

Every query, answered or not, is appended to the log file as one line
"qname qtype transport" (qname lower case without the final dot, transport udp or
tcp) before any answer is sent, so a test that got an answer can already count it.
"""

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# Stdlib only, and next to this file: importable under /usr/bin/python3 too.
from ringmx_harness import ipv6_available, stop_process

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
          "SRV": 33, "OPT": 41, "ANY": 255}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


# ---------------------------------------------------------------- helpers (stdlib)

def dnsbl_name(ip, site):
    """The DNSBL query name of ip under site: reversed octets for IPv4, 32 reversed
    nibbles for IPv6 (docs: screen-spec, 'DNSBL query names')."""
    if ":" in ip:
        hexa = socket.inet_pton(socket.AF_INET6, ip).hex()
        return ".".join(reversed(hexa)) + "." + site
    return ".".join(reversed(ip.split("."))) + "." + site


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def _skip_name(msg, off):
    """Offset just past the (possibly compressed) name at off, and the name."""
    labels, end = [], None
    for _ in range(128):
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            continue
        if n == 0:
            return (end if end is not None else off + 1), ".".join(labels)
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    raise ValueError("name compression loop")


class Answer:
    """A parsed response: rcode (name), tc, aa, answers and authority as
    (name, type name, ttl, rdata text)."""

    def __init__(self, msg):
        qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
        self.id = qid
        self.rcode = RCODES.get(flags & 0xF, str(flags & 0xF))
        self.tc = bool(flags & 0x0200)
        self.aa = bool(flags & 0x0400)
        off = 12
        for _ in range(qd):
            off, _n = _skip_name(msg, off)
            off += 4
        self.answers, self.authority = [], []
        for count, dest in ((an, self.answers), (ns, self.authority)):
            for _ in range(count):
                off, name = _skip_name(msg, off)
                rtype, _cls, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
                off += 10
                rdata = msg[off:off + rdlen]
                off += rdlen
                if rtype == 1:
                    text = socket.inet_ntop(socket.AF_INET, rdata)
                elif rtype == 28:
                    text = socket.inet_ntop(socket.AF_INET6, rdata)
                elif rtype == 16:
                    text = rdata[1:1 + rdata[0]].decode("utf-8", "replace")
                else:
                    text = rdata.hex()
                dest.append((name, QTYPE_NAMES.get(rtype, str(rtype)), ttl, text))

    def addresses(self):
        return [a[3] for a in self.answers if a[1] in ("A", "AAAA")]

    def __repr__(self):
        return "<Answer %s tc=%s an=%r ns=%r>" % (self.rcode, self.tc, self.answers,
                                                  self.authority)


def query(port, name, qtype="A", tcp=False, host="127.0.0.1", timeout=2.0):
    """One query to host:port over UDP (or TCP); returns an Answer. socket.timeout
    when nothing comes back within timeout."""
    qid = int.from_bytes(os.urandom(2), "big")
    msg = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _encode_name(name) + \
        struct.pack("!HH", QTYPES[qtype], 1)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if tcp:
            s.connect((host, port))
            s.sendall(struct.pack("!H", len(msg)) + msg)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                d = s.recv(65536)
                if not d:
                    raise ConnectionError("server closed the TCP connection")
                buf += d
            resp = buf[2:2 + struct.unpack("!H", buf[:2])[0]]
        else:
            s.sendto(msg, (host, port))
            while True:
                resp, _a = s.recvfrom(65536)
                if resp[:2] == msg[:2]:
                    break
    finally:
        s.close()
    return Answer(resp)


def guess_zone(name):
    """The zone a record name belongs to when the test names none: a DNSBL name
    without its address labels (decimal octets, hex nibbles), else the name without
    its first label; never fewer than two labels."""
    labels = name.lower().rstrip(".").split(".")
    i = 0
    while i < len(labels) - 2 and (labels[i].isdigit() or
                                   (len(labels[i]) == 1 and labels[i] in "0123456789abcdef")):
        i += 1
    if i == 0 and len(labels) > 2:
        i = 1
    return ".".join(labels[i:])


class DnsUnavailable(Exception):
    """python3-dnslib (or Debian's python3) is missing: the caller skips."""


def dnslib_available():
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import dnslib"], capture_output=True, timeout=30)
    return r.returncode == 0


class DnsServer:
    """dnsd as a child process for one test.

        with DnsServer({"2.0.0.127.bl.test": {"A": ["127.0.0.2"]}}, zones=["bl.test"]) as d:
            d.port; d.queries("2.0.0.127.bl.test"); d.set_zone({...})

    zones defaults to guess_zone() of every record name: for "2.0.0.127.bl.test",
    "bl.test"."""

    def __init__(self, records, zones=None, neg_ttl=60):
        self.records = dict(records)
        self.zones = list(zones) if zones is not None else None
        self.neg_ttl = neg_ttl
        self.serial = 0
        self.proc = None
        self.port = None
        self.ipv6 = False
        self._tmp = None
        self._cv = threading.Condition()
        self._loaded = 0
        self._out = []

    def _zones_for(self, records):
        if self.zones is not None:
            return self.zones
        return sorted({guess_zone(n) for n in records})

    def _write(self):
        self.serial += 1
        data = {"serial": self.serial, "zones": self._zones_for(self.records),
                "records": self.records, "neg_ttl": self.neg_ttl}
        tmp = self.zone_path + ".new"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.rename(tmp, self.zone_path)

    def start(self, timeout=10.0):
        if not dnslib_available():
            raise DnsUnavailable("python3-dnslib is not installed")
        self._tmp = tempfile.TemporaryDirectory(prefix="ringmx-dnsd-")
        self.zone_path = os.path.join(self._tmp.name, "zone.json")
        self.log_path = os.path.join(self._tmp.name, "queries.log")
        self.err_path = os.path.join(self._tmp.name, "dnsd.err")
        self._write()
        self._errf = open(self.err_path, "wb")
        self.proc = subprocess.Popen([SYSTEM_PYTHON, os.path.join(HERE, "dnsd.py"),
                                      "--port", "0", "--zone", self.zone_path,
                                      "--log", self.log_path],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._errf)
        threading.Thread(target=self._reader, daemon=True).start()
        with self._cv:
            ok = self._cv.wait_for(lambda: self.port is not None and self._loaded >= 1
                                   or self.proc.poll() is not None, timeout)
        if not ok or self.port is None:
            err = self.stderr()
            self.stop()
            raise RuntimeError("dnsd did not start: %s" % err[-2000:])
        return self

    def _reader(self):
        for raw in self.proc.stdout:
            ln = raw.decode("utf-8", "replace").strip()
            with self._cv:
                self._out.append(ln)
                if ln.startswith("port "):
                    self.port = int(ln.split()[1])
                elif ln.startswith("ipv6 "):
                    self.ipv6 = ln.split()[1] == "yes"
                elif ln.startswith("loaded "):
                    self._loaded = int(ln.split()[1])
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def stderr(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, AttributeError):
            return ""

    def set_zone(self, records, zones=None, timeout=10.0):
        """Replace the records (and zones), SIGHUP, wait until dnsd loaded them."""
        self.records = dict(records)
        if zones is not None:
            self.zones = list(zones)
        self._write()
        self.proc.send_signal(signal.SIGHUP)
        with self._cv:
            ok = self._cv.wait_for(lambda: self._loaded >= self.serial
                                   or self.proc.poll() is not None, timeout)
        if not ok or self._loaded < self.serial:
            raise RuntimeError("dnsd did not reload serial %d: %s" % (self.serial,
                                                                     self.stderr()[-2000:]))

    def queries(self, name=None, qtype=None):
        """Logged queries as (qname, qtype, transport), optionally only one name
        (any case, with or without the final dot) and type."""
        try:
            with open(self.log_path) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        text = text[:text.rfind("\n") + 1]
        out = []
        want = name.lower().rstrip(".") if name is not None else None
        for ln in text.splitlines():
            parts = ln.split()
            if len(parts) != 3:
                continue
            if want is not None and parts[0] != want:
                continue
            if qtype is not None and parts[1] != qtype:
                continue
            out.append(tuple(parts))
        return out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            self.proc.stdout.close()
            self._errf.close()
            self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        # `with DnsServer(...).start() as d:` must not start a second dnsd.
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# ---------------------------------------------------------------- the server (dnslib)

class Zone:
    """One loaded zone file: immutable once built, swapped whole on reload."""

    def __init__(self, data):
        self.serial = int(data.get("serial", 0))
        self.neg_ttl = int(data.get("neg_ttl", 60))
        self.zones = sorted((z.lower().rstrip(".") for z in data.get("zones", [])),
                            key=len, reverse=True)
        self.records = {k.lower().rstrip("."): v for k, v in data.get("records", {}).items()}

    def zone_of(self, qname):
        for z in self.zones:
            if qname == z or qname.endswith("." + z):
                return z
        return None


def load_zone(path):
    with open(path) as f:
        return Zone(json.load(f))


def _soa(dnslib, zone, neg_ttl):
    return dnslib.RR(zone + ".", dnslib.QTYPE.SOA, ttl=neg_ttl,
                     rdata=dnslib.SOA("ns." + zone + ".", "hostmaster." + zone + ".",
                                      (1, 3600, 600, 86400, neg_ttl)))


def answer(dnslib, zone, req, transport):
    """The reply to req (a DNSRecord) and its delay, or (None, 0) to drop it."""
    q = req.q
    qname = str(q.qname).lower().rstrip(".")
    qtype = dnslib.QTYPE.get(q.qtype)
    rep = req.reply(ra=False, aa=True)
    z = zone.zone_of(qname)
    if z is None:
        rep.header.aa = 0
        rep.header.rcode = dnslib.RCODE.REFUSED
        return rep, 0
    ent = zone.records.get(qname)
    if ent is None and qname == z:
        # The apex exists even with no records of its own: its SOA, or NODATA.
        if qtype in ("SOA", "ANY"):
            rep.add_answer(_soa(dnslib, z, zone.neg_ttl))
        else:
            rep.add_auth(_soa(dnslib, z, zone.neg_ttl))
        return rep, 0
    if ent is None:
        rep.header.rcode = dnslib.RCODE.NXDOMAIN
        rep.add_auth(_soa(dnslib, z, zone.neg_ttl))
        return rep, 0
    if ent.get("drop"):
        return None, 0
    delay = float(ent.get("delay", 0))
    if "rcode" in ent:
        rep.header.aa = 0
        rep.header.rcode = getattr(dnslib.RCODE, ent["rcode"].upper())
        return rep, delay
    if ent.get("tc") and transport == "udp":
        rep.header.tc = 1
        return rep, delay
    ttl = int(ent.get("ttl", 300))
    rdclass = {"A": dnslib.A, "AAAA": dnslib.AAAA, "TXT": dnslib.TXT}
    for t in ("A", "AAAA", "TXT") if qtype == "ANY" else (qtype,):
        for val in ent.get(t, []) if t in rdclass else []:
            rep.add_answer(dnslib.RR(q.qname, getattr(dnslib.QTYPE, t), ttl=ttl,
                                     rdata=rdclass[t](val)))
    if not rep.rr:
        rep.add_auth(_soa(dnslib, z, zone.neg_ttl))
    return rep, delay


def bind_all(port, want_v6):
    """UDP and TCP sockets on one port on 127.0.0.1 (and ::1); port 0 picks one that is
    free for all of them (retried: a picked UDP port may be taken for TCP)."""
    for _attempt in range(50):
        socks = []
        try:
            hosts = [(socket.AF_INET, "127.0.0.1")]
            if want_v6:
                hosts.append((socket.AF_INET6, "::1"))
            p = port
            for fam, host in hosts:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(fam, kind)
                    socks.append(s)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if kind == socket.SOCK_STREAM:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((host, p))
                    p = s.getsockname()[1]
                    if kind == socket.SOCK_STREAM:
                        s.listen(64)
                    s.setblocking(False)
            return p, socks
        except OSError:
            for s in socks:
                s.close()
            if port != 0:
                raise
    raise OSError("no port free for UDP and TCP on every loopback address")


def serve(argv):
    import heapq
    import selectors
    try:
        import dnslib
    except ImportError:
        print("dnsd: python3-dnslib is not installed", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="dnsd", description="authoritative DNS for tests")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--zone", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--no-ipv6", action="store_true")
    args = ap.parse_args(argv)

    zone = load_zone(args.zone)
    v6 = not args.no_ipv6 and ipv6_available()
    port, socks = bind_all(args.port, v6)
    logf = open(args.log, "a", buffering=1)
    hup = [False]
    stop = [False]

    def on_hup(_s, _f):
        hup[0] = True

    def on_term(_s, _f):
        stop[0] = True
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # A pipe the handlers' wake-up goes through, so select() returns at once.
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    os.set_blocking(rfd, False)
    signal.set_wakeup_fd(wfd)
    sel = selectors.DefaultSelector()
    sel.register(rfd, selectors.EVENT_READ, ("wake", None))
    for s in socks:
        sel.register(s, selectors.EVENT_READ, ("udp" if s.type == socket.SOCK_DGRAM
                                               else "listen", None))
    print("port %d" % port, flush=True)
    print("ipv6 %s" % ("yes" if v6 else "no"), flush=True)
    print("loaded %d" % zone.serial, flush=True)
    pending = []        # heap of (due, seq, kind, sock, data, addr): delayed answers
    seq = [0]           # tie-break of the heap: sockets do not compare
    tcpbuf = {}         # TCP socket -> bytes read and not yet a whole message

    def handle(data, transport):
        try:
            req = dnslib.DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - a malformed query gets no answer
            return None, 0
        if not req.questions:
            return None, 0
        qn = str(req.q.qname).lower().rstrip(".")
        logf.write("%s %s %s\n" % (qn or ".", dnslib.QTYPE.get(req.q.qtype), transport))
        rep, delay = answer(dnslib, zone, req, transport)
        return (rep.pack() if rep is not None else None), delay

    def emit(kind, sock, data, addr):
        try:
            if kind == "udp":
                sock.sendto(data, addr)
            elif sock.fileno() >= 0:
                sock.setblocking(True)
                sock.settimeout(2)
                sock.sendall(struct.pack("!H", len(data)) + data)
                sock.setblocking(False)
        except OSError:
            pass

    def reply(kind, sock, data, addr, delay):
        if delay > 0:
            seq[0] += 1
            heapq.heappush(pending, (time.monotonic() + delay, seq[0], kind, sock, data, addr))
        else:
            emit(kind, sock, data, addr)

    parent = os.getppid()
    while not stop[0]:
        # A test that dies without stopping dnsd must not leave it behind: it is
        # re-parented, and dnsd notices within a second.
        if os.getppid() != parent:
            break
        timeout = 1.0
        if pending:
            timeout = min(timeout, max(0.0, pending[0][0] - time.monotonic()))
        for key, _ev in sel.select(timeout):
            kind = key.data[0]
            s = key.fileobj
            if kind == "wake":
                try:
                    os.read(rfd, 512)
                except BlockingIOError:
                    pass
            elif kind == "udp":
                try:
                    data, addr = s.recvfrom(65535)
                except OSError:
                    continue
                rep, delay = handle(data, "udp")
                if rep is not None:
                    reply("udp", s, rep, addr, delay)
            elif kind == "listen":
                try:
                    c, _a = s.accept()
                except OSError:
                    continue
                c.setblocking(False)
                tcpbuf[c] = b""
                sel.register(c, selectors.EVENT_READ, ("tcp", None))
            elif kind == "tcp":
                try:
                    d = s.recv(65535)
                except BlockingIOError:
                    continue
                except OSError:
                    d = b""
                if not d:
                    sel.unregister(s)
                    tcpbuf.pop(s, None)
                    s.close()
                    continue
                buf = tcpbuf[s] + d
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                    n = struct.unpack("!H", buf[:2])[0]
                    msg, buf = buf[2:2 + n], buf[2 + n:]
                    rep, delay = handle(msg, "tcp")
                    if rep is not None:
                        reply("tcp", s, rep, None, delay)
                tcpbuf[s] = buf
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _due, _n, kind, s, data, addr = heapq.heappop(pending)
            emit(kind, s, data, addr)
        if hup[0]:
            hup[0] = False
            try:
                zone = load_zone(args.zone)
                print("loaded %d" % zone.serial, flush=True)
            except (OSError, ValueError) as e:
                print("dnsd: reload failed, keeping the old zone: %s" % e, file=sys.stderr,
                      flush=True)
    for s in socks:
        s.close()
    logf.close()
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
