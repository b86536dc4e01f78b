#!/usr/bin/env python3
"""PROXY protocol on a `proxy=yes` listener: raw v1/v2 headers, LOCAL,
malformed headers, missing headers, untrusted peers, and a real HAProxy
(Debian's haproxy, send-proxy-v2 and send-proxy) in front of ringmxd.

*** PENDING INTEGRATION ***
Written together with engine/conn/proxy.c, before the connection code calls the
parser. It is EXPECTED TO FAIL until proxy_parse() is wired into
engine/conn/conn.c (contract: include/ringmx/proxy.h), and is therefore not yet
listed in tests/meson.build's integration_tests. Register it then with:
    'test_proxy_haproxy.py',

Owner: the PROXY protocol module. Python 3 stdlib only; loopback only.
Exit 77 (skip) only if nothing ran; the HAProxy checks skip on their own
when the haproxy binary is missing (tools/lib.sh PKGS_TEST installs it).
"""

import os
import shutil
import smtplib
import socket
import struct
import subprocess
import tempfile
import time
from email.message import EmailMessage

from ringmx_harness import (TIMEOUT, Client, Closed, Server, Skip, Suite, check, check_eq,
                            fail, free_port, wait_for, stop_process)

T = Suite(__file__)

PORT = free_port()
srv = T.shared(listen=(), port=PORT,
               args=["--listen", "127.0.0.1:%d proxy=yes" % PORT])

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


# ---------------------------------------------------------------- headers

def v1(src, dst, sport, dport, fam="TCP4"):
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def _crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def tlv(t, value):
    return struct.pack("!BH", t, len(value)) + value


def v2(cmd=1, fam=0x11, src=None, dst=None, sport=0, dport=0, tlvs=b"", crc=False,
       length=None):
    """A v2 header. cmd 1 PROXY / 0 LOCAL; fam 0x11 TCP4, 0x21 TCP6, 0x00."""
    if fam == 0x11:
        addr = (socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
                + struct.pack("!HH", sport, dport))
    elif fam == 0x21:
        addr = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!HH", sport, dport))
    else:
        addr = b""
    if crc:
        tlvs += tlv(0x03, b"\0\0\0\0")
    body = addr + tlvs
    n = len(body) if length is None else length
    hdr = V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", n) + body
    if crc:
        hdr = hdr[:-4] + struct.pack("!I", _crc32c(hdr))
    return hdr


# ---------------------------------------------------------------- helpers

def proxied_session(s, header, client_port, extra=b""):
    """Send header (+extra) first, then a whole transaction; returns the
    message log lines of the session, keyed by the port the server should
    log (the header's source port, or the real one)."""
    with Client(s.port, greet=False) as c:
        c.send(header + extra)
        c.reply().expect(220)
        if extra:
            c.reply().expect(250)  # the pipelined EHLO was kept, not dropped
        else:
            c.ehlo()
        c.transaction()
        c.quit()
        real = c.local_port
    s.wait_disconnect(client_port if client_port is not None else real)
    lines = s.message_lines(client_port if client_port is not None else real)
    check(lines, "no message log line for port %r; log tail:\n%s"
          % (client_port, s.log()[-2000:]))
    return lines, real


def after_header(c):
    """The greeting the header released, then a whole transaction."""
    c.reply().expect(220)
    c.ehlo()
    c.transaction()
    c.quit()


def dropped(s, data, what):
    """data (possibly empty) is sent; the server must close without a byte."""
    with Client(s.port, greet=False) as c:
        if data:
            try:
                c.send(data)
            except OSError:
                return  # already closed: fine, nothing was said
        try:
            c.expect_closed()
        except Closed:
            pass
        except AssertionError as e:
            fail("%s: %s" % (what, e))


# ---------------------------------------------------------------- (a) headers

