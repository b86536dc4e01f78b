#!/usr/bin/env python3
"""test_client_limits - per-client limits across workers (issue 12,
docs/defences.md "Per-client limits") on the real ringmxd with 2 workers:
client_connection_limit with raw sockets from many 127.x.y.z sources (one
client spread over both workers), the connection, message (Postfix
smtp-source), recipient (swaks and raw) and TLS handshake (STARTTLS and
implicit TLS) rates, client_limit_exceptions, IPv6 on ::1, the PROXY
protocol's client address, SIGHUP changing a limit, the log lines and
counters."""

import os
import re
import socket
import ssl
import subprocess
import tempfile
import time

from ringmx_harness import (HOSTNAME, Client, Closed, Server, Suite, Skip, check, check_eq,
                            EOL_WORKER, free_port, ipv6_available, sum_stats, wait_for,
                            worker_of_line)

T = Suite(__file__)
SMTP_SOURCE = "/usr/sbin/smtp-source"
SWAKS = "/usr/bin/swaks"
OPENSSL = "/usr/bin/openssl"


def too_many(ip):
    return "421 4.7.0 %s Error: too many connections from %s" % (HOSTNAME, ip)


def refused(s, src, text=None, host=None):
    """A connection from src gets exactly the 421 and is closed."""
    c = s.client(greet=False, source=src, host=host)
    try:
        check_eq(c.reply().lines, [text or too_many(src)], "reply to %s" % src)
        c.expect_closed()
    finally:
        c.close()


def per_worker(s, name):
    """SIGUSR1; counter name per worker (w0, w1)."""
    off = s.log_size()
    s.signal(__import__("signal").SIGUSR1)
    lines = s.wait_log(r"\bstats now:", count=s.workers, since=off)
    out = {}
    for ln in lines:
        m = re.search(r"\bstats now:.*\b%s=(\d+)" % name, ln)
        out[worker_of_line(ln)] = int(m.group(1))
    return out


def limit_lines(s, src, key, since=0):
    rx = re.compile(r"limit: client=\[%s\](?: prefix=/\d+)? limit=%s count=\d+ max=\d+"
                    % (re.escape(src), key))
    return [ln for ln in s.log_since(since).splitlines() if rx.search(ln)]


srv = T.shared(workers=2, args=["-o", "client_connection_limit=5"])


@T.test("client_connection_limit=5 across 2 workers: 5 held from 127.0.0.2 on both, the 6th "
        "gets the exact 421 and is closed, closing one lets a new one in; one log line")
def _():
    s = srv()
    src = "127.0.0.2"
    for attempt in range(8):
        before = per_worker(s, "connections_accepted")
        held = [s.client(source=src) for _ in range(5)]
        after = per_worker(s, "connections_accepted")
        spread = all(after[w] > before.get(w, 0) for w in after)
        if spread:
            break
        for c in held:  # all five on one worker by chance (1 in 16): again
            c.quit()
            c.close()
    check(spread, "5 connections never spread over both workers")
    st0 = s.stats()
    off = s.log_size()
    refused(s, src)
    refused(s, src)
    held[0].quit()
    held[0].close()
    s.wait_disconnect(held[0].local_port, since=off)
    with s.client(source=src) as c:
        c.ehlo()
        refused(s, src)
        c.quit()
    check_eq(s.stats()["client_conn_limited"] - st0["client_conn_limited"], 3,
             "client_conn_limited delta")
    lines = s.wait_log(r"limit: client=\[127\.0\.0\.2\] limit=client_connection_limit "
                       r"count=6 max=5" + EOL_WORKER, since=0)
    check_eq(len(limit_lines(s, src, "client_connection_limit")), 1,
             "one log line per client, limit and window: %s" % lines)
    for c in held[1:]:
        c.quit()
        c.close()


@T.test("client_connection_limit=1: QUIT, 221, reconnect at once, 50 times over 2 workers: "
        "never refused (the place is given back before the 221 goes out)")
