#!/usr/bin/env python3
"""tests/integration/test_load.py - end-to-end checks of ringmx-load (issue 4).

Ownership: ringmx-load (issue 4). Standalone: exit 0 pass, 1 fail, 77 skip (no
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
    exits 1 with connect errors; --rate/--duration runs stay bounded.

The binary is $RINGMX_LOAD, else build/tools/ringmx-load relative to the repository.
Everything listens on 127.0.0.1 (or ::1) and every run is bounded in count and time.
"""
import json
import os
import shutil
import signal
import socket
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

    def __init__(self, family=socket.AF_INET, host="127.0.0.1", proxy=None, mode="ok"):
        self.proxy, self.mode = proxy, mode
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
            rf = conn.makefile("rb")
            if self.mode == "mute":
                rf.read()  # until the client gives up
                return
            if self.proxy and not self._read_proxy(rf, conn):
                return
            conn.sendall(b"220 check ESMTP\r\n")
            rcpts, mail = 0, False
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
                    conn.sendall(b"250-check\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n")
                elif verb == "MAIL":
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
            head = rf.read(16)
            ok = len(head) == 16 and head[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and head[12] == 0x21
            if ok:
                fam, ln = head[13], struct.unpack("!H", head[14:16])[0]
                body = rf.read(ln)
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


def main():
    if not os.path.exists(SMTP_SINK):
        print("skip: /usr/sbin/smtp-sink not installed")
        print("0 passed, 0 failed")
        return 77
    if not os.access(LOAD, os.X_OK):
        print(f"ringmx-load not found at {LOAD} (set RINGMX_LOAD)")
        print("0 passed, 1 failed")
        return 1
    for t in (test_sink, test_check_server, test_misc):
        try:
            t()
        except Exception as ex:  # a crashed block counts as one failure, keep going
            check(f"{t.__name__} raised", False, repr(ex))
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
