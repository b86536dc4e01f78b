"""ringmx_harness - start the real ringmxd and talk SMTP to it.

Used by the tests/integration/test_*.py scripts (Python 3 stdlib only).

    from ringmx_harness import Suite, Server, Client

    T = Suite(__file__)

    @T.test("EHLO lists PIPELINING")
    def _():
        with Server() as srv, srv.client() as c:
            r = c.cmd("EHLO client.test")
            r.expect(250)
            ...

    T.main()

Conventions (docs/testing.md, "Integration tests"):
  - RINGMXD names the daemon (default: build-test/ringmxd in the source tree).
  - Each script prints one line per check ("ok  NAME" / "FAIL NAME: why"),
    then exactly "N passed, M failed"; exit 0 all passed, 1 any failure,
    77 skipped (tool missing, io_uring unavailable).
  - Loopback only; every socket operation has a timeout (TIMEOUT seconds).
  - Every Server checks on exit that the daemon stopped on SIGTERM with
    exit code 0 and logged no sanitizer report or panic.
"""

import os
import re
import select
import signal as sigmod
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

TIMEOUT = 10.0          # every socket operation and every wait
START_TIMEOUT = 10.0    # "listening on" must appear within this
STOP_TIMEOUT = 15.0     # SIGTERM to exit
HOSTNAME = "mx.ringmx.test"
SKIP = 77

# A worker's log line ends in its tag (docs/logging.md): a pattern that
# anchors a line's end puts this before "$".
EOL_WORKER = r" worker=w\d+$"


def worker_of_line(ln):
    """The worker tag (w0, w1, ...) a log line ends in, or None (main thread)."""
    m = re.search(r" worker=(w\d+)$", ln)
    return m.group(1) if m else None


# Log text that means the daemon is broken whatever the test checked.
BAD_LOG = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "panic",
           "ThreadSanitizer")


class Skip(Exception):
    """Raised by a check (or Server start-up) to skip the whole script."""


class Failure(AssertionError):
    pass


def fail(msg):
    raise Failure(msg)


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def check_eq(got, want, what="value"):
    if got != want:
        raise Failure("%s: expected %r, got %r" % (what, want, got))


_world_copies = {}


def world_executable(path):
    """A copy of the binary at path that any account may execute: tests that exec ringmxd
    as nobody cannot count on the build directory being reachable (a clone under /root is
    not). The copy lives in a 0755 directory under /tmp, removed at exit."""
    if path not in _world_copies:
        import atexit
        import shutil
        d = tempfile.mkdtemp(prefix="ringmx-bin-")
        os.chmod(d, 0o755)
        dst = os.path.join(d, os.path.basename(path))
        shutil.copy2(path, dst)
        os.chmod(dst, 0o755)
        atexit.register(shutil.rmtree, d, True)
        _world_copies[path] = dst
    return _world_copies[path]


def ringmxd_path():
    p = os.environ.get("RINGMXD")
    if not p:
        here = os.path.dirname(os.path.abspath(__file__))
        p = os.path.join(here, "..", "..", "build-test", "ringmxd")
    p = os.path.abspath(p)
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        raise Failure("ringmxd not found at %s (set RINGMXD)" % p)
    return p


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A port that was free a moment ago (bind 0, read it, close)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def privileged_port():
    """A free loopback port below 1024: only root (or CAP_NET_BIND_SERVICE) may bind it."""
    for p in range(600, 1024):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise Skip("no free port below 1024")


