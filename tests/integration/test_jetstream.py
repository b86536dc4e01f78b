#!/usr/bin/env python3
"""sink = jetstream (issue 16): a private 3-node nats-server cluster with
JetStream on loopback ports; ringmx-load -> ringmxd -> a replicas=3 stream.

- the stream's leader is SIGKILLed in the middle of a run: every message
  that got a 250 is in the stream exactly once and byte for byte (read back
  with ringmx-jetstream dump, checksums of ringmx-load's manifest);
- the whole cluster down: 451 4.3.0, nothing acknowledged; back up: ringmxd
  accepts again by itself, and what was stored before is still there;
- the headers of docs/jetstream.md on a message with two recipients, the
  payload as the spool would hold it (ringmxd's Received: first);
- jetstream_max_pending bounds the publishes in flight (451 at MAIL), and
  SIGTERM with publishes in flight ends within jetstream_timeout;
- jetstream_create = no and a missing stream: one log line and 451;
- bad keys: one error naming file, line and key.
"""

import contextlib
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import urllib.request

from ringmx_harness import (Server, Skip, Suite, check, check_eq, fail, free_port, run,
                            ringmxd_path, wait_for, TIMEOUT)
from relay_util import fnv1a64, load_check, load_tool, read_manifest
import nexthop
from nexthop import DovecotLMTP, FakeMX, SmtpSink, Unavailable

T = Suite(__file__)
NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"
TOOL = os.environ.get("RINGMX_JETSTREAM") or os.path.join(
    os.path.dirname(ringmxd_path()), "tools", "ringmx-jetstream")
DELIVER = os.environ.get("RINGMX_DELIVER") or os.path.join(
    os.path.dirname(ringmxd_path()), "tools", "ringmx-deliver")
if not os.access(NATS, os.X_OK):
    print("skip %s: nats-server is not installed (Debian package nats-server)" % T.name)
    raise SystemExit(77)
TMP = tempfile.mkdtemp(prefix="ringmx-js-")


class Node:
    def __init__(self, name, client, route, mon, peers):
        self.name, self.client, self.route, self.mon = name, client, route, mon
        self.dir = os.path.join(TMP, name)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "nats.conf")
        with open(self.conf, "w") as f:
            f.write("server_name: %s\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\n"
                    "max_payload: 8MB\n"
                    "jetstream { store_dir: \"%s\" }\n"
                    "cluster { name: ringmx\n listen: 127.0.0.1:%d\n routes: [%s] }\n"
                    % (name, client, mon, os.path.join(self.dir, "store"), route,
                       ", ".join("nats-route://127.0.0.1:%d" % p for p in peers)))
        self.proc = None

    def url(self):
        return "nats://127.0.0.1:%d" % self.client

    def start(self):
        self.log = open(os.path.join(self.dir, "log"), "ab")
        self.proc = subprocess.Popen([NATS, "-c", self.conf], stdout=self.log,
                                     stderr=self.log, stdin=subprocess.DEVNULL)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def healthy(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.mon,
                                        timeout=2) as r:
                return r.status == 200
        except Exception:
            return False


def ports(n):
    out = []
    while len(out) < n:
        p = free_port()
        if p not in out:
            out.append(p)
    return out


P = ports(9)
NODES = [Node("n%d" % (i + 1), P[i], P[3 + i], P[6 + i],
              [P[3 + j] for j in range(3) if j != i]) for i in range(3)]
URLS = ", ".join(n.url() for n in NODES)


def cluster_up(nodes=NODES):
    for n in nodes:
        if n.proc is None:
            n.start()
    wait_for(lambda: all(n.healthy() for n in nodes), timeout=60,
             what="the JetStream cluster to be healthy")


def cluster_down(nodes=NODES):
    for n in nodes:
        n.kill()


def tool(*args, nodes=None, stream="MAIL"):
    urls = ",".join(n.url() for n in (nodes or [n for n in NODES if n.proc is not None]))
    r = run([TOOL, "-s", urls, "-S", stream] + list(args), timeout=60)
    check(r.returncode == 0, "ringmx-jetstream %s: %s" % (" ".join(args), r.stderr[:800]))
    return r.stdout