def _():
    with Server(workers=2, args=["-o", "client_connection_limit=1"]) as s:
        for i in range(50):
            c = s.client(source="127.0.9.1")
            c.sock.sendall(b"QUIT\r\n")
            c.expect(221, "2.0.0")
            c.close()
        check_eq(s.stats()["client_conn_limited"], 0, "client_conn_limited")


@T.test("client_connection_limit=10, 40 connections from one source at once over 2 workers "
        "(threads): at most 10 greeted, the rest 421; after they close, exactly 10 again")
def _():
    import threading
    with Server(workers=2, args=["-o", "client_connection_limit=10"]) as s:
        for rnd in range(2):
            got, lock, held = [], threading.Lock(), []

            def one():
                c = s.client(greet=False, source="127.0.10.1")
                r = c.reply()
                with lock:
                    got.append(r.code)
                    held.append(c)
            ts = [threading.Thread(target=one) for _ in range(40)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            check_eq(len(got), 40, "replies")
            check(got.count(220) <= 10, "greeted: %d of 40" % got.count(220))
            check_eq(got.count(220) + got.count(421), 40, "220 or 421 only: %s" % got)
            for c in held:
                c.close()
            wait_for(lambda: s.stats()["connections_closed"] >= 40 * (rnd + 1),
                     what="all closed")
        # Nothing leaked on either worker: exactly 10 fit, the 11th is refused.
        held = [s.client(source="127.0.10.1") for _ in range(10)]
        refused(s, "127.0.10.1")
        for c in held:
            c.close()


@T.test("client_table_size=16 with 40 sources (limit 1 each): the table never grows; clients "
        "it cannot track are served unlimited (fail open) and counted in client_table_full")
def _():
    with Server(workers=2, args=["-o", "client_connection_limit=1", "-o",
                                 "client_table_size=16"]) as s:
        held, greeted_twice = [], 0
        for i in range(40):
            src = "127.0.11.%d" % (i + 1)
            held.append(s.client(source=src))
            c = s.client(greet=False, source=src)
            r = c.reply()
            if r.code == 220:
                greeted_twice += 1
            else:
                check_eq(r.lines, [too_many(src)], "reply")
            held.append(c)
        st = s.stats()
        # Each untracked client's two connections both miss the table.
        check_eq(st["client_table_full"], 2 * greeted_twice, "client_table_full")
        check_eq(st["client_conn_limited"], 40 - greeted_twice, "client_conn_limited")
        tracked = 40 - greeted_twice
        check(0 < tracked <= 16, "tracked clients: %d (table of 16)" % tracked)
        for c in held:
            c.close()


@T.test("20 sources 127.0.1.1..20, 5 connections each: 100 greeted; each source's 6th "
        "refused, counted separately")
def _():
    s = srv()
    st0 = s.stats()
    srcs = ["127.0.1.%d" % i for i in range(1, 21)]
    held = []
    try:
        for src in srcs:
            for _ in range(5):
                held.append(s.client(source=src))
        for src in srcs:
            refused(s, src)
    finally:
        for c in held:
            c.close()
    check_eq(s.stats()["client_conn_limited"] - st0["client_conn_limited"], 20,
             "client_conn_limited delta")


@T.test("client_limit_exceptions = 127.0.2.0/24: 8 connections from 127.0.2.5 all greeted, "
        "127.0.3.5's third refused")
def _():
    with Server(workers=2, args=["-o", "client_connection_limit=2", "-o",
                                 "client_limit_exceptions=127.0.2.0/24"]) as s:
        held = [s.client(source="127.0.2.5") for _ in range(8)]
        held += [s.client(source="127.0.3.5") for _ in range(2)]
        refused(s, "127.0.3.5")
        for c in held:
            c.close()
        check_eq(s.stats()["client_conn_limited"], 1, "client_conn_limited")


@T.test("client_connection_rate_limit=3: the 4th connection in the window gets 421 "
        "too many connections; another source is not limited")
def _():
    with Server(workers=2, args=["-o", "client_connection_rate_limit=3"]) as s:
        for _ in range(3):
            with s.client(source="127.0.4.1") as c:
                c.quit()
        refused(s, "127.0.4.1")
        refused(s, "127.0.4.1")
        with s.client(source="127.0.4.2") as c:
            c.quit()
        st = s.stats()
        check_eq(st["client_conn_rate_limited"], 2, "client_conn_rate_limited")
        check_eq(st["client_conn_limited"], 0, "client_conn_limited")
        s.wait_log(r"limit: client=\[127\.0\.4\.1\] limit=client_connection_rate_limit "
                   r"count=4 max=3 window=60s")
        check_eq(len(limit_lines(s, "127.0.4.1", "client_connection_rate_limit")), 1,
                 "log lines")


@T.test("client_message_rate_limit=5: smtp-source -m 10 -s 1 gets 452 4.7.1 Error: too much "
        "mail from 127.0.0.1 at the 6th MAIL; 5 messages accepted")
def _():
    if not os.access(SMTP_SOURCE, os.X_OK):
        raise Skip("smtp-source is not installed (postfix)")
    with Server(workers=2, args=["-o", "client_message_rate_limit=5"]) as s:
        p = subprocess.run([SMTP_SOURCE, "-m", "10", "-s", "1", "-f", "a@sender.test", "-t",
                            "u@example.test", "127.0.0.1:%d" % s.port],
                           capture_output=True, text=True, timeout=60)
        check_eq(p.returncode, 1, "smtp-source exit code (stderr %s)" % p.stderr)
        check("sender rejected: 452 4.7.1 Error: too much mail from 127.0.0.1" in p.stderr,
              p.stderr)
        st = s.stats()
        check_eq(st["messages_accepted"], 5, "messages_accepted")
        check_eq(st["client_msg_rate_limited"], 1, "client_msg_rate_limited")
        s.wait_log(r"limit: client=\[127\.0\.0\.1\] limit=client_message_rate_limit count=6 "
                   r"max=5 window=60s")


@T.test("client_recipient_rate_limit=3: swaks to 5 recipients gets 3 x 250 and 2 x 452 4.7.1 "
        "Error: too many recipients; a raw client from the same source is limited too")
def _():
    with Server(workers=2, args=["-o", "client_recipient_rate_limit=3"]) as s:
        if os.access(SWAKS, os.X_OK):
            p = subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(s.port),
                                "--from", "a@sender.test", "--to",
                                ",".join("r%d@example.test" % i for i in range(5)),
                                "--timeout", "10"], capture_output=True, text=True, timeout=60)
            out = p.stdout
            check_eq(len(re.findall(r"<-\s+250 2\.1\.5", out)), 3, "swaks 250s:\n" + out)
            check_eq(len(re.findall(r"<\*\*\s+452 4\.7\.1 Error: too many recipients from "
                                    r"127\.0\.0\.1", out)), 2, "swaks 452s:\n" + out)
        with s.client() as c:
            c.ehlo()
            c.cmd("MAIL FROM:<a@sender.test>").expect(250)
            r = c.cmd("RCPT TO:<u@example.test>")
            if not os.access(SWAKS, os.X_OK):
                for _ in range(3):
                    r.expect(250)
                    r = c.cmd("RCPT TO:<u@example.test>")
            check_eq(r.lines, ["452 4.7.1 Error: too many recipients from 127.0.0.1"], "reply")
            c.quit()
        with s.client(source="127.0.5.1") as c:  # another client: its own count
            c.ehlo()
            c.cmd("MAIL FROM:<a@sender.test>").expect(250)
            for _ in range(3):
                c.cmd("RCPT TO:<u@example.test>").expect(250)
            c.cmd("RCPT TO:<u@example.test>").expect(452, "4.7.1")
            c.quit()
        check(s.stats()["client_rcpt_rate_limited"] >= 3, "client_rcpt_rate_limited")