def ipv6_available():
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def run(args, timeout=TIMEOUT, env=None, stdin=None):
    """Run a command, return CompletedProcess with text stdout/stderr."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL if stdin is None else stdin,
                          errors="replace")


def scan_bad(text):
    """Return the first sanitizer / panic line in text, or None."""
    for line in text.splitlines():
        for bad in BAD_LOG:
            if bad in line:
                return line
    return None


# ---------------------------------------------------------------- replies

class Reply:
    """One SMTP reply: code, enhanced status code (or None), lines."""

    def __init__(self, lines):
        self.lines = lines          # text lines without CRLF
        self.code = int(lines[-1][:3])
        texts = [ln[4:] for ln in lines]
        self.texts = texts
        self.text = "\n".join(texts)
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})(?: |$)", texts[-1])
        self.enhanced = m.group(1) if m else None

    def __repr__(self):
        return "<%s>" % " | ".join(self.lines)

    def expect(self, code, enhanced=None, contains=None):
        ok = self.code == code and (enhanced is None or self.enhanced == enhanced)
        if ok and contains is not None:
            ok = contains in self.text
        if not ok:
            want = "%d" % code
            if enhanced:
                want += " " + enhanced
            if contains:
                want += " ...%s..." % contains
            raise Failure("expected reply %s, got %r" % (want, self))
        return self


class Closed(Exception):
    pass


class Client:
    """A raw SMTP client on one TCP connection, with a read buffer.

    Every operation times out after TIMEOUT seconds (socket timeout)."""

    def __init__(self, port, host="127.0.0.1", greet=True, timeout=TIMEOUT, source=None):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:  # e.g. one of many 127.x.y.z clients
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.local_port = self.sock.getsockname()[1]
        self.buf = b""
        self.eof = False
        self._sender = None
        self.send_error = None
        self.last_sent = b"(nothing: greeting)"
        if greet:
            self.reply().expect(220)

    # -- context manager
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self._sender is not None:
            self._sender.join(TIMEOUT)
        try:
            self.sock.close()
        except OSError:
            pass

    # -- raw I/O
    def _fill(self):
        if self.eof:
            raise Closed("connection closed by the server")
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            raise Failure("timed out after %.0fs waiting for a reply after sending %r "
                          "(buffered %r)" % (self.sock.gettimeout(), self.last_sent,
                                             self.buf[:200]))
        except ConnectionResetError:
            self.eof = True
            raise Closed("connection reset by the server")
        if not d:
            self.eof = True
            raise Closed("connection closed by the server")
        self.buf += d

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.last_sent = data[-80:]
        self.sock.sendall(data)

    def send_async(self, data):
        """sendall() in a thread, so replies can be read while a big write
        is in flight. Errors (the server closing early) are kept in
        send_error; join with wait_sent()."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.last_sent = data[-80:]

        def go():
            try:
                self.sock.sendall(data)
            except OSError as e:
                self.send_error = e
        self._sender = threading.Thread(target=go, daemon=True)
        self._sender.start()

    def wait_sent(self, timeout=TIMEOUT):
        if self._sender is not None:
            self._sender.join(timeout)
            alive = self._sender.is_alive()
            self._sender = None
            check(not alive, "sending did not finish within %.0fs" % timeout)

    def line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                fail("reply line longer than 1 MB without CRLF")
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln.decode("utf-8", "replace")

    def reply(self):
        """Read one complete (possibly multi-line) reply."""
        lines = []
        while True:
            ln = self.line()
            if not re.match(r"^[2-5]\d\d[ -]", ln) and not re.match(r"^[2-5]\d\d$", ln):
                fail("malformed reply line %r (after %r)" % (ln, lines))
            if lines and ln[:3] != lines[0][:3]:
                fail("reply code changed inside a multi-line reply: %r then %r" % (lines, ln))
            lines.append(ln)
            if len(ln) == 3 or ln[3] == " ":
                return Reply(lines)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def expect(self, code, enhanced=None, contains=None):
        return self.reply().expect(code, enhanced, contains)

    def cmd(self, line):
        """Send one command line (CRLF added) and read its reply."""
        self.send(line + "\r\n")
        return self.reply()

    def ehlo(self, name="client.ringmx.test"):
        r = self.cmd("EHLO " + name)
        r.expect(250)
        return r

    def expect_closed(self, timeout=TIMEOUT):
        """The server closes the connection with nothing more to say."""
        if self.buf:
            fail("expected close, but the server sent %r" % self.buf[:200])
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(4096)
        except ConnectionResetError:
            return
        except socket.timeout:
            fail("server did not close the connection within %.0fs" % timeout)
        if d:
            fail("expected close, but the server sent %r" % d[:200])
        self.eof = True

    def quit(self):
        self.cmd("QUIT").expect(221, "2.0.0")
        self.expect_closed()

    def transaction(self, sender="a@sender.test", rcpts=("u@example.test",),
                    body="Subject: t\r\n\r\nhello\r\n"):
        """MAIL, RCPT..., DATA, body, '.', expecting success. Returns the
        end-of-data reply."""
        self.cmd("MAIL FROM:<%s>" % sender).expect(250, "2.1.0")
        for r in rcpts:
            self.cmd("RCPT TO:<%s>" % r).expect(250, "2.1.5")
        self.cmd("DATA").expect(354)
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send(body + b".\r\n")
        return self.expect(250, "2.0.0", "queued as")


