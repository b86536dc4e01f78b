"""relay_util - what the relay tests (test_relay*.py) share (Python 3 stdlib only).

    RelayServer(spool, hop, extra=(), workers=2)  a ringmxd with sink = spool relaying
                                                  to hop ("smtp:127.0.0.1:PORT", ...)
    spool_tool(), load_tool()                     $RINGMX_SPOOL, $RINGMX_LOAD
    queue_json(spool)                             ringmx-spool queue --json, by queue id
    send_message(srv, sender, rcpts, data)        one message with smtplib; its queue id
    run_load(args), load_check(manifest, msgs)    ringmx-load --verify, and the check of
                                                  what arrived against its manifest
"""

import json
import os
import re
import smtplib
import subprocess
import tempfile

from ringmx_harness import Server, Skip, check, check_eq, fail, scan_bad, TIMEOUT
import nexthop

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Fast retries for tests (docs/relay.md): the backoff is 1 s, then 2 s.
FAST = ("retry_min=1s", "retry_max=2s", "relay_idle_timeout=1s")

def _tool(env, *rel):
    p = os.environ.get(env)
    if not p:
        base = os.path.dirname(os.environ.get("RINGMXD", os.path.join(REPO, "build-test",
                                                                        "ringmxd")))
        p = os.path.join(base, *rel)
    return os.path.abspath(p)


def spool_tool():
    return _tool("RINGMX_SPOOL", "tools", "ringmx-spool")


def load_tool():
    return _tool("RINGMX_LOAD", "tools", "ringmx-load")


def use_fault_daemon():
    """Run the test daemon tests/ringmxd_faults (engine/runtime/fault.h hooks) as
    ringmxd from now on; skip (exit 77) if it is not built."""
    p = _tool("RINGMXD_FAULTS", "tests", "ringmxd_faults")
    if not os.access(p, os.X_OK):
        raise Skip("no fault-injection daemon at %s" % p)
    os.environ["RINGMXD"] = p


class RelayServer(Server):
    """ringmxd with sink = spool in `spool`, relay_host = hop, the fast retry settings
    and `extra` (key=value strings) on top."""

    def __init__(self, spool, hop, extra=(), workers=2, fast=True, **kw):
        args = ["-o", "sink=spool", "-o", "spool_dir=" + spool, "-o", "relay_host=" + hop]
        extra = tuple(extra)
        if not any(kv.startswith("segment_size=") for kv in extra):
            extra += ("segment_size=1m",)   # zero-filling 64 MiB per worker is slow under ASan
        for kv in (FAST if fast else ()) + extra:
            args += ["-o", kv]
        super().__init__(args=args, workers=workers, **kw)
        self.spool = spool

    def since(self):
        return self.log_size()


def hop(mx, proto="smtp", host="127.0.0.1"):
    return "%s:%s:%d" % (proto, host, mx.port)


def spool_cmd(spool, *args, timeout=30):
    return subprocess.run([spool_tool(), "-d", spool] + list(args), capture_output=True,
                          text=True, timeout=timeout)


def queue_json(spool):
    r = spool_cmd(spool, "queue", "--json")
    check(r.returncode == 0, "ringmx-spool queue --json: exit %d: %s" % (r.returncode, r.stderr))
    return {m["queue_id"]: m for m in map(json.loads, r.stdout.splitlines())}


def queue_text(spool):
    r = spool_cmd(spool, "queue")
    check(r.returncode == 0, "ringmx-spool queue: exit %d: %s" % (r.returncode, r.stderr))
    return r.stdout


def wait_queue_empty(spool, timeout=TIMEOUT):
    import time
    deadline = time.monotonic() + timeout
    while True:
        t = queue_text(spool)
        if "Mail queue is empty" in t:
            return
        if time.monotonic() > deadline:
            fail("queue not empty after %.0fs:\n%s" % (timeout, t[-2000:]))
        time.sleep(0.2)


QID_RE = re.compile(r"queued as ([0-9A-Z]{13})\b")


def send_message(srv, sender, rcpts, data, helo="smtplib.relay.test"):
    """One message (bytes, CRLF line ends) with smtplib.sendmail; returns the queue id."""
    with smtplib.SMTP(srv.host, srv.port, local_hostname=helo, timeout=TIMEOUT) as s:
        s.ehlo()
        code, _ = s.mail(sender)
        check_eq(code, 250, "MAIL FROM:<%s>" % sender)
        for r in rcpts:
            check_eq(s.rcpt(r)[0], 250, "RCPT TO:<%s>" % r)
        code, resp = s.data(data)
        check_eq(code, 250, "end of data reply %r" % resp)
        m = QID_RE.search(resp.decode())
        check(m is not None, "no queue id in %r" % resp)
        return m.group(1)