@T.test("v1 TCP4 header: client=[header source]:port in the message log")
def _():
    s = srv()
    lines, _ = proxied_session(s, v1("192.0.2.10", "127.0.0.1", 40001, PORT), 40001)
    check("client=[192.0.2.10]:40001" in lines[0], "line: %r" % lines[0])
    check("status=queued" in lines[0], "line: %r" % lines[0])


@T.test("v1 TCP6 header: client=[IPv6:...]:port")
def _():
    s = srv()
    lines, _ = proxied_session(s, v1("2001:db8::10", "::1", 40002, PORT, "TCP6"), 40002)
    check("client=[IPv6:2001:db8::10]:40002" in lines[0], "line: %r" % lines[0])


@T.test("v2 TCP4 and TCP6 headers, with ALPN/AUTHORITY/NOOP/unknown TLVs and CRC32C")
def _():
    s = srv()
    tl = tlv(0x01, b"smtp") + tlv(0x02, b"mx.example.test") + tlv(0x04, b"\0\0") + \
        tlv(0xE0, b"custom")
    lines, _ = proxied_session(s, v2(1, 0x11, "198.51.100.7", "127.0.0.1", 40003, PORT,
                                     tlvs=tl, crc=True), 40003)
    check("client=[198.51.100.7]:40003" in lines[0], "line: %r" % lines[0])
    lines, _ = proxied_session(s, v2(1, 0x21, "2001:db8::7", "::1", 40004, PORT), 40004)
    check("client=[IPv6:2001:db8::7]:40004" in lines[0], "line: %r" % lines[0])


@T.test("bytes pipelined behind the header (EHLO in the same write) are kept")
def _():
    s = srv()
    lines, _ = proxied_session(s, v1("192.0.2.11", "127.0.0.1", 40005, PORT), 40005,
                               extra=b"EHLO pipelined.test\r\n")
    check("client=[192.0.2.11]:40005" in lines[0], "line: %r" % lines[0])


@T.test("a header split over several writes is reassembled")
def _():
    s = srv()
    hdr = v2(1, 0x11, "192.0.2.12", "127.0.0.1", 40006, PORT, tlvs=tlv(0x04, b"x" * 300))
    with Client(s.port, greet=False) as c:
        for i in range(0, len(hdr), 7):
            c.send(hdr[i:i + 7])
            time.sleep(0.002)
        after_header(c)
    s.wait_disconnect(40006)
    check(s.message_lines(40006), "no message line for 40006")


# ---------------------------------------------------------------- (b) LOCAL / UNKNOWN

@T.test("v2 LOCAL (health check): the real peer is used")
def _():
    s = srv()
    lines, real = proxied_session(s, v2(0, 0x00), None)
    check("client=[127.0.0.1]:%d" % real in lines[0], "line: %r" % lines[0])


@T.test("v1 UNKNOWN and v2 PROXY UNSPEC: the real peer is used")
def _():
    s = srv()
    for hdr in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ignored stuff\r\n", v2(1, 0x00)):
        lines, real = proxied_session(s, hdr, None)
        check("client=[127.0.0.1]:%d" % real in lines[0], "%r: line %r" % (hdr, lines[0]))


# ---------------------------------------------------------------- (c) malformed

