#!/usr/bin/env python3
"""tests/integration/test_load.py - end-to-end checks of ringmx-load (issues 4 and 5).

Ownership: ringmx-load (issue 4; TLS checks from issue 5). Standalone: exit 0 pass, 1 fail, 77 skip (no
/usr/sbin/smtp-sink); the last line printed is "N passed, M failed".

What it pins:
  * against Postfix smtp-sink: pipelined, lock-step, churn, multi-recipient and size
    ranges all end with accepted == messages in the --json output, and the --verify
    manifest has one well-formed line per accepted message;
  * --bdat against smtp-sink (no CHUNKING advertised) fails fast with exit 2 and a
    message naming CHUNKING: ringmx-load does not silently fall back to DATA, because a
    benchmark that quietly measures something else is worse than no benchmark;
  * against a small Python server that advertises CHUNKING and checks every byte:
    BDAT and DATA bodies arrive intact (the X-Ringmx-Load-Sum header matches the FNV-1a
    of the body the server received), PROXY v1/v2 headers are well formed, and the
    manifest's queue ids are the ones the server issued;
  * rejections (smtp-sink -r RCPT, a server answering 550) exit 1, or 0 with
    --expect-reject; a server that never greets exits 1 with a timeout; a closed port
    exits 1 with connect errors; --rate/--duration runs stay bounded;
  * TLS (issue 5), against the same check server speaking Python `ssl` with a throw-away
    self-signed P-256 certificate: --tls and --starttls (with PROXY v1/v2 in the clear
    first, BDAT, TLS 1.2 and 1.3, 10-70k bodies that stream through several records)
    deliver every message intact inside TLS and count one timed handshake per connection;
    --tls-resume resumes on both versions (the server agrees); --tls-ciphers and
    --tls-groups are honoured; --tls-verify checks the name; --tls against a plaintext
    port and a wrong name fail with exit 1 and a reason; --starttls without STARTTLS
    offered exits 2 with a message; bytes after the 220 to STARTTLS are refused
    (CVE-2011-0411, client side). The same checks run against the real ringmxd (next to
    ringmx-load in the build dir, or $RINGMXD) when it starts with tls=implicit and
    tls=starttls listeners, and are skipped with a message otherwise.

Run one block with e.g. `test_load.py test_tls`.

The binary is $RINGMX_LOAD, else build/tools/ringmx-load relative to the repository.
Everything listens on 127.0.0.1 (or ::1) and every run is bounded in count and time.
"""
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

SMTP_SINK = "/usr/sbin/smtp-sink"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOAD = os.environ.get("RINGMX_LOAD") or os.path.join(REPO, "build", "tools", "ringmx-load")
RUN_TIMEOUT = 60

results = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    if cond:
        results["passed"] += 1
        print(f"ok   {name}")
    else:
        results["failed"] += 1
        print(f"FAIL {name} {detail}")
    return cond


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(host, port, family=socket.AF_INET, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect((host, port))
                s.recv(100)  # the greeting: the server is really up
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Sink:
    """smtp-sink on a free loopback port."""

    def __init__(self, *extra):
        self.port = free_port()
        args = [SMTP_SINK]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]  # smtp-sink refuses to run as root otherwise
        args += list(extra) + ["-m", "500", f"127.0.0.1:{self.port}", "500"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_listening("127.0.0.1", self.port):
            self.stop()
            raise RuntimeError("smtp-sink did not start")
        self.target = f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def readexact(rf, n):
    """read(n) that also works on an unbuffered (raw) reader, which may return less."""
    out = b""
    while len(out) < n:
        b = rf.read(n - len(out))
        if not b:
            break
        out += b
    return out


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class CheckServer:
    """A strict little SMTP server: PIPELINING + CHUNKING, optional PROXY header,
    verifies each message's X-Ringmx-Load-Sum, issues queue ids. mode 'reject-rcpt'
    answers 550 to RCPT; mode 'mute' accepts and never greets."""

    def __init__(self, family=socket.AF_INET, host="127.0.0.1", proxy=None, mode="ok",
                 tls=None, tls_ctx=None):
        # tls: None (plaintext), "starttls" (offers STARTTLS, requires EHLO again after
        # it), "implicit" (handshake before the greeting). mode "inject" answers
        # STARTTLS with 220 plus a second reply in the same write.
        self.proxy, self.mode, self.tls, self.tls_ctx = proxy, mode, tls, tls_ctx
        self.handshakes, self.resumed, self.tls_seen = 0, 0, set()
        self.mail_in_tls, self.mail_in_clear = 0, 0
        self.lsock = socket.socket(family, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(256)
        self.port = self.lsock.getsockname()[1]
        self.target = f"[{host}]:{self.port}" if family == socket.AF_INET6 else f"{host}:{self.port}"
        self.lock = threading.Lock()
        self.errors, self.messages, self.proxy_headers = [], {}, []
        self.qseq = 0
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.closing = True
        try:
            self.lsock.close()
        except OSError:
            pass

    def _err(self, msg):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(msg)

    def _accept(self):
        while not self.closing:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(20)
            # Before TLS starts, read without read-ahead: a buffered reader would
            # swallow the ClientHello that follows the PROXY header or STARTTLS.
            rf = conn.makefile("rb", buffering=0 if self.tls else -1)
            if self.tls:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.mode == "mute":
                rf.read()  # until the client gives up
                return
            if self.proxy and not self._read_proxy(rf, conn):
                return
            in_tls = False
            if self.tls == "implicit":
                conn, rf = self._handshake(conn)
                in_tls = True
            conn.sendall(b"220 check ESMTP\r\n")
            rcpts, mail, ehlo = 0, False, False
            while True:
                line = rf.readline(2000)
                if not line:
                    return
                if not line.endswith(b"\r\n"):
                    self._err(f"command without CRLF: {line!r}")
                    return
                cmd = line[:-2].decode("ascii", "replace")
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    ehlo = True
                    offer = b"250-STARTTLS\r\n" if self.tls == "starttls" and not in_tls else b""
                    conn.sendall(b"250-check\r\n250-PIPELINING\r\n" + offer +
                                 b"250-CHUNKING\r\n250 8BITMIME\r\n")
                elif verb == "STARTTLS" and self.tls == "starttls" and not in_tls:
                    if self.mode == "inject":
                        conn.sendall(b"220 2.0.0 go ahead\r\n250 injected\r\n")
                        return
                    conn.sendall(b"220 2.0.0 go ahead\r\n")
                    conn, rf = self._handshake(conn)
                    in_tls, ehlo, mail, rcpts = True, False, False, 0  # RFC 3207 4.2 reset
                elif verb == "MAIL":
                    if self.tls == "starttls" and in_tls and not ehlo:
                        self._err("MAIL after STARTTLS without a new EHLO")
                    with self.lock:
                        if in_tls:
                            self.mail_in_tls += 1
                        else:
                            self.mail_in_clear += 1
                    mail, rcpts = True, 0
                    conn.sendall(b"250 2.1.0 Ok\r\n")
                elif verb == "RCPT":
                    if self.mode == "reject-rcpt":
                        conn.sendall(b"550 5.1.1 No such user\r\n")
                    else:
                        rcpts += 1
                        conn.sendall(b"250 2.1.5 Ok\r\n")
                elif verb == "DATA":
                    if not (mail and rcpts):
                        conn.sendall(b"554 5.5.1 No valid recipients\r\n")
                        continue
                    conn.sendall(b"354 go ahead\r\n")
                    data = []
                    while True:
                        l = rf.readline(100000)
                        if not l:
                            return
                        if l == b".\r\n":
                            break
                        if l.startswith(b"."):
                            l = l[1:]
                        data.append(l)
                    conn.sendall(self._deliver(b"".join(data)))
                    mail, rcpts = False, 0
                elif verb == "BDAT":
                    parts = cmd.split()
                    n = int(parts[1])
                    data = rf.read(n)
                    if len(data) != n or len(parts) != 3 or parts[2].upper() != "LAST":
                        self._err(f"bad BDAT {cmd!r} got {len(data)}")
                        return
                    if not (mail and rcpts):
                        conn.sendall(b"554 5.5.1 No valid recipients\r\n")
                    else:
                        conn.sendall(self._deliver(data))
                    mail, rcpts = False, 0
                elif verb == "RSET":
                    mail, rcpts = False, 0
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    conn.sendall(b"502 5.5.2 unknown\r\n")
        except (OSError, ValueError) as ex:
            if not self.closing:
                self._err(f"server exception {ex!r}")
        finally:
            conn.close()

    def _handshake(self, conn):
        tconn = self.tls_ctx.wrap_socket(conn, server_side=True)
        with self.lock:
            self.handshakes += 1
            self.resumed += 1 if tconn.session_reused else 0
            self.tls_seen.add((tconn.version(), tconn.cipher()[0]))
        return tconn, tconn.makefile("rb")

    def _read_proxy(self, rf, conn):
        if self.proxy == "v1":
            line = rf.readline(108)
            parts = line.decode("ascii", "replace").split(" ")
            ok = (line.endswith(b"\r\n") and len(parts) == 6 and parts[0] == "PROXY"
                  and parts[1] in ("TCP4", "TCP6"))
            if ok:
                peer = conn.getpeername()
                ok = parts[2] == peer[0] and int(parts[4]) == peer[1] and int(parts[5]) == self.port
        else:
            head = readexact(rf, 16)
            ok = len(head) == 16 and head[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and head[12] == 0x21
            if ok:
                fam, ln = head[13], struct.unpack("!H", head[14:16])[0]
                body = readexact(rf, ln)
                ok = fam in (0x11, 0x21) and len(body) == ln
                if ok and fam == 0x11:
                    src, dst = socket.inet_ntoa(body[0:4]), socket.inet_ntoa(body[4:8])
                    sport, dport = struct.unpack("!HH", body[8:12])
                    peer = conn.getpeername()
                    ok = src == peer[0] and sport == peer[1] and dport == self.port and dst
        with self.lock:
            self.proxy_headers.append(ok)
        if not ok:
            self._err("bad PROXY header")
        return ok

    def _deliver(self, data):
        head, sep, body = data.partition(b"\r\n\r\n")
        hdrs = {}
        for l in head.split(b"\r\n"):
            k, _, v = l.partition(b":")
            hdrs[k.strip().lower()] = v.strip().decode()
        mid, want = hdrs.get(b"x-ringmx-load-id"), hdrs.get(b"x-ringmx-load-sum")
        if not sep or not mid or not want:
            self._err(f"message without load headers: {head[:200]!r}")
        elif f"{fnv1a64(body):016x}" != want:
            self._err(f"checksum mismatch for {mid}")
        if not data.endswith(b"\r\n") or b"\r\n.\r\n" in data:
            self._err(f"bad body framing for {mid}")
        with self.lock:
            self.qseq += 1
            qid = f"Q{self.qseq:06d}"
            self.messages[mid] = (qid, len(body), want)
        return f"250 2.0.0 Ok: queued as {qid}\r\n".encode()


def run(args, name):
    """Runs ringmx-load with --json to a temp file; returns (rc, json or None, stderr)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as jf:
        path = jf.name
    try:
        p = subprocess.run([LOAD, "--json", path] + args, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
        try:
            with open(path) as f:
                js = json.load(f)
        except (OSError, ValueError):
            js = None
        if js is None and p.returncode != 2:
            print(f"  [{name}] stderr: {p.stderr[-2000:]}")
        return p.returncode, js, p.stderr
    finally:
        os.unlink(path)


def consistent(js, n):
    """accepted == messages == n, every message decided, codes add up."""
    return (js is not None and js["messages"] == n and js["accepted"] == n
            and js["rejected"] == 0 and js["failed"] == 0
            and sum(js["codes"].values()) == n and js["codes"].get("250") == n
            and js["latency_us"]["count"] == n
            and js["latency_us"]["p50"] <= js["latency_us"]["p99"] <= js["latency_us"]["max"])


def read_manifest(path):
    with open(path) as f:
        return [l.split() for l in f.read().splitlines()]


def test_sink():
    sink = Sink()
    t = sink.target
    try:
        rc, js, _ = run(["-q", "-c", "20", "-m", "2000", t], "pipelined")
        check("pipelined: exit 0", rc == 0, rc)
        check("pipelined: accepted == messages", consistent(js, 2000), js)
        check("pipelined: no lock-step fallback", js and js["lockstep_sessions"] == 0)

        rc, js, _ = run(["-q", "-c", "5", "-m", "300", "--pipelining", "off", t], "lockstep")
        check("non-pipelined: exit 0 and consistent", rc == 0 and consistent(js, 300), (rc, js))

        rc, js, _ = run(["-q", "-c", "10", "-m", "300", "--per-connection", "1", t], "churn")
        check("churn: exit 0 and consistent", rc == 0 and consistent(js, 300), (rc, js))
        check("churn: one connection per message", js and js["connections_opened"] == 300,
              js and js["connections_opened"])

        rc, js, _ = run(["-q", "-c", "8", "-m", "400", "--per-connection", "7", "--rcpts", "3",
                         "-s", "100-20k", "-t", "2", t], "mixed")
        check("rcpts 3, sizes 100-20k, 2 threads: consistent", rc == 0 and consistent(js, 400), (rc, js))
        check("per-connection 7: reconnects", js and js["connections_opened"] >= 400 // 7)

        with tempfile.TemporaryDirectory() as d:
            man = os.path.join(d, "manifest")
            rc, js, _ = run(["-q", "-c", "4", "-m", "250", "-s", "1k-4k", "--verify", man, t], "verify")
            lines = read_manifest(man) if os.path.exists(man) else []
            check("verify: one manifest line per accepted message",
                  rc == 0 and js and len(lines) == js["accepted"] == 250, (rc, len(lines)))
            ids = {l[0] for l in lines}
            ok = len(ids) == len(lines) and all(
                len(l) == 4 and l[0].startswith("ringmx-load.") and l[1] == "-"
                and 1024 <= int(l[2]) <= 4096 and len(l[3]) == 16 and int(l[3], 16) >= 0
                for l in lines)
            check("verify: ids unique, fields well formed (smtp-sink gives no queue id)", ok,
                  lines[:2])

        rc, js, err = run(["-q", "-c", "2", "-m", "10", "--bdat", t], "bdat-sink")
        check("bdat without CHUNKING: exit 2 with a clear error",
              rc == 2 and "CHUNKING" in err and js and js["error"] and "CHUNKING" in js["error"],
              (rc, err[-300:]))
    finally:
        sink.stop()

    sink = Sink("-r", "RCPT")  # soft-reject every RCPT; -r implies no PIPELINING
    try:
        rc, js, _ = run(["-q", "-c", "3", "-m", "30", sink.target], "reject")
        check("RCPT rejected: exit 1", rc == 1, rc)
        check("RCPT rejected: codes counted, lock-step fallback noted",
              js and js["rejected"] == 30 and js["accepted"] == 0 and js["codes"].get("450") == 30
              and js["lockstep_sessions"] >= 3, js)
        rc, js, _ = run(["-q", "-c", "3", "-m", "30", "--expect-reject", sink.target], "reject-ok")
        check("RCPT rejected with --expect-reject: exit 0", rc == 0 and js["rejected"] == 30, rc)
    finally:
        sink.stop()


def test_check_server():
    for proxy, bdat, pipe in (("v2", True, "on"), ("v1", False, "on"), (None, True, "off"),
                              (None, False, "off")):
        srv = CheckServer(proxy=proxy)
        name = f"check server proxy={proxy} bdat={bdat} pipelining={pipe}"
        try:
            with tempfile.TemporaryDirectory() as d:
                man = os.path.join(d, "manifest")
                args = ["-q", "-c", "6", "-m", "300", "--per-connection", "25", "-s", "10-70k",
                        "--rcpts", "2", "--pipelining", pipe, "--verify", man, srv.target]
                if proxy:
                    args += ["--proxy", proxy]
                if bdat:
                    args += ["--bdat"]
                rc, js, _ = run(args, name)
                check(f"{name}: exit 0, consistent", rc == 0 and consistent(js, 300), (rc, js))
                check(f"{name}: server saw intact bodies", not srv.errors, srv.errors[:3])
                lines = read_manifest(man) if os.path.exists(man) else []
                ok = len(lines) == 300 and all(
                    l[0] in srv.messages and srv.messages[l[0]][0] == l[1]
                    and srv.messages[l[0]][1] == int(l[2]) and srv.messages[l[0]][2] == l[3]
                    for l in lines)
                check(f"{name}: manifest matches server (queue id, size, sum)", ok, lines[:2])
                if proxy:
                    check(f"{name}: PROXY header on every connection",
                          srv.proxy_headers and all(srv.proxy_headers), srv.proxy_headers[:3])
        finally:
            srv.stop()

    srv = CheckServer(mode="reject-rcpt")
    try:
        rc, js, _ = run(["-q", "-c", "2", "-m", "20", srv.target], "550")
        check("550 to RCPT: exit 1, 20 rejected with 550",
              rc == 1 and js and js["rejected"] == 20 and js["codes"].get("550") == 20, (rc, js))
    finally:
        srv.stop()

    srv = CheckServer(mode="mute")
    try:
        t0 = time.time()
        rc, js, _ = run(["-q", "-c", "2", "-m", "4", "--timeout", "1", srv.target], "mute")
        check("server never greets: exit 1 with timeouts, bounded",
              rc == 1 and js and js["timeouts"] >= 2 and time.time() - t0 < 20, (rc, js))
    finally:
        srv.stop()

    try:
        srv6 = CheckServer(family=socket.AF_INET6, host="::1", proxy="v1")
    except OSError:
        srv6 = None
        print("skip IPv6: no ::1")
    if srv6:
        try:
            rc, js, _ = run(["-q", "-c", "3", "-m", "60", "--bdat", "--proxy", "v1", srv6.target], "v6")
            check("IPv6 [::1] with PROXY v1 TCP6: consistent, intact",
                  rc == 0 and consistent(js, 60) and not srv6.errors, (rc, srv6.errors[:2]))
        finally:
            srv6.stop()


def test_misc():
    port = free_port()
    t0 = time.time()
    rc, js, _ = run(["-q", "-c", "2", "-m", "5", "--timeout", "2", f"127.0.0.1:{port}"], "refused")
    check("closed port: exit 1 with connect errors, bounded",
          rc == 1 and js and js["connect_errors"] >= 2 and time.time() - t0 < 20, (rc, js))

    sink = Sink()
    try:
        rc, js, _ = run(["-q", "-c", "10", "--rate", "400", "-d", "1.5", sink.target], "rate")
        ok = rc == 0 and js and js["accepted"] == js["messages"] and 450 <= js["accepted"] <= 700
        check("--rate 400 -d 1.5: about 600 messages, all accepted", ok, js and js["accepted"])
        check("--rate: latency measured from the intended start",
              js and js["latency_us"]["from"] == "intended")
        rc, js, _ = run(["-q", "-c", "20", "-d", "1", "--source", "127.0.0.2-127.0.0.9",
                         sink.target], "duration")
        check("--duration 1 --source range: runs, all accepted, ends in time",
              rc == 0 and js and js["accepted"] == js["messages"] > 0 and js["elapsed_s"] < 5,
              js and (js["accepted"], js["messages"], js["elapsed_s"]))
        p = subprocess.run([LOAD, "--size", "5-2", sink.target], capture_output=True, timeout=10)
        check("usage error: exit 2", p.returncode == 2, p.returncode)
    finally:
        sink.stop()


def make_cert(d):
    """A throw-away self-signed P-256 certificate for CN=localhost."""
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-days", "2",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30)
    return cert, key


def tls_ok(js, n_conns=None, mode=None):
    """TLS block present, every opened connection completed its handshake."""
    if not js or not js.get("tls"):
        return False
    t = js["tls"]
    ok = (t["handshake_failures"] == 0 and t["handshakes"] == js["connections_opened"] > 0
          and t["handshake_us"]["count"] == t["handshakes"]
          and 0 < t["handshake_us"]["p50"] <= t["handshake_us"]["p99"] <= t["handshake_us"]["max"]
          and sum(t["negotiated"].values()) == t["handshakes"] and t["error"] is None)
    if n_conns is not None:
        ok = ok and t["handshakes"] == n_conns
    if mode is not None:
        ok = ok and t["mode"] == mode
    return ok


def test_tls():
    if not shutil.which("openssl"):
        print("skip TLS checks: no openssl command to make a certificate")
        return
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_cert(d)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        _tls_end_to_end(d, ctx)
        _tls_resume(ctx)
        _tls_failures(cert, ctx)
        _tls_ringmxd(d, cert, key)


def _tls_end_to_end(d, ctx):
    # mode, proxy, bdat, extra args
    cases = (("implicit", None, False, []), ("starttls", None, True, []),
             ("implicit", "v2", True, ["--tls-version", "1.2"]),
             ("starttls", "v1", False, ["--tls-version", "1.3", "--pipelining", "off"]))
    for mode, proxy, bdat, extra in cases:
        srv = CheckServer(proxy=proxy, tls=mode, tls_ctx=ctx)
        name = f"TLS {mode} proxy={proxy} bdat={bdat} {' '.join(extra)}".strip()
        try:
            man = os.path.join(d, "manifest")
            # 10-70k bodies: several TLS records per message, so the encrypt-ahead
            # window (32 KiB) streams; 4 connections x 3 reconnects.
            args = ["-q", "-c", "4", "-m", "120", "--per-connection", "10", "-s", "10-70k",
                    "--rcpts", "2", "--verify", man, "--tls" if mode == "implicit" else "--starttls",
                    srv.target] + extra
            if proxy:
                args += ["--proxy", proxy]
            if bdat:
                args += ["--bdat"]
            rc, js, _ = run(args, name)
            check(f"{name}: exit 0, all 120 accepted", rc == 0 and consistent(js, 120), (rc, js))
            check(f"{name}: one handshake per connection, counted and timed",
                  tls_ok(js, None, mode) and js["tls"]["handshakes"] >= 12
                  and srv.handshakes == js["tls"]["handshakes"], (js and js.get("tls"), srv.handshakes))
            check(f"{name}: server saw intact bodies, all mail inside TLS",
                  not srv.errors and srv.mail_in_tls == 120 and srv.mail_in_clear == 0,
                  (srv.errors[:3], srv.mail_in_tls, srv.mail_in_clear))
            lines = read_manifest(man) if os.path.exists(man) else []
            check(f"{name}: manifest matches server queue ids",
                  len(lines) == 120 and all(l[0] in srv.messages and srv.messages[l[0]][0] == l[1]
                                            for l in lines), lines[:2])
            if proxy:
                check(f"{name}: PROXY {proxy} header in the clear before TLS",
                      len(srv.proxy_headers) == srv.handshakes and all(srv.proxy_headers),
                      srv.proxy_headers[:3])
            want = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}.get(extra[1] if extra else "", "TLSv1.3")
            neg = js and js["tls"] and list(js["tls"]["negotiated"])
            check(f"{name}: negotiated {want} reported", neg and all(k.startswith(want + " ") for k in neg),
                  neg)
        finally:
            srv.stop()

    srv = CheckServer(tls="implicit", tls_ctx=ctx)
    try:
        rc, js, _ = run(["-q", "-c", "3", "-m", "30", "--tls", "--tls-ciphers",
                         "TLS13-CHACHA20-POLY1305-SHA256", srv.target], "chacha")
        neg = js and js["tls"] and list(js["tls"]["negotiated"])
        check("--tls-ciphers TLS13-CHACHA20-POLY1305-SHA256: negotiated and reported",
              rc == 0 and consistent(js, 30) and neg and all("CHACHA20" in k for k in neg), (rc, neg))
        rc, js, _ = run(["-q", "-c", "2", "-m", "20", "--tls", "--tls-groups", "X25519", srv.target],
                        "x25519")
        neg = js and js["tls"] and list(js["tls"]["negotiated"])
        check("--tls-groups X25519: used for the key exchange",
              rc == 0 and neg and all(k.endswith(" X25519") for k in neg), (rc, neg))
    finally:
        srv.stop()


def _tls_resume(ctx):
    for ver in ("1.3", "1.2"):
        srv = CheckServer(tls="implicit", tls_ctx=ctx)
        name = f"--tls-resume TLS {ver}, one message per connection"
        try:
            rc, js, _ = run(["-q", "-c", "2", "-m", "40", "--per-connection", "1", "--tls",
                             "--tls-resume", "--tls-version", ver, srv.target], name)
            t = js and js["tls"]
            # Each of the 2 connection slots does one full handshake, then resumes.
            check(f"{name}: 40 handshakes, 38 resumed, server agrees",
                  rc == 0 and consistent(js, 40) and tls_ok(js, 40) and t["resumed"] == 38
                  and t["full"] == 2 and srv.resumed == 38, (rc, t, srv.resumed))
            rc, js, _ = run(["-q", "-c", "2", "-m", "10", "--per-connection", "1", "--tls",
                             "--tls-version", ver, srv.target], name + " (off)")
            check(f"TLS {ver} without --tls-resume: no resumption",
                  rc == 0 and js["tls"]["resumed"] == 0 and js["tls"]["full"] == 10, js and js["tls"])
        finally:
            srv.stop()


def _tls_failures(cert, ctx):
    srv = CheckServer(tls="implicit", tls_ctx=ctx)
    try:
        rc, js, _ = run(["-q", "-c", "2", "-m", "10", "--tls", "--tls-verify", cert, "--sni",
                         "localhost", srv.target], "verify-ok")
        check("--tls-verify CA --sni localhost: verified, exit 0",
              rc == 0 and consistent(js, 10) and js["tls"]["verified"], (rc, js and js["tls"]))
        rc, js, err = run(["-q", "-c", "2", "-m", "4", "--tls", "--tls-verify", cert, "--sni",
                           "wrong.example", srv.target], "verify-bad-name")
        t = js and js["tls"]
        check("--tls-verify with a name the certificate lacks: exit 1, handshake failures, reason",
              rc == 1 and t and t["handshake_failures"] >= 2 and t["handshakes"] == 0 and t["error"],
              (rc, t))
    finally:
        srv.stop()

    srv = CheckServer(tls="starttls", tls_ctx=ctx)  # offers STARTTLS, but --tls speaks TLS first
    try:
        t0 = time.time()
        rc, js, _ = run(["-q", "-c", "2", "-m", "6", "--timeout", "3", "--tls", srv.target], "tls-vs-plain")
        t = js and js["tls"]
        check("--tls against a plaintext SMTP port: exit 1, handshake failures, bounded",
              rc == 1 and t and t["handshake_failures"] >= 2 and t["handshakes"] == 0
              and time.time() - t0 < 20, (rc, t))
    finally:
        srv.stop()

    srv = CheckServer()  # no STARTTLS offered
    try:
        rc, js, err = run(["-q", "-c", "2", "-m", "10", "--starttls", srv.target], "no-starttls")
        check("--starttls without STARTTLS offered: exit 2 with a clear message",
              rc == 2 and "does not advertise STARTTLS" in err and js and js["error"]
              and "STARTTLS" in js["error"] and js["accepted"] == 0, (rc, err[-300:]))
    finally:
        srv.stop()

    srv = CheckServer(tls="starttls", tls_ctx=ctx, mode="inject")
    try:
        rc, js, _ = run(["-q", "-c", "1", "-m", "3", "--starttls", srv.target], "inject")
        t = js and js["tls"]
        check("bytes after the 220 to STARTTLS: refused as response injection, exit 1",
              rc == 1 and js["protocol_errors"] >= 1 and t["handshakes"] == 0
              and "after its 220" in (t["error"] or ""), (rc, js))
    finally:
        srv.stop()

    for bad in (["--tls-resume", "127.0.0.1:25"], ["--tls", "--starttls", "127.0.0.1:25"],
                ["--tls", "--tls-version", "1.1", "127.0.0.1:25"],
                ["--tls", "--tls-ciphers", "NO-SUCH-CIPHER", "127.0.0.1:25"],
                ["--tls", "--tls-verify", "/nonexistent/ca.pem", "127.0.0.1:25"]):
        p = subprocess.run([LOAD] + bad, capture_output=True, text=True, timeout=10)
        check(f"usage: {' '.join(bad[:-1])}: exit 2 with a message",
              p.returncode == 2 and "ringmx-load:" in p.stderr, (p.returncode, p.stderr[-200:]))


def ringmxd_binary():
    p = os.environ.get("RINGMXD") or os.path.join(os.path.dirname(os.path.dirname(LOAD)), "ringmxd")
    return p if os.access(p, os.X_OK) else None


def _tls_ringmxd(d, cert, key):
    """The real server, once it has native TLS (issue 5); skipped until then."""
    rd = ringmxd_binary()
    if not rd:
        print("skip ringmxd TLS checks: no ringmxd binary next to ringmx-load (set RINGMXD)")
        return
    p_imp, p_st = free_port(), free_port()
    log = os.path.join(d, "ringmxd.log")
    with open(log, "w") as lf:
        proc = subprocess.Popen([rd, "--listen", f"127.0.0.1:{p_imp} tls=implicit",
                                 "--listen", f"127.0.0.1:{p_st} tls=starttls", "--workers", "1",
                                 "-o", f"tls_cert={cert}", "-o", f"tls_key={key}",
                                 "-o", "sink=discard"], stdout=lf, stderr=subprocess.STDOUT)
    try:
        up = wait_listening("127.0.0.1", p_st, timeout=5) and proc.poll() is None
        if not up:
            with open(log) as f:
                why = f.read().strip().splitlines()[-1:] or ["no output"]
            print(f"skip ringmxd TLS checks: ringmxd does not support TLS yet ({why[0][:160]})")
            return
        for mode, port in (("implicit", p_imp), ("starttls", p_st)):
            flag = "--tls" if mode == "implicit" else "--starttls"
            rc, js, _ = run(["-q", "-c", "8", "-m", "400", "--per-connection", "50", "-s", "1k-20k",
                             flag, f"127.0.0.1:{port}"], f"ringmxd {mode}")
            check(f"ringmxd tls={mode}: all accepted, every handshake counted",
                  rc == 0 and consistent(js, 400) and tls_ok(js, None, mode), (rc, js and js.get("tls")))
        rc, js, _ = run(["-q", "-c", "2", "-m", "40", "--per-connection", "1", "--tls", "--tls-resume",
                         f"127.0.0.1:{p_imp}"], "ringmxd resume")
        check("ringmxd tls=implicit: --tls-resume resumes", rc == 0 and js["tls"]["resumed"] >= 30,
              js and js["tls"])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main():
    if not os.path.exists(SMTP_SINK):
        print("skip: /usr/sbin/smtp-sink not installed")
        print("0 passed, 0 failed")
        return 77
    if not os.access(LOAD, os.X_OK):
        print(f"ringmx-load not found at {LOAD} (set RINGMX_LOAD)")
        print("0 passed, 1 failed")
        return 1
    tests = (test_sink, test_check_server, test_misc, test_tls)
    only = sys.argv[1:]  # e.g. "test_tls": run just those blocks
    for t in tests:
        if only and t.__name__ not in only:
            continue
        try:
            t()
        except Exception as ex:  # a crashed block counts as one failure, keep going
            check(f"{t.__name__} raised", False, repr(ex))
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