# ---------------------------------------------------------------- TLS

def make_cert(d):
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days",
                    "30", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    return cert, key


def tls_ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


@T.test("client_tls_handshake_rate_limit=1: STARTTLS once, the second STARTTLS gets 421 4.7.0 "
        "too many new TLS sessions and is closed; implicit TLS: the second is closed before "
        "the handshake")
def _():
    if not os.access(OPENSSL, os.X_OK):
        raise Skip("openssl is not installed")
    with tempfile.TemporaryDirectory(prefix="ringmx-cl-") as d:
        cert, key = make_cert(d)
        port, iport = free_port(), free_port()
        with Server(workers=2, listen=(), port=port,
                    args=["-o", "tls_cert=" + cert, "-o", "tls_key=" + key, "-o",
                          "client_tls_handshake_rate_limit=1"],
                    config_text="listen = 127.0.0.1:%d\nlisten = 127.0.0.1:%d tls=implicit\n"
                    % (port, iport)) as s:
            with s.client(source="127.0.6.1") as c:
                c.ehlo()
                c.cmd("STARTTLS").expect(220)
                t = tls_ctx().wrap_socket(c.sock)
                t.sendall(b"QUIT\r\n")
                check(t.recv(100).startswith(b"221"), "QUIT over TLS")
                t.close()
            with s.client(source="127.0.6.1") as c:
                c.ehlo()
                r = c.cmd("STARTTLS")
                check_eq(r.lines, ["421 4.7.0 %s Error: too many new TLS sessions from "
                                   "127.0.6.1" % HOSTNAME], "reply")
                c.expect_closed()
            # Implicit TLS: the first handshake of 127.0.6.2 works...
            raw = socket.create_connection(("127.0.0.1", iport), timeout=10,
                                           source_address=("127.0.6.2", 0))
            t = tls_ctx().wrap_socket(raw)
            check(t.recv(100).startswith(b"220 "), "greeting over implicit TLS")
            t.close()
            # ... the second is closed with no reply and no handshake.
            raw = socket.create_connection(("127.0.0.1", iport), timeout=10,
                                           source_address=("127.0.6.2", 0))
            try:
                tls_ctx().wrap_socket(raw)
                check(False, "handshake completed past the limit")
            except (ssl.SSLError, ConnectionError, OSError):
                pass
            raw.close()
            st = s.stats()
            check_eq(st["client_tls_rate_limited"], 2, "client_tls_rate_limited")
            check_eq(st["tls_handshakes"], 2, "tls_handshakes")
            check_eq(len(limit_lines(s, "127.0.6.1", "client_tls_handshake_rate_limit")), 1,
                     "log lines")