MALFORMED = [
    ("bad v2 signature", b"\r\n\r\n\x00\r\nQUIT\x0b" + b"\x21\x11\x00\x0c" + b"\0" * 12),
    ("v2 version 1", V2_SIG + b"\x11\x11\x00\x0c" + b"\0" * 12),
    ("v2 command 2", V2_SIG + b"\x22\x11\x00\x0c" + b"\0" * 12),
    ("v2 UDP family", V2_SIG + b"\x21\x12\x00\x0c" + b"\0" * 12),
    ("v2 UNIX family", V2_SIG + b"\x21\x31\x00\xd8" + b"\0" * 216),
    ("v2 length shorter than TCP4 addresses",
     v2(1, 0x11, "192.0.2.1", "127.0.0.1", 1, 2, length=11)[:16 + 11]),
    ("v2 TLV overrun", v2(1, 0x11, "192.0.2.1", "127.0.0.1", 1, 2,
                          tlvs=b"\x04\x00\x09abc")),
    ("v2 bad CRC32C", v2(1, 0x11, "192.0.2.1", "127.0.0.1", 1, 2,
                         tlvs=tlv(0x03, b"\1\2\3\4"))),
    ("v2 header over 4096 bytes", V2_SIG + b"\x21\x11\x10\x00" + b"\0" * 64),
    ("v1 without CRLF within 107 bytes", b"PROXY UNKNOWN " + b"x" * 120),
    ("v1 trailing garbage", b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2 junk\r\n"),
    ("v1 bare LF", b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n"),
    ("v1 IPv6 in TCP4", b"PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n"),
    ("v1 port 65536", b"PROXY TCP4 192.0.2.1 127.0.0.1 65536 2\r\n"),
    ("v1 leading zero port", b"PROXY TCP4 192.0.2.1 127.0.0.1 01 2\r\n"),
    ("v1 double space", b"PROXY TCP4  192.0.2.1 127.0.0.1 1 2\r\n"),
    ("v1 lower case", b"proxy TCP4 192.0.2.1 127.0.0.1 1 2\r\n"),
]


@T.test("malformed headers: closed without any SMTP reply")
def _():
    s = srv()
    for what, data in MALFORMED:
        dropped(s, data, what)


# ---------------------------------------------------------------- (d) no header

@T.test("no header on a proxy listener: no greeting, and SMTP first is dropped")
def _():
    s = srv()
    # The server must not speak first: it waits for the header.
    with Client(s.port, greet=False) as c:
        c.sock.settimeout(0.5)
        try:
            d = c.sock.recv(100)
            fail("server spoke before the PROXY header: %r" % d)
        except socket.timeout:
            pass
    dropped(s, b"EHLO client.test\r\n", "EHLO without header")
    dropped(s, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "TLS ClientHello")


@T.test("counters: proxy_headers_v1/v2, proxy_local, proxy_bad")
def _():
    s = srv()
    st = s.stats()
    check(st.get("proxy_headers_v1", 0) >= 5, "proxy_headers_v1: %r" % st)
    check(st.get("proxy_headers_v2", 0) >= 5, "proxy_headers_v2: %r" % st)
    check(st.get("proxy_local", 0) >= 1, "proxy_local: %r" % st)
    check(st.get("proxy_bad", 0) >= len(MALFORMED) + 2, "proxy_bad: %r" % st)


@T.test("untrusted peer (proxy_trusted excludes 127.0.0.1): dropped and counted")
def _():
    port = free_port()
    with Server(listen=(), port=port, args=["--listen", "127.0.0.1:%d proxy=yes" % port,
                                            "-o", "proxy_trusted=192.0.2.0/24, ::1"]) as s:
        dropped(s, v1("192.0.2.1", "127.0.0.1", 1, port), "untrusted v1")
        st = s.stats()
        check_eq(st.get("proxy_untrusted", 0), 1, "proxy_untrusted")
        check_eq(st.get("proxy_headers_v1", 0), 0, "proxy_headers_v1")


@T.test("a normal listener does not take PROXY headers")
def _():
    with Server() as s, Client(s.port) as c:
        r = c.cmd("PROXY TCP4 192.0.2.1 127.0.0.1 1 2")
        check(500 <= r.code < 600, "PROXY on a normal listener got %r" % r)


def small_pool_server(*extra):
    """One worker with a 16-buffer pool of 4 KiB, a plain listener (.port)
    and a proxy=yes one (returned); not started."""
    port, pport = free_port(), free_port()
    return Server(listen=(), port=port, workers=1,
                  args=["--listen", "127.0.0.1:%d" % port,
                        "--listen", "127.0.0.1:%d proxy=yes" % pport,
                        "-o", "recv_buffers=16", "-o", "recv_buffer_size=4096"]
                  + list(extra)), pport


@T.test("a header that arrives while the buffer pool is empty is read once buffers return")
def _():
    # Four clients that never read pin the whole 16-buffer pool, so the
    # PROXY connection's receive ends with ENOBUFS; it must be re-armed
    # when the pool refills (it once waited for greeting_timeout instead).
    # The hogs pipeline EHLOs, junk after the first: junk_limit must not
    # close them before they pin the pool.
    s, pport = small_pool_server("-o", "greeting_timeout=30s", "-o", "junk_limit=1000000")
    with s:
        hogs = []
        for _i in range(4):
            h = socket.socket()
            h.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            h.connect(("127.0.0.1", s.port))
            h.setblocking(False)
            hogs.append(h)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            for h in hogs:
                try:
                    h.send(b"EHLO x\r\n" * 512)
                except BlockingIOError:
                    pass
                except (ConnectionResetError, BrokenPipeError):
                    # Cut off by design: a client that pins buffers and does not
                    # read its replies while others wait for buffers is closed
                    # after 100 ms (recv_stall_cutoffs, docs/defences.md). Its
                    # buffers go back then, which is what the check below waits for.
                    pass
            time.sleep(0.01)
        c = socket.create_connection(("127.0.0.1", pport), timeout=TIMEOUT)
        time.sleep(0.3)
        c.sendall(v1("192.0.2.1", "192.0.2.2", 1234, 25))
        for h in hogs:   # reset: their buffers go back to the pool
            h.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close()
        t1 = time.monotonic()
        r = c.recv(512)
        check(r.startswith(b"220 "), "greeting after the pool refilled: %r" % r)
        check(time.monotonic() - t1 < 5, "greeting took %.1fs" % (time.monotonic() - t1))
        c.close()
        # The pool did run dry: the case this check is about happened.
        check(s.stats().get("recv_enobufs", 0) > 0, "no receive ever found the pool empty")


@T.test("proxy_timeout: half a PROXY v1 line and nothing more is closed after ~1s, "
        "without a reply; logged and counted")
def _():
    port = free_port()
    with Server(listen=(), port=port, workers=1,
                args=["--listen", "127.0.0.1:%d proxy=yes" % port,
                      "-o", "proxy_timeout=1s", "-o", "greeting_timeout=300s"]) as s:
        with Client(s.port, greet=False) as c:
            c.send(b"PROXY TCP4 192.0.2.1 ")
            t0 = time.monotonic()
            c.sock.settimeout(6)
            try:
                d = c.sock.recv(100)
            except socket.timeout:
                fail("still open 6s after half a PROXY header (proxy_timeout=1s)")
            except ConnectionResetError:
                d = b""
            took = time.monotonic() - t0
            check_eq(d, b"", "bytes before the close")
            check(0.7 <= took <= 3.0, "closed after %.2fs, want ~1s" % took)
        s.wait_log(r"no complete PROXY header from \[127\.0\.0\.1\]:\d+ on .* within "
                   r"proxy_timeout \(1s\); closing")
        st = s.stats()
        check_eq(st.get("proxy_timeout"), 1, "proxy_timeout counter")
        # A prompt header on the same listener still works.
        lines, _ = proxied_session(s, v1("192.0.2.20", "127.0.0.1", 40020, port), 40020)
        check("client=[192.0.2.20]:40020" in lines[0], "line: %r" % lines[0])


@T.test("a PROXY header trickled one byte per packet pins one receive buffer, not one "
        "per packet: other clients keep being served, and the header still completes")
def _():
    # 16 buffers of 4 KiB. Held one per packet, 60 packets of a header
    # would empty the pool and stall every other client on the worker.
    s, pport = small_pool_server("-o", "proxy_timeout=60s")
    with s:
        hdr = v2(1, 0x11, "192.0.2.21", "127.0.0.1", 40021, pport,
                 tlvs=tlv(0x04, b"a" * 200))
        with Client(pport, greet=False) as t:
            t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(60):
                t.send(hdr[i:i + 1])
                time.sleep(0.01)
            with Client(s.port) as c:   # a plain client on the same worker
                c.ehlo()
                c.transaction()
                c.quit()
            t.send(hdr[60:])
            after_header(t)
        s.wait_disconnect(40021)
        check(s.message_lines(40021), "no message line for the trickled header's client")


# ---------------------------------------------------------------- (e) HAProxy

def haproxy_bin():
    p = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        raise Skip("haproxy is not installed (apt-get install haproxy)")
    return p


class HAProxy:
    """haproxy -db in the foreground: frontend on a free loopback port,
    one backend server = ringmxd with the given server options."""

    def __init__(self, backend_port, server_opts):
        self.front = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="ringmx-haproxy-")
        self.cfg = os.path.join(self.dir.name, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write("global\n    maxconn 256\n\n"
                    "defaults\n    mode tcp\n    timeout connect 5s\n"
                    "    timeout client 30s\n    timeout server 30s\n\n"
                    "frontend smtp\n    bind 127.0.0.1:%d\n    default_backend mx\n\n"
                    "backend mx\n"
                    # An SMTP health check waits for the banner. A bare TCP
                    # check resets right after its PROXY LOCAL header, before
                    # ringmxd can even look at the peer (then it is dropped).
                    "    option tcp-check\n    tcp-check expect rstring ^220\n"
                    "    server mx 127.0.0.1:%d %s\n"
                    % (self.front, backend_port, server_opts))
        self.log = os.path.join(self.dir.name, "haproxy.log")
        self.proc = None

    def __enter__(self):
        with open(self.log, "wb") as lf:
            self.proc = subprocess.Popen([haproxy_bin(), "-f", self.cfg, "-db"],
                                         stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)

        def up():
            if self.proc.poll() is not None:
                fail("haproxy exited with %d: %s" % (self.proc.returncode, self.text()))
            try:
                socket.create_connection(("127.0.0.1", self.front), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, what="haproxy listening on %d" % self.front)
        return self

    def text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def __exit__(self, *exc):
        try:
            stop_process(self.proc)
        finally:
            self.dir.cleanup()
        return False


def send_through(s, hp):
    """One message with smtplib through HAProxy; returns the client's port."""
    m = EmailMessage()
    m["From"] = "alice@sender.test"
    m["To"] = "u@example.test"
    m["Subject"] = "through haproxy"
    m.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", hp.front, local_hostname="smtplib.test",
                      timeout=TIMEOUT, source_address=("127.0.0.1", 0)) as c:
        cport = c.sock.getsockname()[1]
        check_eq(c.send_message(m), {}, "refused recipients")
        check_eq(c.quit()[0], 221, "QUIT")
    s.wait_disconnect(cport)
    return cport


@T.test("HAProxy send-proxy-v2 (+ crc32c, LOCAL health checks): client's real port logged")
def _():
    haproxy_bin()
    s = srv()
    before = s.stats().get("proxy_local", 0)
    with HAProxy(s.port, "send-proxy-v2 proxy-v2-options crc32c "
                         "check check-send-proxy inter 200") as hp:
        cport = send_through(s, hp)
        lines = s.message_lines(cport, status="queued")
        check(lines and "client=[127.0.0.1]:%d" % cport in lines[0],
              "no client=[127.0.0.1]:%d line; log tail:\n%s" % (cport, s.log()[-2000:]))
        wait_for(lambda: s.stats().get("proxy_local", 0) > before,
                 what="a LOCAL health check from haproxy")


@T.test("HAProxy send-proxy (v1): client's real port logged")
def _():
    haproxy_bin()
    s = srv()
    with HAProxy(s.port, "send-proxy") as hp:
        cport = send_through(s, hp)
        lines = s.message_lines(cport, status="queued")
        check(lines and "client=[127.0.0.1]:%d" % cport in lines[0],
              "no client=[127.0.0.1]:%d line; log tail:\n%s" % (cport, s.log()[-2000:]))


T.main()