def info(stream="MAIL"):
    line = tool("info", stream=stream).strip()
    return dict(kv.split("=", 1) for kv in line.split())


def dump(body=True, stream="MAIL"):
    """[(fields, payload bytes or None)] in sequence order."""
    out = []
    for ln in tool("dump", *(["--body"] if body else []), stream=stream).splitlines():
        head, sep, raw = ln.partition(" body=")
        f = {}
        for kv in re.findall(r"(\w+)=(\S*)", head):
            f[kv[0]] = kv[1]
        payload = None
        if sep:
            payload = re.sub(rb"\\(r|n|\\|x[0-9a-f]{2})",
                             lambda m: {b"r": b"\r", b"n": b"\n", b"\\": b"\\"}.get(
                                 m.group(1), bytes([int(m.group(1)[1:], 16)]) if
                                 m.group(1).startswith(b"x") else b""),
                             raw.encode("latin-1"))
        out.append((f, payload))
    return out


def js_server(extra=(), workers=2, timeout="10s"):
    return Server(workers=workers, args=["-o", "sink=jetstream", "-o", "jetstream_servers=" + URLS,
                                         "-o", "jetstream_create=yes", "-o", "jetstream_replicas=3",
                                         "-o", "jetstream_timeout=" + timeout,
                                         "-o", "message_size_limit=4m"] + list(extra))


def send(srv, rcpts=("u@example.test",), body="hello\r\n"):
    """(code, text) of the end of data, with smtplib."""
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="c.test", timeout=30) as s:
        s.ehlo("c.test")
        code, text = s.mail("a@sender.test")
        check_eq(code, 250, "MAIL: %s" % text)
        for r in rcpts:
            code, text = s.rcpt(r)
            check_eq(code, 250, "RCPT: %s" % text)
        return s.data("Subject: js\r\n\r\n" + body)