def message(subject, body_lines=("hello",), extra_headers=()):
    lines = ["From: a@sender.test", "To: u@example.test", "Subject: " + subject,
             "Message-ID: <%s@relay.test>" % re.sub(r"\W", ".", subject)]
    lines += list(extra_headers) + [""] + list(body_lines)
    return ("\r\n".join(lines) + "\r\n").encode()


def check_relayed(data, original, qid=None):
    """What the next hop got: ringmxd's Received: (one header field, starting with
    'Received: from', naming the queue id), then the original bytes exactly."""
    check(data.startswith(b"Received: from "), "no Received: first: %r" % data[:80])
    check(data.endswith(original), "not byte-exact: got %r, want ...%r"
          % (data[-200:], original[-200:]))
    hdr = data[:len(data) - len(original)]
    lines = hdr.split(b"\r\n")
    check(lines[-1] == b"" and all(ln.startswith(b"\t") for ln in lines[1:-1]),
          "ringmxd's Received: is not the only thing added: %r" % hdr)
    if qid is not None:
        check(("id " + qid).encode() in hdr, "Received: lacks id %s: %r" % (qid, hdr))


def qid_in(data):
    """The queue id in ringmxd's Received: header of a relayed message."""
    m = re.match(rb"Received: [^\r]*\r\n\t[^\r]* id ([0-9A-Z]{13})\b", data)
    check(m is not None, "no ringmxd Received: with an id: %r" % data[:200])
    return m.group(1).decode()


def status_lines(srv, qid, status=None, since=0):
    rx = re.compile(r"%s: to=<([^>]*)>, relay=.*status=(\w+)" % qid)
    out = []
    text = srv.log_since(since)
    for ln in text[:text.rfind("\n") + 1].splitlines():   # complete lines only
        m = rx.search(ln)
        if m and (status is None or m.group(2) == status):
            out.append(ln)
    return out


def need(fn):
    """Build a next hop; a missing program skips the script (exit 77)."""
    try:
        return fn()
    except nexthop.Unavailable as e:
        raise Skip(str(e))


# ---------------------------------------------------------------- ringmx-load

def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def run_load(args, timeout=120):
    """ringmx-load -q --json; returns (rc, json or None, stderr)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as jf:
        path = jf.name
    try:
        p = subprocess.run([load_tool(), "-q", "--json", path] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        try:
            with open(path) as f:
                js = json.load(f)
        except (OSError, ValueError):
            js = None
        return p.returncode, js, p.stderr
    finally:
        os.unlink(path)


def read_manifest(path):
    """id -> (size, sum) of every line of a --verify manifest."""
    out = {}
    with open(path) as f:
        for ln in f.read().splitlines():
            parts = ln.split()
            check(len(parts) == 4, "bad manifest line %r" % ln)
            out[parts[0]] = (int(parts[2]), parts[3])
    return out


def load_headers(data):
    """(X-Ringmx-Load-Id, X-Ringmx-Load-Sum, body) of one relayed load message."""
    head, sep, body = data.partition(b"\r\n\r\n")
    hdrs = {}
    for ln in head.split(b"\r\n"):
        k, _, v = ln.partition(b":")
        hdrs[k.strip().lower()] = v.strip().decode("utf-8", "replace")
    return hdrs.get(b"x-ringmx-load-id"), hdrs.get(b"x-ringmx-load-sum"), body if sep else None


def load_check(manifest, datas):
    """Every manifest id arrived, byte-exact (FNV-1a 64 of the body = the manifest's sum
    and the header's, size = the manifest's). Returns (counts id -> n, problems):
    problems lists unknown ids and damaged bodies; missing ids are manifest ids with
    count 0."""
    counts = {}
    problems = []
    for data in datas:
        mid, want, body = load_headers(data)
        if mid is None or body is None:
            problems.append("message without load headers: %r" % data[:200])
            continue
        if mid not in manifest:
            problems.append("id %s not in the manifest" % mid)
            continue
        size, msum = manifest[mid]
        got = "%016x" % fnv1a64(body)
        if got != msum or want != msum or len(body) != size:
            problems.append("%s: not byte-exact (sum %s, header %s, manifest %s; size %d/%d)"
                            % (mid, got, want, msum, len(body), size))
        counts[mid] = counts.get(mid, 0) + 1
    return counts, problems
