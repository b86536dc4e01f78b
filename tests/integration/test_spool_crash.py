#!/usr/bin/env python3
"""test_spool_crash - an acknowledged message is never lost.

Client threads send messages (each with a unique Message-ID) over many
connections while ringmxd is killed with SIGKILL at random moments and
restarted on the same spool_dir. After the last round every message that got
"250 ... queued as ID" must come back byte-exact through ringmx-spool (the
Received: header, then exactly the bytes sent), and `verify` must be clean.
3 rounds by default, 20 with RINGMX_SOAK=1.

Owner: the spool module (issue 3). Standalone: exit 0 / 1 / 77, last line
"N passed, M failed"."""

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from ringmx_harness import Suite, Server, check, check_eq, fail, TIMEOUT

T = Suite(__file__)
SOAK = os.environ.get("RINGMX_SOAK") == "1"
ROUNDS = 20 if SOAK else 3
THREADS = 8
QID_RE = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-Z]{13})\r\n", re.M)


def spool_tool():
    p = os.environ.get("RINGMX_SPOOL")
    if not p:
        p = os.path.join(os.path.dirname(os.environ.get("RINGMXD", "build-test/ringmxd")),
                         "tools", "ringmx-spool")
    return os.path.abspath(p)


class Sender(threading.Thread):
    """Sends messages over fresh connections until told to stop; records
    (qid, message id, bytes) of every message answered 250."""

    def __init__(self, idx, state):
        super().__init__(daemon=True)
        self.idx = idx
        self.state = state
        self.acked = []
        self.seq = 0

    def message(self):
        self.seq += 1
        mid = "<c%d.%d.%d@crash.test>" % (self.state["round"], self.idx, self.seq)
        size = random.choice((200, 1500, 9000, 70000))
        lines = ["From: c@crash.test", "To: u@example.test", "Message-ID: " + mid,
                 "Subject: crash %s" % mid, ""]
        body = "\r\n".join(lines) + "\r\n"
        body += ("%s %s\r\n" % (mid, "z" * 60)) * (size // 80 + 1)
        return mid, body.encode()

    def reply(self, sock, buf):
        while True:
            m = re.search(rb"^(\d{3}) .*?\r\n", buf, re.M)
            if m:
                end = m.end()
                return buf[:end], buf[end:]
            d = sock.recv(65536)
            if not d:
                raise ConnectionError("closed")
            buf += d

    def session(self, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        buf = b""
        try:
            r, buf = self.reply(s, buf)
            s.sendall(b"EHLO crash.test\r\n")
            r, buf = self.reply(s, buf)
            for _ in range(random.randint(1, 30)):
                if self.state["stop"]:
                    return
                mid, data = self.message()
                # Pipelined: MAIL, RCPT, DATA in one write (RFC 2920).
                s.sendall(b"MAIL FROM:<c@crash.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
                for want in (b"250", b"250", b"354"):
                    r, buf = self.reply(s, buf)
                    if not r.startswith(want):
                        raise ConnectionError("unexpected %r" % r)
                s.sendall(data + b".\r\n")
                r, buf = self.reply(s, buf)
                m = QID_RE.match(r)
                if m:
                    # A digest, not the bytes: soak runs ack many messages.
                    self.acked.append((m.group(1).decode(), mid, len(data),
                                       hashlib.sha256(data).digest()))
                elif not r.startswith(b"4"):
                    self.state["errors"].append("unexpected end-of-data reply %r" % r)
            s.sendall(b"QUIT\r\n")
        finally:
            s.close()

    def run(self):
        while not self.state["stop"]:
            try:
                self.session(self.state["port"])
            except (OSError, ConnectionError):
                time.sleep(0.01)  # killed: wait for the next server


def kill(srv):
    srv.proc.kill()
    srv.proc.wait()
    srv.logf.close()
    srv.stopped = True
    bad = [ln for ln in srv.log().splitlines() if "DAMAGED" in ln or "panic" in ln
           or "runtime error" in ln or "AddressSanitizer" in ln]
    check(not bad, "ringmxd log: %s" % bad[:3])


@T.test("SIGKILL under load, %d rounds: every acknowledged message survives" % ROUNDS)
def _():
    d = tempfile.mkdtemp(prefix="ringmx-crash-")
    spool = os.path.join(d, "spool")
    state = {"stop": False, "port": 0, "round": 0, "errors": []}
    senders = [Sender(i, state) for i in range(THREADS)]
    args = ["-o", "sink=spool", "-o", "spool_dir=" + spool, "-o", "segment_size=1m"]
    try:
        started = False
        for rnd in range(ROUNDS):
            state["round"] = rnd
            srv = Server(args=args, workers=2, check_exit=False)
            srv.start()
            try:
                state["port"] = srv.port
                if not started:
                    for s in senders:
                        s.start()
                    started = True
                before = sum(len(s.acked) for s in senders)
                time.sleep(random.uniform(0.4, 1.5))
                # Make sure this round acknowledged something before the kill.
                deadline = time.monotonic() + TIMEOUT
                while sum(len(s.acked) for s in senders) == before:
                    check(time.monotonic() < deadline, "no message acknowledged this round")
                    time.sleep(0.05)
                kill(srv)
            finally:
                if not srv.stopped:
                    srv.proc.kill()
                    srv.proc.wait()
                srv.tmpdir.cleanup()
        state["stop"] = True
        for s in senders:
            s.join(TIMEOUT)
        check(not state["errors"], "client errors: %s" % state["errors"][:3])

        # Restart once more: recovery runs and must find no damage.
        with Server(args=args, workers=2) as srv:
            srv.wait_log(r"spool: .*/w1: \d+ segments?, \d+ messages")
            check("DAMAGED" not in srv.log(), "recovery found damage:\n" + srv.log()[-3000:])
        acked = [a for s in senders for a in s.acked]
        check(len(acked) > 0, "nothing acknowledged")
        v = subprocess.run([spool_tool(), "-d", spool, "verify"], capture_output=True,
                           timeout=60)
        check_eq(v.returncode, 0, "verify exit (%s)" % v.stdout[-1000:])
        md = os.path.join(d, "Maildir")
        subprocess.run([spool_tool(), "-d", spool, "export", "--maildir", md], check=True,
                       capture_output=True, timeout=120)
        files = {}
        for f in os.listdir(os.path.join(md, "new")):
            m = re.search(r"R([0-9A-Z]{13})\.", f)
            files[m.group(1)] = os.path.join(md, "new", f)
        lost = [a[0] for a in acked if a[0] not in files]
        check(not lost, "%d of %d acknowledged messages lost, e.g. %s"
              % (len(lost), len(acked), lost[:5]))
        for qid, mid, n, digest in acked:
            with open(files[qid], "rb") as f:
                got = f.read()
            if not (got.startswith(b"Received: ") and len(got) > n
                    and hashlib.sha256(got[-n:]).digest() == digest
                    and ("Message-ID: " + mid).encode() in got):
                fail("message %s (%s) is not byte-exact" % (qid, mid))
        print("     %d acknowledged messages over %d kills, all present and byte-exact"
              % (len(acked), ROUNDS), flush=True)
    finally:
        state["stop"] = True
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    T.main(requires=[spool_tool()])