QID_RE = re.compile(r"queued as ([0-9A-Za-z]{13})\b")


def qid_of(reply):
    m = QID_RE.search(reply.text)
    check(m is not None, "no 13-character queue id in %r" % reply)
    return m.group(1)


# ---------------------------------------------------------------- server

class Server:
    """Run ringmxd on a free loopback port for the duration of a with-block.

    args:        extra command-line arguments (list of str)
    config_text: written to a temporary file passed with -c
    workers:     --workers N
    listen:      hosts to listen on; a free port is picked for each
                 (an IPv6 host is written [::1])
    defaults:    -o key=value added unless the key appears in args or
                 config_text: hostname, shutdown_timeout=5s, sink=discard
    ready:       "log": started once "listening on" is logged; "connect": once
                 the first listener greets (log_level = warning logs nothing)
    """

    def __init__(self, args=(), config_text=None, workers=2,
                 listen=("127.0.0.1",), check_exit=True, port=None, ready="log", binary=None):
        self.binary = binary    # None: ringmxd_path()
        self.args = list(args)
        self.config_text = config_text
        self.workers = workers
        self.listen_hosts = list(listen)
        self.check_exit = check_exit
        self.proc = None
        self.tmpdir = None
        self.config_path = None
        self.returncode = None
        self.stopped = False
        self.port = port
        self.ready = ready

    # -- life cycle
    def _mentioned(self, key):
        if any(a.startswith(key + "=") for a in self.args):
            return True
        if self.config_text and re.search(r"^\s*%s\s*=" % re.escape(key),
                                          self.config_text, re.M):
            return True
        return False

    def start(self):
        self.tmpdir = tempfile.TemporaryDirectory(prefix="ringmx-it-")
        self.log_path = os.path.join(self.tmpdir.name, "ringmxd.log")
        if self.config_text is not None:
            self.config_path = os.path.join(self.tmpdir.name, "ringmxd.conf")
            self.write_config(self.config_text)
        last = None
        for _attempt in range(3):
            try:
                self._start_once()
                return self
            except _PortRace as e:
                last = e
        raise Failure("could not start ringmxd: %s" % last)

    def write_config(self, text):
        """Replace the config file (for SIGHUP tests)."""
        check(self.config_path is not None or self.tmpdir is not None, "no tmpdir")
        if self.config_path is None:
            self.config_path = os.path.join(self.tmpdir.name, "ringmxd.conf")
        tmp = self.config_path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.config_path)

    def _start_once(self):
        # ringmxd refuses a port anything else listens on (it probe-binds
        # each listener without SO_REUSEPORT before its workers join), so a
        # port taken between free_port() and the start shows up as "in use"
        # and start() retries with another one.
        self.ports = []
        cmd = [self.binary or ringmxd_path()]
        for h in self.listen_hosts:
            if ":" in h:
                p = free_port(socket.AF_INET6, h)
                cmd += ["--listen", "[%s]:%d" % (h, p)]
            else:
                p = free_port(socket.AF_INET, h)
                cmd += ["--listen", "%s:%d" % (h, p)]
            self.ports.append(p)
        self._spawn(cmd)

    def _spawn(self, cmd):
        # Without listen hosts the config file names the listener; the
        # test sets .port itself.
        self.port = self.ports[0] if self.ports else getattr(self, "port", None)
        self.host = self.listen_hosts[0] if self.listen_hosts else "127.0.0.1"
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        for key, val in (("hostname", HOSTNAME), ("shutdown_timeout", "5s"),
                         ("sink", "discard")):
            if not self._mentioned(key):
                cmd += ["-o", "%s=%s" % (key, val)]
        cmd += self.args
        if self.config_path is not None:
            cmd += ["-c", self.config_path]
        self.cmdline = cmd
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log()
            if self.ready == "log":
                if "listening on" in text and "\n" in text.split("listening on", 1)[1]:
                    return
            elif self._greets():
                return
            rc = self.proc.poll()
            if rc is not None:
                self.logf.close()
                self.proc = None
                if "io_uring is not available" in text:
                    raise Skip("io_uring is not available here: " + text.strip())
                if "in use" in text:
                    raise _PortRace(text.strip())
                raise Failure("ringmxd exited with %d at start-up: %s\ncommand: %s"
                              % (rc, text.strip(), " ".join(cmd)))
            time.sleep(0.02)
        self.proc.kill()
        self.proc.wait()
        raise Failure("no 'listening on' within %.0fs; log: %s" % (START_TIMEOUT, self.log()))

    def _greets(self):
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                ok = s.recv(4)[:3] == b"220"
                s.sendall(b"QUIT\r\n")
                s.recv(100)
                return ok
        except OSError:
            return False

    def __enter__(self):
        return self.start()

    def __exit__(self, etype, exc, tb):
        try:
            if not self.stopped:
                self.stop(check=(etype is None and self.check_exit))
        finally:
            if self.tmpdir is not None:
                self.tmpdir.cleanup()
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        check(self.alive(), "ringmxd is not running; log:\n" + self.log()[-3000:])
        self.proc.send_signal(sig)

    def stop(self, check=True, sig=sigmod.SIGTERM):
        """SIGTERM (or sig), wait up to STOP_TIMEOUT, then check exit code 0
        and a clean log. Returns the exit code."""
        self.stopped = True
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.logf.close()
            if check:
                fail("ringmxd did not exit within %.0fs of %s; log tail:\n%s"
                     % (STOP_TIMEOUT, sigmod.Signals(sig).name, self.log()[-3000:]))
            return None
        self.logf.close()
        if check:
            self.check_log()
            if self.returncode != 0:
                fail("ringmxd exited with %d (want 0); log tail:\n%s"
                     % (self.returncode, self.log()[-3000:]))
        return self.returncode

    def check_log(self):
        bad = scan_bad(self.log())
        if bad is not None:
            fail("ringmxd log has a sanitizer report or panic: %s\nlog tail:\n%s"
                 % (bad, self.log()[-6000:]))

    # -- log
    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, count=1, since=0, timeout=TIMEOUT):
        """Wait until pattern (regex) matches at least count lines of the log
        after byte offset since; returns the matching lines."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(since)
            # A line still being written is not a line yet: ringmxd writes its log in
            # blocks of up to 64 KiB, and a reader can see the first part of one (a
            # "stats now:" line without its last counters, say).
            text = text[:text.rfind("\n") + 1]
            lines = [ln for ln in text.splitlines() if rx.search(ln)]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                fail("log: wanted %d line(s) matching %r after %.0fs, found %d; tail:\n%s"
                     % (count, pattern, timeout, len(lines), self.log_since(since)[-3000:]))
            if not self.alive():
                fail("ringmxd died (rc %r) while waiting for %r; tail:\n%s"
                     % (self.proc.poll() if self.proc else None, pattern, self.log()[-3000:]))
            time.sleep(0.02)

    def wait_disconnect(self, client_port, since=0, timeout=TIMEOUT):
        """Wait for the per-connection 'disconnect from [ip]:port' line: every
        log line of that session was written before it."""
        return self.wait_log(r"disconnect from \[[^\]]*\]:%d\b" % client_port,
                             since=since, timeout=timeout)[0]

    def message_lines(self, client_port, status=None):
        """Per-message log lines ('client=[ip]:port, ... status=...') of one
        client connection."""
        rx = re.compile(r"client=\[[^\]]*\]:%d\b.*status=(\w+)" % client_port)
        out = []
        for ln in self.log().splitlines():
            m = rx.search(ln)
            if m and (status is None or m.group(1) == status):
                out.append(ln)
        return out

    def stats(self, timeout=TIMEOUT):
        """SIGUSR1, wait for every worker's 'stats now:' line, return the
        counters summed over workers (dict name -> int)."""
        off = self.log_size()
        self.signal(sigmod.SIGUSR1)
        n = self.workers or 1
        lines = self.wait_log(r"\bstats now:", count=n, since=off, timeout=timeout)
        return sum_stats(lines)

    # -- clients
    def client(self, greet=True, host=None, port=None, source=None):
        return Client(port or self.port, host or self.host, greet=greet, source=source)


class _PortRace(Exception):
    pass


def sum_stats(lines):
    total = {}
    for ln in lines:
        body = ln.split("stats ", 1)[1]
        for k, v in re.findall(r"(\w+)=(\d+)", body):
            total[k] = total.get(k, 0) + int(v)
    return total


# ---------------------------------------------------------------- runner

class Suite:
    """A tiny test runner: register checks with @T.test("name"), run them in
    order with T.main(). A check fails on any exception; Skip skips the
    whole script (exit 77) unless some check already ran."""

    def __init__(self, name=None):
        self.name = os.path.basename(name or sys.argv[0])
        self.tests = []
        self.passed = 0
        self.failed = 0
        self.skipped = []
        self._shared = []

    def shared(self, **kw):
        """A Server started on first use and shared by the checks that ask
        for it; stopping it cleanly (exit 0, clean log) is a check of its
        own, run after all the others."""
        holder = {"srv": None, "err": None}

        def get():
            if holder["err"] is not None:
                raise holder["err"]
            if holder["srv"] is None or not holder["srv"].alive():
                if holder["srv"] is not None:
                    fail("the shared ringmxd died; log tail:\n" + holder["srv"].log()[-3000:])
                srv = Server(**kw)
                try:
                    srv.start()
                except Exception as e:
                    holder["err"] = e
                    raise
                holder["srv"] = srv
            return holder["srv"]
        self._shared.append(holder)
        return get

    def _stop_shared(self):
        for i, holder in enumerate(self._shared):
            srv = holder["srv"]
            if srv is None:
                continue

            def stop(srv=srv):
                try:
                    srv.stop()
                finally:
                    srv.tmpdir.cleanup()
            self.run_one("shared server %d: SIGTERM, exit 0, clean log" % (i + 1), stop)

    def test(self, name):
        def deco(fn):
            self.tests.append((name, fn))
            return fn
        return deco

    def run_one(self, name, fn):
        t0 = time.monotonic()
        try:
            fn()
        except Skip as e:
            self.skipped.append(name)
            print("skip %s: %s" % (name, e), flush=True)
            return
        except Exception as e:  # noqa: BLE001 - any exception is a failure
            self.failed += 1
            kind = "" if isinstance(e, Failure) else type(e).__name__ + ": "
            print("FAIL %s: %s%s" % (name, kind, e), flush=True)
            if not isinstance(e, Failure):
                traceback.print_exc(file=sys.stdout)
            return
        self.passed += 1
        print("ok   %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)

    def main(self, requires=(), needs_ringmxd=True):
        """Run the checks. needs_ringmxd=False: the script never starts the daemon
        (test_nexthop.py, test_dsn_parse.py), so a missing ringmxd is not a setup failure."""
        for tool in requires:
            if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
                print("skip %s: %s is not installed" % (self.name, tool))
                print("0 passed, 0 failed")
                sys.exit(SKIP)
        try:
            if needs_ringmxd:
                ringmxd_path()
        except Failure as e:
            print("FAIL setup: %s" % e)
            print("0 passed, 1 failed")
            sys.exit(1)
        for name, fn in self.tests:
            self.run_one(name, fn)
        self._stop_shared()
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        if self.failed:
            sys.exit(1)
        if self.passed == 0 and self.skipped:
            sys.exit(SKIP)
        sys.exit(0)


# ---------------------------------------------------------------- misc

OPENSSL = "/usr/bin/openssl"


def self_signed_cert(directory, cn="localhost", san=None):
    """An ECDSA P-256 self-signed cert/key pair for cn (SAN: cn, localhost,
    127.0.0.1, or the subjectAltName value san) in directory; made once, reused
    after. Skip without openssl."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    if not os.access(OPENSSL, os.X_OK):
        raise Skip("openssl is not installed (apt-get install openssl)")
    os.makedirs(directory, exist_ok=True)
    r = subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "30", "-subj", "/CN=" + cn,
                        "-addext", "subjectAltName=" +
                        (san or "DNS:%s,DNS:localhost,IP:127.0.0.1" % cn)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        fail("openssl req: %s" % r.stderr[-800:])
    return cert, key


def stop_process(proc, timeout=5):
    """SIGTERM a helper process (a proxy, a sink), SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(pred, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            fail("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(0.02)


def smtplib_send(srv, sender="a@sender.test", rcpts=("u@example.test",),
                 body=None, host=None, port=None):
    """One message with smtplib: the 'does it still work' check after floods."""
    import smtplib
    from email.message import EmailMessage
    msg = EmailMessage()
    msg["From"] = sender or "mailer-daemon@sender.test"
    sender = sender or ""
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = "ringmx integration"
    msg.set_content(body or "still alive\n")
    with smtplib.SMTP(host or srv.host, port or srv.port, local_hostname="smtplib.test",
                      timeout=TIMEOUT) as s:
        refused = s.send_message(msg, from_addr=sender, to_addrs=list(rcpts))
        check(refused == {}, "refused recipients: %r" % refused)
        return s.noop()