def wait_accepting(srv, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        code, text = send(srv)
        if code == 250:
            return text.decode()
        check(time.monotonic() < deadline, "still %d %s after %ds" % (code, text, timeout))
        time.sleep(0.5)


def check_stored_once(manifest, stored):
    """Every manifest entry (a 250) is in the stream once, byte for byte."""
    want = read_manifest(manifest)          # load id -> (size, sum)
    qids = {}
    for ln in open(manifest).read().splitlines():
        lid, qid = ln.split()[:2]
        qids[qid] = lid
    seen = {}
    for f, payload in stored:
        seen[f["qid"]] = seen.get(f["qid"], 0) + 1
    dups = sorted(q for q, n in seen.items() if n > 1)
    check(not dups, "stored more than once: %s" % dups[:10])
    missing = sorted(q for q in qids if q not in seen)
    check(not missing, "%d acknowledged messages not in the stream, e.g. %s"
          % (len(missing), missing[:5]))
    by_qid = {f["qid"]: p for f, p in stored}
    for qid, lid in qids.items():
        payload = by_qid[qid]
        check(payload.startswith(b"Received: from "), "%s: no Received: first" % qid)
        _head, _sep, body = payload.partition(b"\r\n\r\n")
        size, total = want[lid]
        check_eq("%016x" % fnv1a64(body), total, "checksum of %s (%s)" % (qid, lid))
    return len(qids)


@T.test("cluster of 3, replicas=3: the leader SIGKILLed mid-run; every 250 stored once, "
        "byte for byte")
def _():
    cluster_up()
    with js_server() as srv:
        wait_accepting(srv)
        before = {f["qid"] for f, _ in dump(body=False)}
        st = info()
        check_eq(st["replicas"], "3", "stream replicas")
        leader = st["leader"]
        check(leader in ("n1", "n2", "n3"), "leader: %r" % st)
        man = os.path.join(TMP, "manifest1")
        load = subprocess.Popen([load_tool(), "-q", "-c", "8", "-m", "3000", "--expect-reject",
                                 "--timeout", "30", "--verify", man,
                                 "127.0.0.1:%d" % srv.port],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(man) and
                 len(open(man).read().splitlines()) >= 500 or load.poll() is not None,
                 timeout=60, what="500 messages acknowledged")
        check(load.poll() is None, "the run ended before the kill: make it longer")
        victim = [n for n in NODES if n.name == leader][0]
        victim.kill()
        out, err = load.communicate(timeout=240)
        check_eq(load.returncode, 0, "ringmx-load exit: %s" % err[-800:])
        survivors = [n for n in NODES if n is not victim]
        wait_for(lambda: info().get("leader") not in ("-", leader), timeout=60,
                 what="a new leader")
        stored = [(f, p) for f, p in dump() if f["qid"] not in before]
        n = check_stored_once(man, stored)
        check(n >= 500, "only %d messages acknowledged" % n)
        s = srv.stats()
        check_eq(s["jetstream_published"], n + 1, "jetstream_published (+1: the probe)")
        print("  %d of 3000 acknowledged across the leader change (%s killed); "
              "retries %d, duplicates %d, 451s: timeouts %d errors %d"
              % (n, leader, s["jetstream_retries"], s["jetstream_duplicates"],
                 s["jetstream_timeouts"], s["jetstream_errors"]), flush=True)
        victim.start()
        cluster_up()


@T.test("the whole cluster down: 451 4.3.0 and nothing acknowledged; back up: accepting "
        "again by itself, the earlier messages still there")
def _():
    cluster_up()
    with js_server(timeout="2s") as srv:
        wait_accepting(srv)
        before = len(dump(body=False))
        cluster_down()
        code, text = send(srv)
        check_eq((code, text.decode()), (451, "4.3.0 Error: queue unavailable, try again later"),
                 "reply with the cluster down")
        man = os.path.join(TMP, "manifest2")
        rc = subprocess.run([load_tool(), "-q", "-c", "4", "-m", "20", "--expect-reject",
                             "--timeout", "30", "--verify", man, "127.0.0.1:%d" % srv.port],
                            capture_output=True, text=True, timeout=120)
        check_eq(rc.returncode, 0, "ringmx-load: " + rc.stderr[-500:])
        check_eq(open(man).read(), "", "messages acknowledged with the cluster down")
        cluster_up()
        wait_accepting(srv, timeout=90)
        man = os.path.join(TMP, "manifest3")
        rc = subprocess.run([load_tool(), "-q", "-c", "4", "-m", "200", "--timeout", "30",
                             "--verify", man, "127.0.0.1:%d" % srv.port],
                            capture_output=True, text=True, timeout=120)
        check_eq(rc.returncode, 0, "ringmx-load after the restart: " + rc.stderr[-500:])
        stored = dump()
        check(len(stored) >= before + 200, "%d stored, want >= %d" % (len(stored), before + 200))
        check_eq(check_stored_once(man, stored), 200, "acknowledged after the restart")


@T.test("the headers of docs/jetstream.md; the payload is the spool's (Received: first)")
def _():
    cluster_up()
    with js_server() as srv:
        wait_accepting(srv)
        code, text = send(srv, rcpts=("u@example.test", "v@example.test"), body="line\r\n")
        check_eq(code, 250, text)
        qid = re.search(r"queued as (\S+)", text.decode()).group(1)
        f, payload = [x for x in dump() if x[0]["qid"] == qid][0]
        check_eq(f["from"], "<a@sender.test>", "Ringmx-Mail-From")
        check_eq(f["rcpt"], "<u@example.test>,<v@example.test>", "Ringmx-Rcpt-To")
        check(re.fullmatch(r"\[127\.0\.0\.1\]:\d+", f["client"]), "Ringmx-Client %r" % f)
        check_eq(f["helo"], "c.test", "Ringmx-Helo")
        check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", f["received_at"]), f)
        check_eq(f["tls"], "none", "Ringmx-Tls")
        check(payload.startswith(b"Received: from c.test ([127.0.0.1])"), payload[:200])
        check(("id %s" % qid).encode() in payload.split(b"\r\n\r\n")[0], payload[:300])
        check(payload.endswith(b"\r\n\r\nline\r\n"), payload[-80:])
        check_eq(int(f["bytes"]), len(payload), "bytes")


@T.test("jetstream_max_pending: MAIL past it gets 451 4.3.0; SIGTERM with publishes in "
        "flight ends within jetstream_timeout")
def _():
    cluster_up()
    with js_server(extra=["-o", "jetstream_max_pending=2", "-o", "shutdown_timeout=1s"],
                   workers=1, timeout="6s") as srv:
        wait_accepting(srv)
        cluster_down()
        socks = []
        for _ in range(2):
            c = srv.client()
            c.ehlo()
            c.cmd("MAIL FROM:<a@sender.test>").expect(250)
            c.cmd("RCPT TO:<u@example.test>").expect(250)
            c.cmd("DATA").expect(354)
            c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
            socks.append(c)
        time.sleep(0.3)
        c3 = srv.client()
        c3.ehlo()
        c3.cmd("MAIL FROM:<a@sender.test>").expect(451, "4.3.0")
        check(srv.stats()["jetstream_busy"] >= 1, "jetstream_busy")
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        for c in socks:
            # 451 when the publish times out first, 421 when the drain's
            # shutdown_timeout does; never 250.
            r = c.reply()
            check(r.code in (421, 451), "after SIGTERM: %r" % r)
        rc = srv.stop()
        check_eq(rc, 0, "exit code")
        check(time.monotonic() - t0 < 6 + 5, "stop took %.1fs" % (time.monotonic() - t0))
    cluster_up()


@T.test("jetstream_create = no and no such stream: one log line, 451 4.3.0")
def _():
    cluster_up()
    with Server(workers=1, args=["-o", "sink=jetstream", "-o", "jetstream_servers=" + URLS,
                                 "-o", "jetstream_stream=NOSUCH", "-o", "jetstream_timeout=2s"]) as srv:
        code, text = send(srv)
        check_eq(code, 451, text)
        srv.wait_log(r"jetstream w0: stream NOSUCH does not exist and jetstream_create = no")


@T.test("bad keys: one error with file, line and key")
def _():
    conf = os.path.join(TMP, "bad.conf")
    for text, want in [("sink = jetstream\njetstream_servers = http://x:1\n",
                        r"bad\.conf:2: jetstream_servers: 'http://x:1': not a nats:// or tls:// URL"),
                       ("jetstream_stream = a.b\n", r"bad\.conf:1: jetstream_stream: 'a\.b'"),
                       ("jetstream_subject = mail.*\n", r"bad\.conf:1: jetstream_subject: "),
                       ("jetstream_replicas = 7\n", r"bad\.conf:1: jetstream_replicas: "),
                       ("sink = jetstream\njetstream_creds = /nonexistent.creds\n",
                        r"bad\.conf:2: jetstream_creds: /nonexistent\.creds: No such file")]:
        with open(conf, "w") as f:
            f.write(text)
        r = run([ringmxd_path(), "-t", "-c", conf])
        out = (r.stdout + r.stderr).strip()
        check(r.returncode != 0, "%r accepted" % text)
        check(re.search(want, out), "%r: want %r, got %s" % (text, want, out))

# ---------------------------------------------------------------- ringmx-deliver

def stream_keys(name):
    """Each delivery test its own stream and subject: nothing left by another."""
    return ["-o", "jetstream_servers=" + URLS, "-o", "jetstream_stream=" + name,
            "-o", "jetstream_subject=mail." + name.lower()]


# Every ringmx-deliver started: killed at the end whatever failed, so a failing
# check leaves no consumer running (one once outlived its test by an hour).
CONSUMERS = []


class Deliver:
    """ringmx-deliver with the given -o keys, its log in TMP."""

    def __init__(self, name, keys, threads=4):
        self.cmd = [DELIVER, "-o", "sink=jetstream", "-o", "hostname=dlv.ringmx.test",
                    "--threads", str(threads), "--ack-wait", "3"] + keys
        self.log_path = os.path.join(TMP, name + ".deliver.log")
        self.proc = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self.logf, stderr=self.logf,
                                     stdin=subprocess.DEVNULL)
        CONSUMERS.append(self.proc)
        return self

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        bad = [ln for ln in self.log().splitlines() if "Sanitizer" in ln or "runtime error" in ln]
        check(not bad, "ringmx-deliver: %s" % bad[:3])
        check_eq(rc, 0, "ringmx-deliver exit code; log tail:\n" + self.log()[-2000:])


