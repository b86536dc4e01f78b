#!/usr/bin/env python3
"""metrics_listen (issue 15): GET /metrics in the Prometheus text format,
checked by promtool and scraped by a real Prometheus; the counters equal the
SIGUSR1 ones after a known load; /healthz 200, and 503 while a worker is
stuck (the fault daemon's RINGMX_FAULT_STALL); sd_notify READY, RELOADING,
WATCHDOG (not while a worker is stuck) and STOPPING on a listening
datagram socket, as systemd would read them."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from ringmx_harness import (Server, Skip, Suite, check, check_eq, free_port, smtplib_send,
                            worker_of_line)

T = Suite(__file__)


def get(port, path, method="GET"):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def samples(text):
    """{(name, frozenset(labels)): value}"""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', ln)
        check(m, "not a sample line: %r" % ln)
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def per_worker_stats(s, workers):
    off = s.log_size()
    s.signal(signal.SIGUSR1)
    lines = s.wait_log(r"\bstats now:", count=workers, since=off)
    res = {}
    for ln in lines:
        w = int(worker_of_line(ln)[1:])
        res[w] = {k: int(v) for k, v in re.findall(r" (\w+)=(\d+)", ln)}
    return res


def metrics_server(mport, workers=2, extra=""):
    return Server(workers=workers, config_text="metrics_listen = 127.0.0.1:%d\n%s" % (mport, extra))


@T.test("GET /metrics: promtool check metrics reports nothing; every stats.h counter per worker")
def _():
    if shutil.which("promtool") is None:
        raise Skip("promtool not installed (Debian package prometheus)")
    mport = free_port()
    with metrics_server(mport) as s:
        smtplib_send(s)
        st, hdr, body = get(mport, "/metrics")
        check_eq(st, 200, "status")
        check(hdr["Content-Type"].startswith("text/plain; version=0.0.4"), hdr["Content-Type"])
        p = subprocess.run(["promtool", "check", "metrics"], input=body.encode(),
                           capture_output=True, timeout=30)
        check(p.returncode == 0 and p.stdout.strip() == b"" and p.stderr.strip() == b"",
              "promtool: rc=%d %s %s" % (p.returncode, p.stdout[:2000], p.stderr[:2000]))
        sm = samples(body)
        for name in per_worker_stats(s, 2)[0]:
            n = "ringmx_spool_fsync_seconds_total" if name == "spool_fsync_us" else \
                "ringmx_%s_total" % name
            for w in ("0", "1"):
                check((n, frozenset({("worker", w)})) in sm, "missing %s{worker=%s}" % (n, w))
        for fam in ("ringmx_eod_reply_seconds", "ringmx_spool_fdatasync_seconds",
                    "ringmx_spool_batch_messages", "ringmx_tls_handshake_seconds",
                    "ringmx_relay_delivery_seconds"):
            check(("%s_count" % fam, frozenset({("worker", "0")})) in sm, "histogram " + fam)
        check(any(k[0] == "ringmx_open_connections" for k in sm), "open connections gauge")
        check(("ringmx_client_table_slots", frozenset()) in sm, "client table gauge")
        st, _, body = get(mport, "/metrics", method="HEAD")
        check_eq((st, body), (200, ""), "HEAD")
        check_eq(get(mport, "/nope")[0], 404, "unknown path")
        check_eq(get(mport, "/metrics", method="POST")[0], 405, "POST")
        c = socket.create_connection(("127.0.0.1", mport))
        c.sendall(b"GET /metrics\nHost: x\n\n")
        check(c.recv(100).startswith(b"HTTP/1.1 400 "), "bare LF request: 400")
        c.close()


@T.test("after a known load (spool + relay to a next hop) /metrics equals the SIGUSR1 counters")
def _():
    from nexthop import FakeMX
    mport = free_port()
    with FakeMX() as mx:
        with tempfile.TemporaryDirectory() as spool:
            extra = "sink = spool\nspool_dir = %s\nrelay_host = 127.0.0.1:%d\n" % (spool, mx.port)
            with metrics_server(mport, extra=extra) as s:
                for i in range(20):
                    smtplib_send(s)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if sum(per_worker_stats(s, 2)[w]["relay_rcpt_sent"] for w in (0, 1)) == 20:
                        break
                    time.sleep(0.2)
                time.sleep(1.5)  # idle: both snapshots and the dump are final
                want = per_worker_stats(s, 2)
                sm = samples(get(mport, "/metrics")[2])
                for w in (0, 1):
                    for name, v in want[w].items():
                        if name in ("loop_iterations", "spool_fsync_us"):
                            continue  # they move while idle / shown in seconds
                        got = sm[("ringmx_%s_total" % name, frozenset({("worker", str(w))}))]
                        check_eq(got, v, "%s worker %d" % (name, w))
                total = lambda n: sum(v for k, v in sm.items() if k[0] == n)
                check_eq(total("ringmx_messages_accepted_total"), 20, "accepted")
                check_eq(total("ringmx_eod_reply_seconds_count"), 20, "eod histogram count")
                check_eq(total("ringmx_relay_delivery_seconds_count"),
                         sum(want[w]["relay_attempts"] for w in (0, 1)), "delivery histogram")
                check_eq(total("ringmx_spool_batch_messages_sum"),
                         sum(want[w]["spool_messages"] for w in (0, 1)), "batch histogram sum")
                check_eq(total("ringmx_spool_fdatasync_seconds_count"),
                         sum(want[w]["spool_fsyncs"] for w in (0, 1)), "fdatasync histogram")
                check_eq(total("ringmx_spool_backlog_messages"), 0, "backlog")
                inf = [v for k, v in sm.items() if k[0] == "ringmx_eod_reply_seconds_bucket"
                       and ("le", "+Inf") in k[1]]
                check_eq(sum(inf), 20, "+Inf buckets")


@T.test("a real Prometheus (Debian's) scrapes the endpoint: up == 1 and the accepted count")
def _():
    if shutil.which("prometheus") is None:
        raise Skip("prometheus not installed (Debian package prometheus)")
    mport, pport = free_port(), free_port()
    with metrics_server(mport) as s, tempfile.TemporaryDirectory() as d:
        for _ in range(3):
            smtplib_send(s)
        with open(os.path.join(d, "p.yml"), "w") as f:
            f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                    "  - job_name: ringmx\n    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n" % mport)
        p = subprocess.Popen(["prometheus", "--config.file=" + os.path.join(d, "p.yml"),
                              "--storage.tsdb.path=" + os.path.join(d, "data"),
                              "--web.listen-address=127.0.0.1:%d" % pport],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            got = None
            deadline = time.monotonic() + 60
            q = "/api/v1/query?query=sum(ringmx_messages_accepted_total)%20*%20min(up)"
            while time.monotonic() < deadline:
                try:
                    st, _, body = get(pport, q)
                    m = re.search(r'"value":\[[0-9.]+,"([0-9.]+)"\]', body)
                    if st == 200 and m:
                        got = float(m.group(1))
                        if got == 3:
                            break
                except OSError:
                    pass
                time.sleep(0.5)
            check_eq(got, 3.0, "Prometheus' sum(ringmx_messages_accepted_total) * up")
        finally:
            p.terminate()
            p.wait(timeout=30)


def notify_socket(d):
    path = os.path.join(d, "notify")
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sk.bind(path)
    sk.settimeout(0.2)
    return sk, path


def drain(sk, seconds):
    got = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append(sk.recv(4096).decode())
        except socket.timeout:
            pass
    return got


@T.test("sd_notify: READY=1, RELOADING=1 then READY=1 on SIGHUP, WATCHDOG=1, STOPPING=1")
def _():
    with tempfile.TemporaryDirectory() as d:
        sk, path = notify_socket(d)
        os.environ["NOTIFY_SOCKET"] = path
        os.environ["WATCHDOG_USEC"] = "2000000"
        try:
            s = Server(workers=2)
            s.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
            del os.environ["WATCHDOG_USEC"]
        try:
            msgs = drain(sk, 2.5)
            check(msgs and msgs[0].startswith("READY=1\n") and "STATUS=" in msgs[0],
                  "first message READY=1: %r" % msgs[:2])
            check(sum(m == "WATCHDOG=1" for m in msgs) >= 2, "WATCHDOG=1 every second: %r" % msgs)
            s.signal(signal.SIGHUP)
            msgs = drain(sk, 1.5)
            states = [m.split("\n")[0] for m in msgs if not m.startswith("WATCHDOG")]
            check_eq(states[:2], ["RELOADING=1", "READY=1"], "around SIGHUP")
            check(re.search(r"MONOTONIC_USEC=\d+", msgs[[m.split("\n")[0] for m in msgs]
                                                       .index("RELOADING=1")]), "MONOTONIC_USEC")
            s.signal(signal.SIGTERM)
            msgs = drain(sk, 1.0)
            check(any(m.startswith("STOPPING=1") for m in msgs), "STOPPING=1: %r" % msgs)
        finally:
            s.stop()
            sk.close()


@T.test("a stuck worker: /healthz 503 naming it, ringmx_worker_up 0, no WATCHDOG=1; back to 200")
def _():
    faults = os.environ.get("RINGMXD_FAULTS") or os.path.join(
        os.path.dirname(__file__), "..", "..", "build-test", "tests", "ringmxd_faults")
    if not os.path.exists(faults):
        raise Skip("the fault daemon is not built: " + faults)
    mport = free_port()
    with tempfile.TemporaryDirectory() as d:
        sk, path = notify_socket(d)
        flag = os.path.join(d, "stall")
        saved = os.environ.get("RINGMXD")
        os.environ.update(RINGMXD=faults, NOTIFY_SOCKET=path, WATCHDOG_USEC="2000000",
                          RINGMX_FAULT_STALL=flag)
        try:
            s = metrics_server(mport)
            s.start()
        finally:
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "RINGMX_FAULT_STALL"):
                del os.environ[k]
            if saved is None:
                del os.environ["RINGMXD"]
            else:
                os.environ["RINGMXD"] = saved
        try:
            check_eq(get(mport, "/healthz")[:3:2], (200, "ok\n"), "healthy")
            open(flag, "w").close()
            time.sleep(6)  # METRICS_STALL_NS is 5 s
            st, _, body = get(mport, "/healthz")
            check_eq(st, 503, "stalled /healthz")
            check("worker 0" in body, body)
            sm = samples(get(mport, "/metrics")[2])
            check_eq(sm[("ringmx_worker_up", frozenset({("worker", "0")}))], 0, "worker_up 0")
            check_eq(sm[("ringmx_worker_up", frozenset({("worker", "1")}))], 1, "worker_up 1")
            drain(sk, 0.5)  # what came before the stall was seen
            msgs = drain(sk, 2.5)
            check(not any(m == "WATCHDOG=1" for m in msgs), "watchdog fed while stuck: %r" % msgs)
            s.wait_log(r"worker 0 makes no progress")
            os.unlink(flag)
            time.sleep(1.5)
            check_eq(get(mport, "/healthz")[0], 200, "recovered")
            check(any(m == "WATCHDOG=1" for m in drain(sk, 2.5)), "watchdog fed again")
        finally:
            if os.path.exists(flag):
                os.unlink(flag)
            s.stop()
            sk.close()


@T.test("metrics_listen on a port in use: one clear error, exit 1")
def _():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    s = Server(workers=1, config_text="metrics_listen = 127.0.0.1:%d\n" % port)
    try:
        s.start()
        check(False, "started with metrics_listen on a busy port")
    except Exception as e:
        check("metrics_listen 127.0.0.1:%d" % port in str(e) and "in use" in str(e), str(e))
    finally:
        busy.close()


if __name__ == "__main__":
    T.main()