# ---------------------------------------------------------------- address forms

@T.test("IPv6 ::1 (client_ipv6_prefix 64): the third connection gets 421 ... from ::1; the "
        "log line names the prefix")
def _():
    if not ipv6_available():
        raise Skip("no IPv6 loopback")
    with Server(workers=2, listen=("::1",), args=["-o", "client_connection_limit=2"]) as s:
        held = [s.client() for _ in range(2)]
        refused(s, "::1", text=too_many("::1"))
        s.wait_log(r"limit: client=\[IPv6:::1\] prefix=/64 limit=client_connection_limit "
                   r"count=3 max=2")
        for c in held:
            c.close()


@T.test("PROXY v1 on a proxy=yes listener: the header's source is the client (192.0.2.1 "
        "limited at 2, 192.0.2.2 not), not the proxy's 127.0.0.1")
def _():
    port = free_port()
    with Server(workers=2, listen=(), port=port, args=["-o", "client_connection_limit=2"],
                config_text="listen = 127.0.0.1:%d proxy=yes\n" % port) as s:
        def via_proxy(src):
            c = Client(port, greet=False)
            c.send("PROXY TCP4 %s 127.0.0.1 40000 25\r\n" % src)
            return c
        held = []
        for _ in range(2):
            c = via_proxy("192.0.2.1")
            c.reply().expect(220)
            held.append(c)
        c = via_proxy("192.0.2.1")
        check_eq(c.reply().lines, [too_many("192.0.2.1")], "reply")
        c.expect_closed()
        c.close()
        for _ in range(2):
            c = via_proxy("192.0.2.2")
            c.reply().expect(220)
            held.append(c)
        s.wait_log(r"limit: client=\[192\.0\.2\.1\] limit=client_connection_limit count=3")
        for c in held:
            c.close()


@T.test("HAProxy send-proxy-v2 in front (every connection to ringmxd comes from haproxy's "
        "127.0.0.1): limited per original client, 127.0.12.1's third refused, 127.0.12.2 not")
