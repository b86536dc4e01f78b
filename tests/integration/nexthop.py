"""nexthop - next hops on loopback for the relay tests (Python 3 stdlib only).

Three servers a relaying ringmxd can deliver to, each a context manager:

    FakeMX(lmtp=False, chunking=False, pipelining=True, starttls_cert=None, port=0,
           unix_path=None, hostname="fakemx.test", timeout=TIMEOUT)
        A threaded SMTP/LMTP server written here, scriptable per command, that records
        every transaction it acknowledged in .messages (a list of Received).
    SmtpSink(port=0, lmtp=False, dump_dir=None, hostname="sink.test", extra_args=())
        Postfix's /usr/sbin/smtp-sink with -c counters and (with dump_dir) -d dumps,
        read back by .messages() as Dumped(sender, rcpts, data, ...).
    DovecotLMTP(tmpdir, port=0)
        A private Dovecot 2.3 LMTP server delivering into TMPDIR/maildirs/DOMAIN/USER
        (Maildir), read back by .maildir_messages(user, domain).

Every socket operation has a timeout, every wait is bounded, every server thread is a
daemon thread, and close() (also on leaving the with-block) stops and joins everything.
Self-tests: tests/integration/test_nexthop.py. Conventions: docs/testing.md ("Next hops").
"""

import collections
import glob
import os
import pwd
import grp
import re
import select
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

TIMEOUT = 10.0
SMTP_SINK = "/usr/sbin/smtp-sink"
DOVECOT = "/usr/sbin/dovecot"

LINE_MAX = 4096              # a command line, CRLF included (RFC 5321 says 512)
MESSAGE_MAX = 64 << 20       # DATA or the BDAT chunks of one transaction


class NextHopError(AssertionError):
    """A wait timed out, or a next hop could not start."""


class Unavailable(Exception):
    """The program a next hop needs is not installed (tests skip: exit 77)."""


# One acknowledged transaction. rcpts are the recipients the server accepted (for LMTP:
# those that got a 2xx after the data); data_bytes is the message as the client meant it
# (dot-unstuffed for DATA, the concatenated chunks for BDAT), CRLF line ends included;
# proto is "SMTP", "ESMTP" or "LMTP"; bdat is True for BDAT; tls: the session was in TLS.
Received = collections.namedtuple("Received", "mail_from rcpts data_bytes proto bdat tls",
                                  defaults=(False,))