def need(make):
    try:
        return make()
    except Unavailable as e:
        raise Skip(str(e))


def fill(name, n, extra_load=(), keys=()):
    """n messages into stream name through ringmxd; returns the manifest."""
    with Server(workers=2, args=["-o", "sink=jetstream", "-o", "jetstream_create=yes",
                                 "-o", "jetstream_replicas=3", "-o", "jetstream_timeout=10s"]
                + stream_keys(name) + list(keys)) as srv:
        wait_accepting_n(srv)
        man = os.path.join(TMP, name + ".manifest")
        rc = subprocess.run([load_tool(), "-q", "-c", "8", "-m", str(n), "--timeout", "30",
                             "--verify", man] + list(extra_load) + ["127.0.0.1:%d" % srv.port],
                            capture_output=True, text=True, timeout=300)
        check_eq(rc.returncode, 0, "ringmx-load: " + rc.stderr[-500:])
    manifest = read_manifest(man)
    check_eq(len(manifest), n, "acknowledged")
    return manifest


def wait_accepting_n(srv, timeout=60):
    """Until the stream answers (it is created by the first publish); the probe is
    delivered too and has no load headers: it goes to probe@example.test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="c.test", timeout=30) as s:
                s.sendmail("a@sender.test", ["probe@example.test"],
                           b"Subject: probe\r\n\r\nprobe\r\n")
                return
        except smtplib.SMTPDataError as e:
            check(e.smtp_code == 451, "probe: %r" % e)
        check(time.monotonic() < deadline, "the stream does not answer")
        time.sleep(0.5)


def drained(name):
    return int(info(stream=name)["messages"]) == 0


def delivered_check(manifest, datas, what):
    loads = [d for d in datas if b"X-Ringmx-Load-Id:" in d.split(b"\r\n\r\n", 1)[0]]
    counts, problems = load_check(manifest, loads)
    check(not problems, "%s: %d problems, e.g. %s" % (what, len(problems), problems[:3]))
    missing = [i for i in manifest if i not in counts]
    check(not missing, "%s: %d acknowledged messages never delivered, e.g. %s"
          % (what, len(missing), missing[:3]))
    return sum(c - 1 for c in counts.values())


@T.test("ringmx-deliver into smtp-sink, SIGKILLed mid-run and started again: every "
        "acknowledged message delivered at least once, byte for byte; the stream drained")
def _():
    if not os.access(DELIVER, os.X_OK):
        raise Skip("ringmx-deliver not built")
    cluster_up()
    name = "DLVSINK"
    manifest = fill(name, 2000)
    dumpdir = os.path.join(TMP, name + ".dump")
    sink = need(lambda: SmtpSink(dump_dir=dumpdir))
    with sink:
        keys = stream_keys(name) + ["-o", "relay_host=smtp:127.0.0.1:%d" % sink.port]
        d = Deliver(name, keys).start()
        wait_for(lambda: sink.count() >= 500, timeout=120, what="500 delivered")
        d.kill()
        killed_at = sink.count()
        d = Deliver(name, keys).start()
        wait_for(lambda: drained(name), timeout=180, what="the stream drained")
        d.stop()
        msgs = sink.wait_for(2001, timeout=30)
        dups = delivered_check(manifest, [m.data for m in msgs], "smtp-sink")
        print("  2000 messages: consumer killed after %d deliveries; %d delivered twice"
              % (killed_at, dups), flush=True)


@T.test("ringmx-deliver into Dovecot LMTP (unix socket), SIGKILLed mid-run: every message "
        "in the Maildir at least once, byte for byte")
def _():
    if not os.access(DELIVER, os.X_OK):
        raise Skip("ringmx-deliver not built")
    cluster_up()
    name = "DLVLMTP"
    dv = need(lambda: DovecotLMTP(os.path.join(TMP, name, "dovecot")))
    with dv:
        manifest = fill(name, 400, extra_load=["--to", "alice@example.test"])
        keys = stream_keys(name) + ["-o", "relay_host=lmtp:unix:" + dv.unix_path]
        d = Deliver(name, keys, threads=2).start()
        wait_for(lambda: len(dv.maildir_messages("alice", "example.test")) >= 100,
                 timeout=120, what="100 in the Maildir")
        d.kill()
        d = Deliver(name, keys, threads=2).start()
        wait_for(lambda: drained(name), timeout=180, what="the stream drained")
        d.stop()
        stored = dv.maildir_messages("alice", "example.test")
        datas = [nexthop.strip_dovecot_headers(m)[1] for m in stored]
        dups = delivered_check(manifest, datas, "Dovecot")
        print("  400 messages into the Maildir; %d delivered twice" % dups, flush=True)


@T.test("ringmx-deliver: a 5xx recipient gets a DSN (from <>, Status 5.1.1) delivered to the "
        "sender, the others are delivered once; a next hop that is down is retried with "
        "the relay's backoff and gets the message when it is back")
def _():
    if not os.access(DELIVER, os.X_OK):
        raise Skip("ringmx-deliver not built")
    cluster_up()
    name = "DLVRULES"
    mx = FakeMX()
    home = FakeMX()
    mx.rcpt_reply = lambda a: (550, "5.1.1 <%s>: no such user" % a) if a.startswith("bad") \
        else None
    tmap = os.path.join(TMP, name + ".transport")
    with open(tmap, "w") as f:
        f.write("example.test smtp:127.0.0.1:%d\nsender.test smtp:127.0.0.1:%d\n"
                "localhost smtp:127.0.0.1:%d\n" % (mx.port, home.port, home.port))
    keys = stream_keys(name) + ["-o", "transport_maps=" + tmap, "-o", "retry_min=1s",
                                "-o", "retry_max=2s"]
    with Server(workers=1, args=["-o", "sink=jetstream", "-o", "jetstream_create=yes",
                                 "-o", "jetstream_replicas=3"] + stream_keys(name)) as srv:
        wait_accepting_n(srv)
        code, text = send(srv, rcpts=("good@example.test", "bad@example.test"))
        check_eq(code, 250, text)
        qid = re.search(r"queued as (\S+)", text.decode()).group(1)
        d = Deliver(name, keys, threads=1).start()
        try:
            got = wait_for(lambda: [m for m in mx.messages if "good@example.test" in m.rcpts],
                           timeout=30, what="the good recipient")
            check_eq(len(got), 1, "deliveries to good@")
            dsn = wait_for(lambda: [m for m in home.messages if m.mail_from == ""],
                           timeout=30, what="the DSN at the sender's next hop")[0]
            check_eq(dsn.rcpts, ["a@sender.test"], "DSN recipient")
            check(b"Status: 5.1.1" in dsn.data_bytes and b"bad@example.test" in dsn.data_bytes
                  and qid.encode() in dsn.data_bytes, dsn.data_bytes[:1500])
            # The next hop down: deferred, NAKed with backoff, delivered when back.
            mx.refuse()
            code, text = send(srv, rcpts=("later@example.test",))
            check_eq(code, 250, text)
            wait_for(lambda: "later@example.test" in d.log() and "status=deferred" in d.log(),
                     timeout=30, what="a deferral")
            time.sleep(1.5)
            check(not [m for m in mx.messages if "later@example.test" in m.rcpts], "early")
            mx.accept_again()
            wait_for(lambda: [m for m in mx.messages if "later@example.test" in m.rcpts],
                     timeout=30, what="the retry after the next hop came back")
            wait_for(lambda: drained(name), timeout=30, what="the stream drained")
            log = d.log()
            check(re.search(r": to=<later@example.test>, relay=none, delay=\d+, status=deferred "
                            r"\(451 4\.4\.1 connect to smtp:127\.0\.0\.1:\d+: Connection refused\)",
                            log), log[-2000:])
            check(re.search(r"%s: to=<bad@example.test>, relay=smtp:127\.0\.0\.1:\d+, delay=\d+, "
                            r"status=bounced \(550 5\.1\.1 " % qid, log), log[-2000:])
        finally:
            d.stop()
            mx.close()
            home.close()


@T.test("ringmx-deliver: bad arguments and a configuration without a next hop are refused")
def _():
    if not os.access(DELIVER, os.X_OK):
        raise Skip("ringmx-deliver not built")
    r = run([DELIVER, "--threads", "0"])
    check_eq(r.returncode, 2, "usage: " + r.stderr)
    r = run([DELIVER, "-o", "sink=jetstream"])
    check(r.returncode == 1 and "no next hop: set relay_host or transport_maps" in r.stderr,
          r.stderr)
    r = run([DELIVER, "-o", "sink=jetstream", "-o", "jetstream_servers=ftp://x"])
    check(r.returncode == 1 and "jetstream_servers" in r.stderr, r.stderr)



@T.test("ringmx-deliver with relay_tls = encrypt: STARTTLS to the next hop (the relay's TLS "
        "glue), the message arrives over TLS; a hop without STARTTLS defers it")
def _():
    if not os.access(DELIVER, os.X_OK):
        raise Skip("ringmx-deliver not built")
    if not os.access("/usr/bin/openssl", os.X_OK):
        raise Skip("openssl is not installed")
    cluster_up()
    name = "DLVTLS"
    cert, key = os.path.join(TMP, "mx-cert.pem"), os.path.join(TMP, "mx-key.pem")
    self_signed(cert, key)
    tls_mx = FakeMX(starttls_cert=(cert, key))
    plain_mx = FakeMX()
    tmap = os.path.join(TMP, name + ".transport")
    with open(tmap, "w") as f:
        f.write("example.test smtp:127.0.0.1:%d\nplain.test smtp:127.0.0.1:%d\n"
                "localhost smtp:127.0.0.1:%d\n" % (tls_mx.port, plain_mx.port, tls_mx.port))
    keys = stream_keys(name) + ["-o", "transport_maps=" + tmap, "-o", "relay_tls=encrypt",
                                "-o", "retry_min=1s"]
    try:
        with Server(workers=1, args=["-o", "sink=jetstream", "-o", "jetstream_create=yes",
                                     "-o", "jetstream_replicas=3",
                                     "-o", "domains=example.test, plain.test, localhost"]
                    + stream_keys(name)) as srv:
            wait_accepting_n(srv)
            code, text = send(srv, rcpts=("t@example.test",))
            check_eq(code, 250, text)
            d = Deliver(name, keys, threads=1).start()
            try:
                got = wait_for(lambda: [m for m in tls_mx.messages if "t@example.test" in m.rcpts],
                               timeout=30, what="delivery over TLS")
                check(got[0].tls, "not over TLS: %r" % (got[0],))
                code, text = send(srv, rcpts=("p@plain.test",))
                check_eq(code, 250, text)
                wait_for(lambda: re.search(r"to=<p@plain.test>, .*status=deferred \(4\d\d 4\.7\.4",
                                           d.log()), timeout=30, what="the deferral without TLS")
                check(not plain_mx.messages, "sent in plaintext under relay_tls = encrypt")
            finally:
                d.stop()
    finally:
        tls_mx.close()
        plain_mx.close()


@contextlib.contextmanager
def single_node(d, extra, what):
    """One nats-server with JetStream in d, with the extra configuration
    lines; yields its client port, killed on the way out."""
    port = free_port()
    conf = os.path.join(d, "nats.conf")
    with open(conf, "w") as f:
        f.write("listen: 127.0.0.1:%d\njetstream { store_dir: \"%s\" }\n%s"
                % (port, os.path.join(d, "store"), extra))
    log = open(os.path.join(d, "log"), "ab")
    ns = subprocess.Popen([NATS, "-c", conf], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return True
            except OSError:
                return False
        wait_for(up, timeout=20, what=what)
        yield port
    finally:
        ns.kill()
        ns.wait()


def self_signed(cert, key):
    """An ECDSA P-256 certificate for localhost and 127.0.0.1."""
    r = run(["/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    check_eq(r.returncode, 0, "openssl: " + r.stderr[-300:])


@T.test("jetstream_tls_ca: ringmxd publishes over TLS (tls:// URL) to a nats-server that "
        "requires it, and refuses to when the CA is not the server's")
def _():
    if not os.access("/usr/bin/openssl", os.X_OK):
        raise Skip("openssl is not installed")
    d = os.path.join(TMP, "tlsnode")
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    other, okey = os.path.join(d, "other.pem"), os.path.join(d, "other-key.pem")
    for c, k in ((cert, key), (other, okey)):
        self_signed(c, k)
    tls = 'tls { cert_file: "%s"\n key_file: "%s" }\n' % (cert, key)
    with single_node(d, tls, "nats-server with TLS") as port:
        base = ["-o", "sink=jetstream", "-o", "jetstream_servers=tls://127.0.0.1:%d" % port,
                "-o", "jetstream_create=yes", "-o", "jetstream_timeout=3s"]
        with Server(workers=1, args=base + ["-o", "jetstream_tls_ca=" + cert]) as srv:
            text = wait_accepting(srv, timeout=30)
            check("queued as" in text, text)
        with Server(workers=1, args=base + ["-o", "jetstream_tls_ca=" + other]) as srv:
            # The handshake fails and libnats would retry inside its connect
            # call: the publisher must not wait for it (it once hung here).
            code, text = send(srv)
            check_eq(code, 451, "with the wrong CA: %s" % text)
            srv.wait_log(r"jetstream w0: cannot connect: .*mail gets 451 4\.3\.0 until it can")


@T.test("jetstream_creds: against a nats-server in operator mode (JWTs minted by natsjwt.py), "
        "ringmxd with the user's .creds publishes; without them it gets 451")
def _():
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "natsjwt.py")
    d = os.path.join(TMP, "credsnode")
    os.makedirs(d, exist_ok=True)
    r = run(["/usr/bin/python3", helper, d])
    if r.returncode != 0 and "cryptography" in r.stderr:
        raise Skip("python3-cryptography is not installed: " + r.stderr.strip()[-200:])
    check_eq(r.returncode, 0, "natsjwt.py: " + r.stderr[-500:])
    with single_node(d, "include server.conf.inc\n", "nats-server in operator mode") as port:
        base = ["-o", "sink=jetstream", "-o", "jetstream_servers=nats://127.0.0.1:%d" % port,
                "-o", "jetstream_create=yes", "-o", "jetstream_timeout=3s"]
        creds = os.path.join(d, "user.creds")
        with Server(workers=1, args=base + ["-o", "jetstream_creds=" + creds]) as srv:
            text = wait_accepting(srv, timeout=30)
            check("queued as" in text, text)
        with Server(workers=1, args=base) as srv:
            code, text = send(srv)
            check_eq(code, 451, "without credentials: %s" % text)
            srv.wait_log(r"jetstream w0: cannot connect: .*[Aa]uthoriz")

try:
    T.main()
finally:
    for p in CONSUMERS:
        if p.poll() is None:
            p.kill()
            p.wait()
    cluster_down()
    shutil.rmtree(TMP, ignore_errors=True)