def _():
    import shutil
    from ringmx_harness import stop_process
    hap = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(hap, os.X_OK):
        raise Skip("haproxy is not installed")
    port, front = free_port(), free_port()
    with Server(workers=2, listen=(), port=port, args=["-o", "client_connection_limit=2"],
                config_text="listen = 127.0.0.1:%d proxy=yes\n" % port) as s, \
            tempfile.TemporaryDirectory(prefix="ringmx-cl-hap-") as d:
        cfg = os.path.join(d, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n"
                    "    timeout server 30s\nfrontend smtp\n    bind 127.0.0.1:%d\n"
                    "    default_backend mx\nbackend mx\n    server mx 127.0.0.1:%d send-proxy-v2\n"
                    % (front, port))
        with open(os.path.join(d, "haproxy.log"), "wb") as lf:
            proc = subprocess.Popen([hap, "-f", cfg, "-db"], stdin=subprocess.DEVNULL,
                                    stdout=lf, stderr=lf)
        try:
            def up():
                try:
                    socket.create_connection(("127.0.0.1", front), timeout=1).close()
                    return True
                except OSError:
                    return proc.poll() is not None
            wait_for(up, what="haproxy listening")
            check(proc.poll() is None, "haproxy exited")
            held = [s.client(port=front, source="127.0.12.1") for _ in range(2)]
            c = s.client(greet=False, port=front, source="127.0.12.1")
            check_eq(c.reply().lines, [too_many("127.0.12.1")], "third from 127.0.12.1")
            c.close()
            held += [s.client(port=front, source="127.0.12.2") for _ in range(2)]
            for c in held:
                c.close()
        finally:
            stop_process(proc)


@T.test("SIGHUP: client_connection_limit 1 -> 3 and an exception take effect for new "
        "connections; a changed client_table_size is refused")
def _():
    with Server(workers=2, config_text="client_connection_limit = 1\n") as s:
        a = s.client(source="127.0.7.1")
        refused(s, "127.0.7.1")
        off = s.log_size()
        s.write_config("client_connection_limit = 3\nclient_limit_exceptions = 127.0.7.9\n")
        s.signal(__import__("signal").SIGHUP)
        s.wait_log(r"configuration reloaded", since=off)
        b = s.client(source="127.0.7.1")
        c = s.client(source="127.0.7.1")
        refused(s, "127.0.7.1")
        ex = [s.client(source="127.0.7.9") for _ in range(5)]
        for x in [a, b, c] + ex:
            x.close()
        # The table's size is fixed at start-up: a reload that changes it is refused.
        off = s.log_size()
        s.write_config("client_connection_limit = 1\nclient_table_size = 1024\n")
        s.signal(__import__("signal").SIGHUP)
        s.wait_log(r"reload refused, keeping the running configuration: client_table_size: "
                   r"cannot be changed by a reload; restart ringmxd", since=off)


@T.test("bad values: client_ipv6_prefix=129, client_table_size=1000, a bad exception: one "
        "error naming the key, exit 1")
def _():
    from ringmx_harness import ringmxd_path
    for kv, want in (("client_ipv6_prefix=129", "out of range"),
                     ("client_table_size=1000", "not a power of two"),
                     ("client_limit_exceptions=10.0.0.1/8", "host bits set"),
                     ("client_rate_window=0", "out of range")):
        p = subprocess.run([ringmxd_path(), "-t", "-o", kv], capture_output=True, text=True,
                           timeout=20)
        check_eq(p.returncode, 1, "exit code for %s" % kv)
        check("-o %s: %s" % (kv, want) in p.stderr, "%s: %s" % (kv, p.stderr))
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write("# limits\nclient_connection_limit = lots\n")
        f.flush()
        p = subprocess.run([ringmxd_path(), "-t", "-c", f.name], capture_output=True, text=True,
                           timeout=20)
        check_eq(p.returncode, 1, "exit code")
        check("%s:2: client_connection_limit: not a number" % f.name in p.stderr, p.stderr)


T.main()