def _free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_port(port, host="127.0.0.1", timeout=TIMEOUT, greeting=True):
    """Until something listens on host:port (and, with greeting, sends a 220/2xx)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                if not greeting:
                    return
                if s.recv(100)[:1] == b"2":
                    return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise NextHopError("nothing answering on %s:%d after %.0fs (%s)" % (host, port, timeout, last))


def make_reachable(path):
    """Helpers that drop privileges (smtp-sink -u nobody, Dovecot's mail processes) must
    reach path: give o+x to its ancestors inside the temporary directory (mkdtemp makes
    them 0700); anywhere else, refuse with a clear reason instead of a later obscure
    failure. Only matters as root."""
    if os.geteuid() != 0:
        return
    tmp = os.path.realpath(tempfile.gettempdir())
    p = os.path.dirname(os.path.realpath(path))
    while p not in ("/", ""):
        mode = os.stat(p).st_mode
        if not mode & 0o001:
            if p.startswith(tmp + os.sep):
                os.chmod(p, (mode & 0o7777) | 0o011)
            else:
                raise NextHopError("%s: not searchable by unprivileged users (mode %o): "
                                   "the next hop runs as nobody" % (p, mode & 0o7777))
        p = os.path.dirname(p)


def _reply_tuple(r):
    code, text = r
    return int(code), str(text)


# ---------------------------------------------------------------- FakeMX

class _Conn:
    """One accepted connection: a socket (maybe TLS-wrapped) and a read buffer."""

    def __init__(self, sock, timeout):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""
        self.out = []

    def fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError
        self.buf += d

    def more_pending(self):
        """Input already here or readable now, without blocking: the client pipelined."""
        if self.buf:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(r)

    def line(self, limit=LINE_MAX):
        """One line up to and including its LF (the caller checks for CR LF). More than
        limit octets without one raises _LineTooLong."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                ln, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return ln
            if len(self.buf) > limit:
                raise _LineTooLong
            self.fill()

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def reply(self, code, text, flush=False):
        """Queue a reply; text may hold several lines (a multi-line reply)."""
        lines = str(text).split("\n")
        for i, t in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            self.out.append(("%03d%s%s\r\n" % (code, sep, t)).encode("utf-8"))
        if flush:
            self.flush()

    def flush(self):
        if self.out:
            data, self.out = b"".join(self.out), []
            self.sock.sendall(data)


class _LineTooLong(Exception):
    pass


class _Drop(Exception):
    """Close the connection now, without a reply."""


class FakeMX:
    """A scriptable SMTP/LMTP next hop on 127.0.0.1 (or a unix socket).

    Protocol: strict CRLF (a bare LF or CR in a command is answered 500 5.5.2; in the
    message data it is a 550 5.6.11 at end of data, and both are recorded in .errors),
    dot-unstuffing, BDAT (RFC 3030) when chunking=True, PIPELINING (RFC 2920; commands
    are read as a stream and the replies queued, in order, and written when no more input
    is pending, as Postfix does; pipelining=False stops offering it and records
    a client that pipelines anyway in .errors), LMTP (RFC 2033: LHLO, then one reply per
    accepted recipient after the data), STARTTLS (RFC 3207) with starttls_cert=(cert,key);
    plaintext pipelined after STARTTLS is recorded in .errors and discarded.

    Scripting (plain attributes, changeable at any time; a reply is (code, text)):
      mail_reply          (code, text) or callable(sender) -> (code, text) or None
      rcpt_reply          (code, text) or callable(addr) -> (code, text) or None
      data_reply          (code, text) or callable(Received) -> (code, text) or None:
                          the final reply after the data (SMTP)
      lmtp_rcpt_reply     (code, text) or callable(addr) -> ... : LMTP's per-recipient
                          final replies
      tempfail_until      time.time() value: MAIL gets 451 4.3.0 before then
      drop_after_data     True: close without replying once the data is in, every time;
                          an int N: the next N times. The transaction goes to .dropped,
                          not .messages: the relay did not get an answer and must retry,
                          so the MX may see the message twice (at-least-once).
      policy              callable(event, conn_info, arg) -> (code, text) or None, asked
                          first for every event ("connect", "helo", "mail", "rcpt",
                          "data", "bdat", "eom"); None falls through to the attributes.
                          "connect" may also return "drop" to close at once.
    None as a reply means the default (250 / 2xx). Replies of 4xx/5xx to MAIL or RCPT
    keep the transaction state as a real server would (no MAIL, or that recipient not
    added).

    State (read any time, under no lock: lists are appended to atomically):
      .messages   acknowledged transactions (Received); .dropped, .errors (strings)
      .counters() dict: connections, transactions (MAIL accepted), messages, rcpts_refused,
                  mail_refused, tempfails, dropped, tls, quits, max_pipelined (the most
                  commands found queued in one read: >1 means the client pipelined)
    .wait_for(n, timeout) waits until len(.messages) >= n, returns the list.
    .refuse() closes the listener and every session (connections are refused: "next hop
    down"); .accept_again() listens on the same port again ("back up").
    """

    def __init__(self, lmtp=False, chunking=False, pipelining=True, starttls_cert=None,
                 port=0, unix_path=None, hostname="fakemx.test", timeout=TIMEOUT,
                 size_limit=MESSAGE_MAX):
        self.lmtp = lmtp
        self.chunking = chunking
        self.pipelining = pipelining
        self.hostname = hostname
        self.timeout = timeout
        self.size_limit = size_limit
        self.unix_path = unix_path
        self.mail_reply = None
        self.rcpt_reply = None
        self.data_reply = None
        self.lmtp_rcpt_reply = None
        self.tempfail_until = 0.0
        self.drop_after_data = False
        self.policy = None
        self.messages = []
        self.dropped = []
        self.errors = []
        self._counts = collections.Counter()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closing = False
        self._threads = []
        self._socks = set()
        self._listener = None
        self._acceptor = None
        self._qid = 0
        self._tls_ctx = None
        if starttls_cert is not None:
            cert, key = starttls_cert
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self._tls_ctx = ctx
        self.port = port
        self._listen()

    # -- life cycle
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _listen(self):
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except FileNotFoundError:
                pass
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ls.bind(self.unix_path)
            os.chmod(self.unix_path, 0o666)
        else:
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    ls.bind(("127.0.0.1", self.port))
                    break
                except OSError:
                    # accept_again(): the old port may be held briefly by a late
                    # connect; anything else is a real conflict after the timeout.
                    if self.port == 0 or time.monotonic() > deadline:
                        ls.close()
                        raise
                    time.sleep(0.05)
            self.port = ls.getsockname()[1]
        ls.listen(128)
        ls.settimeout(0.1)
        self._listener = ls
        t = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True,
                             name="fakemx-accept")
        self._acceptor = t
        t.start()

    def _stop_listening(self, close_sessions):
        ls, self._listener = self._listener, None
        if ls is not None:
            ls.close()
        if self._acceptor is not None:
            self._acceptor.join(self.timeout)
            self._acceptor = None
        if close_sessions:
            with self._lock:
                socks = list(self._socks)
            for s in socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def refuse(self, close_sessions=True):
        """Next hop down: stop listening (connects get ECONNREFUSED) and, by default,
        cut every open session."""
        self._stop_listening(close_sessions)

    def accept_again(self):
        """Next hop back up, on the same port (or unix path)."""
        if self._listener is None and not self._closing:
            self._listen()

    def close(self):
        self._closing = True
        self._stop_listening(True)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(self.timeout)
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass

    # -- state
    def counters(self):
        with self._lock:
            c = dict(self._counts)
        c["messages"] = len(self.messages)
        for k in ("connections", "transactions", "rcpts_refused", "mail_refused", "tempfails",
                  "dropped", "tls", "quits", "max_pipelined"):
            c.setdefault(k, 0)
        return c

    def wait_for(self, n, timeout=TIMEOUT):
        """Wait until at least n transactions were acknowledged; returns .messages."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NextHopError("FakeMX: %d message(s) after %.0fs, wanted %d; "
                                       "counters %r, errors %r" % (
                                           len(self.messages), timeout, n,
                                           dict(self._counts), self.errors[:5]))
                self._cond.wait(min(left, 0.1))
        return list(self.messages)

    def _count(self, key, n=1):
        with self._lock:
            self._counts[key] += n

    def _error(self, msg):
        with self._lock:
            if len(self.errors) < 100:
                self.errors.append(msg)

    # -- server
    def _accept_loop(self, ls):
        while not self._closing:
            try:
                s, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return          # closed by refuse()/close()
            if self._closing or self._listener is not ls:
                s.close()
                return
            t = threading.Thread(target=self._serve, args=(s,), daemon=True,
                                 name="fakemx-session")
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
                self._socks.add(s)
                self._counts["connections"] += 1
            t.start()

    def _ask(self, event, info, arg, attr_value):
        """The reply the script wants for event, or None for the default."""
        if self.policy is not None:
            r = self.policy(event, info, arg)
            if r is not None:
                return r
        if attr_value is None:
            return None
        if callable(attr_value):
            r = attr_value(arg)
            return None if r is None else _reply_tuple(r)
        return _reply_tuple(attr_value)

    def _serve(self, sock):
        conn = _Conn(sock, self.timeout)
        info = {"tls": False, "helo": None, "peer": None}
        try:
            info["peer"] = sock.getpeername()
        except OSError:
            pass
        try:
            if self.policy is not None and self.policy("connect", info, None) == "drop":
                return
            conn.reply(220, "%s %s fakemx" % (self.hostname, "LMTP" if self.lmtp else "ESMTP"),
                       flush=True)
            self._session(conn, info)
        except (EOFError, _Drop):
            pass
        except _LineTooLong:
            self._error("more than %d octets of message data without a line end" % MESSAGE_MAX)
        except (socket.timeout, TimeoutError):
            self._error("session timed out after %.0fs" % self.timeout)
        except (OSError, ssl.SSLError) as e:
            if not self._closing:
                self._error("session: %r" % (e,))
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass
            with self._lock:
                self._socks.discard(sock)

    def _session(self, conn, info):
        tx = None           # {"from": str, "rcpts": [...], "chunks": [...]} once MAIL is in
        ehlo = False
        batch = 0           # commands read since the client last waited for a reply
        while True:
            if not conn.more_pending():
                conn.flush()    # replies go out when the client has nothing more queued
                batch = 0
            try:
                raw = conn.line()
            except _LineTooLong:
                conn.reply(500, "5.5.2 Error: line too long", flush=True)
                self._error("command line over %d octets" % LINE_MAX)
                raise _Drop
            batch += 1
            with self._lock:
                if batch > self._counts["max_pipelined"]:
                    self._counts["max_pipelined"] = batch
            if batch > 1 and not self.pipelining:
                self._error("client pipelined without PIPELINING: %r" % raw[:80])
            if not raw.endswith(b"\r\n") or b"\r" in raw[:-2]:
                self._error("command without strict CRLF: %r" % raw[:80])
                conn.reply(500, "5.5.2 Error: bare <LF> or <CR> received")
                continue
            line = raw[:-2].decode("utf-8", "replace")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO", "LHLO"):
                if (verb == "LHLO") != self.lmtp:
                    conn.reply(500, "5.5.1 Error: %s not allowed here" % verb)
                    continue
                r = self._ask("helo", info, arg, None)
                if r is not None and r[0] >= 400:
                    conn.reply(*r)
                    continue
                ehlo, tx = True, None
                info["helo"] = arg
                info["esmtp"] = verb != "HELO"
                if verb == "HELO":
                    conn.reply(250, self.hostname)
                    continue
                ext = ["SIZE %d" % self.size_limit, "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
                if self.pipelining:
                    ext.insert(0, "PIPELINING")
                if self.chunking:
                    ext.append("CHUNKING")
                if self._tls_ctx is not None and not info["tls"]:
                    ext.append("STARTTLS")
                conn.reply(250, "\n".join([self.hostname] + ext))
            elif verb == "STARTTLS":
                if self._tls_ctx is None or info["tls"]:
                    conn.reply(502, "5.5.1 Error: command not implemented")
                    continue
                conn.reply(220, "2.0.0 Ready to start TLS", flush=True)
                if conn.buf:
                    self._error("plaintext pipelined after STARTTLS (CVE-2011-0411): %r"
                                % conn.buf[:80])
                    conn.buf = b""
                conn.sock = self._tls_ctx.wrap_socket(conn.sock, server_side=True)
                info["tls"] = True
                ehlo, tx = False, None   # RFC 3207 4.2: forget everything
                self._count("tls")
            elif verb == "MAIL":
                if not ehlo:
                    conn.reply(503, "5.5.1 Error: send %s first" % ("LHLO" if self.lmtp else "HELO/EHLO"))
                    continue
                if tx is not None:
                    conn.reply(503, "5.5.1 Error: nested MAIL command")
                    continue
                m = re.match(r"(?i)FROM:\s*<([^>]*)>", arg)
                if not m:
                    conn.reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
                    continue
                sender = m.group(1)
                if time.time() < self.tempfail_until:
                    self._count("tempfails")
                    conn.reply(451, "4.3.0 Error: try again later")
                    continue
                r = self._ask("mail", info, sender, self.mail_reply)
                if r is not None and r[0] >= 300:
                    self._count("mail_refused")
                    conn.reply(*r)
                    continue
                tx = {"from": sender, "rcpts": [], "chunks": [], "size": 0, "bdat": False,
                      "bad": None}
                self._count("transactions")
                conn.reply(*(r or (250, "2.1.0 Ok")))
            elif verb == "RCPT":
                if tx is None:
                    conn.reply(503, "5.5.1 Error: need MAIL command")
                    continue
                m = re.match(r"(?i)TO:\s*<([^>]*)>", arg)
                if not m:
                    conn.reply(501, "5.5.4 Syntax: RCPT TO:<address>")
                    continue
                addr = m.group(1)
                r = self._ask("rcpt", info, addr, self.rcpt_reply)
                if r is not None and r[0] >= 300:
                    self._count("rcpts_refused")
                    conn.reply(*r)
                    continue
                tx["rcpts"].append(addr)
                conn.reply(*(r or (250, "2.1.5 Ok")))
            elif verb == "DATA":
                self._count("data")
                if tx is None or tx["bdat"]:
                    conn.reply(503, "5.5.1 Error: need MAIL command" if tx is None
                               else "5.5.1 Error: DATA after BDAT")
                    continue
                if not tx["rcpts"]:
                    conn.reply(554, "5.5.1 Error: no valid recipients")
                    continue
                r = self._ask("data", info, None, None)
                if r is not None and r[0] >= 400:
                    conn.reply(*r)
                    tx = None
                    continue
                conn.reply(354, "End data with <CR><LF>.<CR><LF>", flush=True)
                self._read_data(conn, tx)
                self._end_of_data(conn, tx, info)
                tx = None
            elif verb == "BDAT":
                if not self.chunking:
                    self._error("BDAT without CHUNKING offered")
                    conn.reply(500, "5.5.1 Error: BDAT not offered", flush=True)
                    raise _Drop
                m = re.match(r"(\d+)(\s+LAST)?\s*$", arg, re.I)
                if not m:
                    conn.reply(501, "5.5.4 Syntax: BDAT size [LAST]", flush=True)
                    raise _Drop     # the chunk size is unknown: cannot resync
                n, last = int(m.group(1)), bool(m.group(2))
                chunk = conn.exact(n)
                if tx is None or not tx["rcpts"]:
                    conn.reply(503 if tx is None else 554,
                               "5.5.1 Error: need MAIL command" if tx is None
                               else "5.5.1 Error: no valid recipients")
                    if last:
                        tx = None
                    elif tx is not None:
                        tx["bad"] = "no valid recipients"
                    continue
                tx["bdat"] = True
                tx["size"] += n
                if tx["size"] <= self.size_limit:
                    tx["chunks"].append(chunk)
                r = self._ask("bdat", info, chunk, None)
                if r is not None and r[0] >= 400:
                    conn.reply(*r)
                    tx = None if last else dict(tx, bad="refused chunk")
                    continue
                if not last:
                    conn.reply(250, "2.0.0 %d octets received" % n)
                    continue
                self._end_of_data(conn, tx, info)
                tx = None
            elif verb == "RSET":
                self._count("rset")
                tx = None
                conn.reply(250, "2.0.0 Ok")
            elif verb == "NOOP":
                conn.reply(250, "2.0.0 Ok")
            elif verb == "VRFY":
                conn.reply(252, "2.0.0 Send some mail, I'll try my best")
            elif verb == "QUIT":
                self._count("quits")
                conn.reply(221, "2.0.0 Bye", flush=True)
                return
            else:
                conn.reply(502, "5.5.2 Error: command not recognized")

    def _read_data(self, conn, tx):
        """DATA content up to CRLF.CRLF, dot-unstuffed, into tx["chunks"]."""
        out = []
        size = 0
        while True:
            ln = conn.line(MESSAGE_MAX)     # message lines: only the total is bounded
            if ln == b".\r\n":
                break
            if ln.startswith(b"."):
                ln = ln[1:]
            if (not ln.endswith(b"\r\n") or b"\r" in ln[:-2]) and tx["bad"] is None:
                tx["bad"] = "bare <LF> or <CR> in the message data"
                self._error("%s: %r" % (tx["bad"], ln[:80]))
            size += len(ln)
            if size <= self.size_limit:
                out.append(ln)
            elif tx["bad"] is None:
                tx["bad"] = "message too big"
        tx["chunks"] = out
        tx["size"] = size

    def _end_of_data(self, conn, tx, info):
        data = b"".join(tx["chunks"])
        if self.lmtp:
            proto = "LMTP"
        else:
            proto = "ESMTP" if info.get("esmtp") else "SMTP"
        rec = Received(tx["from"], list(tx["rcpts"]), data, proto, tx["bdat"], info["tls"])
        drop = self.drop_after_data
        if drop is True or (isinstance(drop, int) and drop > 0):
            if drop is not True:
                self.drop_after_data = drop - 1
            with self._lock:
                self.dropped.append(rec)
                self._counts["dropped"] += 1
            raise _Drop
        if tx["bad"] is not None:
            code, text = ((552, "5.3.4 Error: message too big") if tx["bad"] == "message too big"
                          else (550, "5.6.11 Error: " + tx["bad"]))
            for _ in (tx["rcpts"] if self.lmtp else [None]):
                conn.reply(code, text)
            return
        if self.lmtp:
            ok = []
            for a in tx["rcpts"]:
                r = self._ask("eom", info, a, self.lmtp_rcpt_reply)
                code, text = r or (250, "2.0.0 <%s> Ok: queued as %s" % (a, self._next_qid()))
                conn.reply(code, text)
                if code < 300:
                    ok.append(a)
            if ok:
                self._record(rec._replace(rcpts=ok))
            return
        r = self._ask("eom", info, rec, self.data_reply)
        code, text = r or (250, "2.0.0 Ok: queued as %s" % self._next_qid())
        if code < 300:
            self._record(rec)
        conn.reply(code, text)

    def _next_qid(self):
        with self._lock:
            self._qid += 1
            return "FMX%06d" % self._qid

    def _record(self, rec):
        with self._cond:
            self.messages.append(rec)
            self._cond.notify_all()


# ---------------------------------------------------------------- smtp-sink

# One transaction from a smtp-sink dump file. data is the message with CRLF line ends,
# rebuilt from the dump (which holds LF line ends, dot-unstuffed); sender and rcpts
# without <>; mail_args/rcpt_args the whole command arguments (ESMTP parameters too).
Dumped = collections.namedtuple("Dumped", "sender rcpts data helo proto mail_args rcpt_args path")


def parse_sink_dump(raw, path=None):
    """Parse one smtp-sink -d file (bytes) into a Dumped.

    The format (smtp-sink(1) "DUMP FILE FORMAT", checked with swaks on Postfix 3.7):
        X-Client-Addr: 127.0.0.1
        X-Client-Proto: ESMTP            (SMTP, ESMTP or LMTP)
        X-Helo-Args: client.test         (absent without HELO/EHLO/LHLO)
        X-Mail-Args: <a@s.test> SIZE=12  (exactly once)
        X-Rcpt-Args: <b@x.test>          (one per RCPT command, in order)
        Received: from HELO ([ADDR])
        <TAB>by HOST (smtp-sink) with PROTO id RANDOM;
        <TAB>DATE
        ...the message, dot-unstuffed, every line ending in LF instead of CRLF...
        (one empty line)
    Lines are written with LF only, whatever ended them on the wire (CRLF or a bare LF),
    so the data is exact for messages whose lines all end in CRLF (the only kind a
    correct relay sends) and nothing can be said about bare LFs from a dump: use FakeMX
    for that."""
    lines = raw.split(b"\n")
    hdr = {"X-Client-Proto": None, "X-Helo-Args": None, "X-Mail-Args": None}
    rcpt_args = []
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        k, _, v = lines[i].decode("utf-8", "replace").partition(": ")
        if k == "X-Rcpt-Args":
            rcpt_args.append(v)
        else:
            hdr[k] = v
        i += 1
    if i + 3 > len(lines) or not lines[i].startswith(b"Received: ") \
            or not lines[i + 1].startswith(b"\t") or not lines[i + 2].startswith(b"\t"):
        raise ValueError("%s: not a smtp-sink dump (no 3-line Received after X- headers)" % path)
    body = lines[i + 3:]
    # The dump ends in the message's last LF plus one empty line: "...last\n\n".
    if len(body) < 2 or body[-1] != b"" or body[-2] != b"":
        raise ValueError("%s: incomplete smtp-sink dump" % path)
    body = body[:-2]
    data = b"".join(ln + b"\r\n" for ln in body)

    def addr(a):
        m = re.match(r"\s*<([^>]*)>", a)
        return m.group(1) if m else a.split(" ")[0]
    mail = hdr["X-Mail-Args"] or ""
    return Dumped(addr(mail), [addr(a) for a in rcpt_args], data, hdr["X-Helo-Args"],
                  hdr["X-Client-Proto"], mail, rcpt_args, path)


class SmtpSink:
    """Postfix smtp-sink on 127.0.0.1:port (0 = a free one), -L with lmtp, -d dumps into
    dump_dir (one file per transaction, parsed by .messages()), -c counters read from
    its stdout (.count(): messages whose "." was received, .sessions()).

    As root it runs with -u nobody (smtp-sink refuses to run as root otherwise), so
    dump_dir is made writable by nobody. extra_args go before the address, e.g.
    ("-r", "RCPT") for 4xx to every RCPT, ("-q", ".") to hang up instead of answering
    the end of data. Raises Unavailable when smtp-sink is missing."""

    def __init__(self, port=0, lmtp=False, dump_dir=None, hostname="sink.test", extra_args=(),
                 backlog=256, max_connections=1000, timeout=TIMEOUT):
        if not os.access(SMTP_SINK, os.X_OK):
            raise Unavailable("%s is not installed (apt-get install postfix)" % SMTP_SINK)
        self.lmtp = lmtp
        self.dump_dir = dump_dir
        self.timeout = timeout
        self.proc = None
        self._counts = {"sess": 0, "quit": 0, "mesg": 0}
        self._lock = threading.Lock()
        self._reader = None
        if dump_dir is not None:
            os.makedirs(dump_dir, exist_ok=True)
            if os.geteuid() == 0:
                os.chmod(dump_dir, 0o777)
                make_reachable(dump_dir)
        last = None
        for _attempt in range(3):
            self.port = port or _free_port()
            args = [SMTP_SINK, "-c", "-h", hostname, "-m", str(max_connections)]
            if os.geteuid() == 0:
                args += ["-u", "nobody"]
            if lmtp:
                args.append("-L")
            if dump_dir is not None:
                # strftime template + a random hex suffix: "DIR/20261128151257.4a11c065"
                args += ["-d", os.path.join(os.path.abspath(dump_dir), "%Y%m%d%H%M%S.")]
            args += list(extra_args) + ["127.0.0.1:%d" % self.port, str(backlog)]
            self.args = args
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
            try:
                wait_port(self.port, timeout=timeout)
                break
            except NextHopError as e:
                last = e
                err = self._kill()
                if port:    # a fixed port: no point in retrying
                    raise NextHopError("smtp-sink did not start: %s %s" % (e, err))
        else:
            raise NextHopError("smtp-sink did not start: %s" % last)
        self._reader = threading.Thread(target=self._read_counters, daemon=True,
                                        name="smtp-sink-counters")
        self._reader.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _read_counters(self):
        # -c writes "sess=N quit=N mesg=N\r" each time a session ends, QUIT or "." arrives.
        buf = b""
        rx = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")
        while True:
            d = self.proc.stdout.read1(4096)
            if not d:
                return
            buf += d
            *done, buf = buf.split(b"\r")
            for rec in done[-1:]:
                m = rx.search(rec)
                if m:
                    with self._lock:
                        self._counts = {"sess": int(m.group(1)), "quit": int(m.group(2)),
                                        "mesg": int(m.group(3))}

    def count(self):
        """Messages whose end of data smtp-sink has seen (its -c "mesg" counter)."""
        with self._lock:
            return self._counts["mesg"]

    def counters(self):
        with self._lock:
            return dict(self._counts)

    def wait_for(self, n, timeout=TIMEOUT):
        """Wait until n messages were received (and, with dump_dir, n complete dumps);
        returns .messages() with dump_dir, else the count."""
        deadline = time.monotonic() + timeout
        while True:
            if self.count() >= n:
                if self.dump_dir is None:
                    return self.count()
                try:
                    msgs = self.messages()
                    if len(msgs) >= n:
                        return msgs
                except ValueError:
                    pass        # a dump still being written
            if time.monotonic() > deadline:
                raise NextHopError("smtp-sink: %d message(s) after %.0fs, wanted %d"
                                   % (self.count(), timeout, n))
            if self.proc.poll() is not None:
                raise NextHopError("smtp-sink exited with %s: %s"
                                   % (self.proc.returncode, self.proc.stderr.read()[-500:]))
            time.sleep(0.02)

    def messages(self):
        """Every dumped transaction, oldest first (by file time, then name)."""
        if self.dump_dir is None:
            raise NextHopError("SmtpSink without dump_dir has no messages")
        files = [f for f in glob.glob(os.path.join(self.dump_dir, "*")) if os.path.isfile(f)]
        files.sort(key=lambda f: (os.stat(f).st_mtime_ns, f))
        out = []
        for f in files:
            with open(f, "rb") as fh:
                out.append(parse_sink_dump(fh.read(), f))
        return out

    def _kill(self):
        err = b""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            try:
                err = self.proc.stderr.read() or b""
            except (OSError, ValueError):
                pass
        return err.decode("utf-8", "replace")[-500:]

    def close(self):
        self._kill()
        if self._reader is not None:
            self._reader.join(self.timeout)
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except (OSError, AttributeError):
                pass


# ---------------------------------------------------------------- Dovecot LMTP

DOVECOT_CONF = """\
# Written by tests/integration/nexthop.py: a private Dovecot LMTP next hop. Nothing
# here reads /etc/dovecot or touches the system instance (its own base_dir, state_dir,
# instance_name and log files).
protocols = lmtp
instance_name = {name}
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
info_log_path = {tmp}/dovecot.log
debug_log_path = {tmp}/dovecot.log
listen = 127.0.0.1
ssl = no
# The internal and login processes run as this user (Debian's defaults are
# dovecot/dovenull, which exist only with the package's own configuration applied).
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
# nobody's uid (65534) is above the default first_valid_uid (500), but a non-root test
# run delivers as the invoking user, which may be below it.
first_valid_uid = 1
mail_location = maildir:{tmp}/maildirs/%d/%n
# Any user@domain exists and delivers to maildirs/DOMAIN/USER as {user} (or, with
# users=, only those listed in {tmp}/users).
passdb {{
  driver = static
  args = nopassword=y
}}
{userdb}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"""


class DovecotLMTP:
    """A private Dovecot 2.3 LMTP server on 127.0.0.1:port (0 = a free one) and on the
    unix socket .unix_path, configured entirely inside tmpdir (dovecot.conf, run/,
    state/, maildirs/, dovecot.log). Any user@domain is accepted (static userdb) and
    delivered to the Maildir tmpdir/maildirs/DOMAIN/USER.

    Runs `dovecot -F -c tmpdir/dovecot.conf`; close() sends SIGTERM to its master and
    waits. As root, mail is owned by nobody:nogroup; otherwise by the invoking user.
    Raises Unavailable when dovecot (dovecot-core, dovecot-lmtpd) is not installed.

    What Dovecot adds in front of each delivered message (see strip_dovecot_headers):
        Return-Path: <SENDER>
        Delivered-To: RCPT          (only when the transaction had a single recipient)
        Received: from HELO ([127.0.0.1])
        <TAB>by HOST with LMTP
        <TAB>id ...
        <TAB>(envelope-from <SENDER>)
        <TAB>for <RCPT>; DATE       (the "for" clause also only for a single recipient)
    and it stores LF line ends (Maildir); the rest is the message as sent."""

    def __init__(self, tmpdir, port=0, timeout=TIMEOUT, users=None):
        """users: None (anyone exists), or the only user@domain addresses that exist
        (a passwd-file userdb): others get Dovecot's 550 5.1.1 at RCPT."""
        if not (os.access(DOVECOT, os.X_OK) and os.path.exists("/usr/lib/dovecot/lmtp")):
            raise Unavailable("dovecot is not installed (apt-get install dovecot-core dovecot-lmtpd)")
        self.tmp = os.path.abspath(tmpdir)
        self.timeout = timeout
        self.proc = None
        if os.geteuid() == 0:
            user, group = "nobody", "nogroup"
        else:
            user = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
        uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        self.maildirs = os.path.join(self.tmp, "maildirs")
        for d in (self.tmp, self.maildirs):
            os.makedirs(d, exist_ok=True)
        # nobody must reach maildirs/ through tmpdir (mkdtemp makes it 0700).
        os.chmod(self.tmp, 0o755)
        make_reachable(self.tmp)
        if os.geteuid() == 0:
            os.chown(self.maildirs, uid, gid)
        self.conf = os.path.join(self.tmp, "dovecot.conf")
        self.log_path = os.path.join(self.tmp, "dovecot.log")
        self.unix_path = os.path.join(self.tmp, "run", "lmtp")
        if users is None:
            userdb = ("userdb {\n  driver = static\n  args = uid=%d gid=%d home=%s/maildirs/%%d/%%n\n}"
                      % (uid, gid, self.tmp))
        else:
            with open(os.path.join(self.tmp, "users"), "w") as f:
                for u in users:
                    f.write("%s::%d:%d::%s/maildirs/%s::\n" % (u, uid, gid, self.tmp, u))
            userdb = "userdb {\n  driver = passwd-file\n  args = %s/users\n}" % self.tmp
        last = None
        for _attempt in range(3):
            self.port = port or _free_port()
            with open(self.conf, "w") as f:
                f.write(DOVECOT_CONF.format(name="ringmx-test-%d" % self.port, tmp=self.tmp,
                                            userdb=userdb,
                                            user=user, group=group, uid=uid, gid=gid,
                                            port=self.port))
            self._out = open(os.path.join(self.tmp, "dovecot.stderr"), "wb")
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf],
                                         stdin=subprocess.DEVNULL, stdout=self._out,
                                         stderr=subprocess.STDOUT)
            try:
                wait_port(self.port, timeout=timeout)
                return
            except NextHopError as e:
                last = "%s; %s" % (e, self.log()[-1500:])
                self.close()
                if port:
                    break
        raise NextHopError("dovecot did not start: %s" % last)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def log(self):
        out = ""
        for name in ("dovecot.log", "dovecot.stderr"):
            try:
                with open(os.path.join(self.tmp, name), "rb") as f:
                    out += f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                pass
        return out

    def maildir_messages(self, user, domain):
        """The delivered messages (raw bytes as stored, Dovecot's headers included) of
        user@domain, in delivery order (Maildir new/ and cur/)."""
        base = os.path.join(self.maildirs, domain.lower(), user.lower())
        files = []
        for sub in ("new", "cur"):
            files += glob.glob(os.path.join(base, sub, "*"))
        # Maildir names start with the delivery time: SECONDS.M<usec>P<pid>...
        def key(f):
            m = re.match(r"(\d+)\.M(\d+)", os.path.basename(f))
            return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        out = []
        for f in sorted(files, key=key):
            with open(f, "rb") as fh:
                out.append(fh.read())
        return out

    def wait_for(self, user, domain, n, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.maildir_messages(user, domain)
            if len(msgs) >= n:
                return msgs
            if time.monotonic() > deadline:
                raise NextHopError("dovecot: %d message(s) for %s@%s after %.0fs, wanted %d; "
                                   "log tail: %s" % (len(msgs), user, domain, timeout, n,
                                                     self.log()[-1000:]))
            time.sleep(0.02)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_out", None) is not None:
            self._out.close()
            self._out = None


def strip_dovecot_headers(stored):
    """Split a message as Dovecot stored it into (added, original): added is a dict of
    the headers Dovecot put in front (Return-Path, Delivered-To, Received; values
    unfolded), original the message as sent, with CRLF line ends restored."""
    lines = stored.split(b"\n")
    added = {}
    i = 0
    for name in (b"Return-Path", b"Delivered-To", b"Received"):
        if i < len(lines) and lines[i].lower().startswith(name.lower() + b":"):
            val = lines[i].split(b":", 1)[1].strip()
            i += 1
            if name == b"Received":
                while i < len(lines) and lines[i][:1] in (b"\t", b" "):
                    val += b" " + lines[i].strip()
                    i += 1
            added[name.decode()] = val.decode("utf-8", "replace")
    rest = lines[i:]
    if rest and rest[-1] == b"":
        rest = rest[:-1]
    return added, b"".join(ln + b"\r\n" for ln in rest)

