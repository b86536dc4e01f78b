#!/usr/bin/env python3
"""test_fair_share - fair sharing of a worker's receive buffers and staging
memory (issue 12, part 3; docs/defences.md "Fair sharing of buffers and
memory"), on the real ringmxd:
  - 500 connections that pipeline commands and never read their replies,
    beside 50 normal clients: every normal message is accepted (p99
    latency printed), the never-readers are cut off and counted;
  - a client that never reads, alone, is cut off at send_timeout;
  - slow large uploads beside small messages: every small message gets 250,
    a large one declared with SIZE= past the large messages' share gets
    452 4.3.1 at MAIL, not a 451 after its upload;
  - start-up and SIGHUP refuse a message_size_limit that half of
    spool_memory cannot stage.

Owner: fair sharing (engine/conn/conn.c, engine/spool/spool_share.c).
Standalone: exit 0 / 1 / 77, last line "N passed, M failed". Uses
ringmx_harness (read-only)."""

import resource
import select
import signal
import shutil
import smtplib
import socket
import tempfile
import threading
import time

from ringmx_harness import (Suite, Server, Client, check, check_eq, fail, ringmxd_path, run,
                            wait_for, TIMEOUT)

T = Suite(__file__)

NEVER_READERS = 500
NORMAL_CLIENTS = 50
MESSAGES_EACH = 4


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            fail("RLIMIT_NOFILE hard limit %d < %d needed" % (hard, need))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def small_window_socket():
    """A client socket that looks like one across the internet: loopback's
    64 KiB MSS would let the server's send buffer grow to megabytes, so a
    client that never reads would need megabytes of pipelined commands to
    stall it. A 1400-byte MSS and a 4 KiB receive buffer keep it at tens of
    kilobytes, as on a real path."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
    s.settimeout(TIMEOUT)
    return s


def never_reader(port, burst, i=0):
    """Connect with a small receive window, push a pipelined burst without
    ever reading: its replies cannot drain. Each comes from its own
    127.3.x.y, as a botnet's do (client_connection_limit counts per
    address)."""
    s = small_window_socket()
    s.bind(("127.3.%d.%d" % (i // 200, i % 200 + 1), 0))
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    try:
        s.send(burst)  # as much as the kernel takes; the rest never matters
    except (BlockingIOError, ConnectionError):
        pass
    return s


def closed_by_server(socks, deadline):
    """Drain what the server sent on each socket until EOF or reset; the
    number closed by the deadline."""
    open_ = {s.fileno(): s for s in socks}
    for s in socks:
        s.setblocking(False)
    closed = 0
    while open_ and time.monotonic() < deadline:
        r, _, _ = select.select(list(open_), [], [], max(0.01, deadline - time.monotonic()))
        for fd in r:
            try:
                if open_[fd].recv(65536) != b"":
                    continue
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                pass
            del open_[fd]
            closed += 1
    return closed


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def small_body(i, lines=40):
    return ("Subject: small %d\r\n\r\n" % i + "line of a small message\r\n" * lines).encode()


def normal_client(port, idx, n, latencies, errors, lock, lines):
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="normal%d.test" % idx,
                          timeout=30, source_address=("127.4.0.%d" % (idx + 1), 0)) as c:
            c.ehlo()
            for k in range(n):
                t0 = time.monotonic()
                c.sendmail("n%d@sender.test" % idx, ["u@example.test"],
                           small_body(idx * 100 + k, lines))
                with lock:
                    latencies.append(time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001 - any failure of a normal client counts
        with lock:
            errors.append("client %d: %s: %s" % (idx, type(e).__name__, e))


def run_normal(port, clients, each, lines=40):
    latencies, errors, lock = [], [], threading.Lock()
    ts = [threading.Thread(target=normal_client,
                           args=(port, i, each, latencies, errors, lock, lines))
          for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    check(not any(t.is_alive() for t in ts), "a normal client hung")
    return latencies, errors


@T.test("500 never-reading pipeliners beside 50 normal clients: every message accepted")
def _():
    raise_nofile(4 * (NEVER_READERS + NORMAL_CLIENTS) + 256)
    # 256 buffers of 4 KiB: the never-readers alone could hold them all
    # ten times over if each kept what it pushed.
    args = ["-o", "max_connections=1000", "-o", "recv_buffers=256",
            "-o", "recv_buffer_size=4096", "-o", "send_timeout=5s",
            "-o", "command_timeout=300s",
            # NOOP floods end at junk_limit by default; lift it so what is
            # measured is the buffers, not that limit (RCPT or pipelined
            # transactions hold buffers just the same).
            "-o", "junk_limit=1000000"]
    with Server(args=args, workers=1) as srv:
        burst = b"EHLO x\r\n" * (32 * 1024 // 8)
        t0 = time.monotonic()
        nr = [never_reader(srv.port, burst, i) for i in range(NEVER_READERS)]
        time.sleep(0.5)  # let them stall with their buffers held
        lat, errors = run_normal(srv.port, NORMAL_CLIENTS, MESSAGES_EACH)
        check(not errors, "normal clients failed: %s" % "; ".join(errors[:5]))
        check_eq(len(lat), NORMAL_CLIENTS * MESSAGES_EACH, "normal messages accepted")
        print("  normal messages: %d, p50 %.3fs, p99 %.3fs, max %.3fs (%.1fs after the "
              "never-readers connected)" % (len(lat), sorted(lat)[len(lat) // 2], p99(lat),
                                           max(lat), time.monotonic() - t0), flush=True)
        closed = closed_by_server(nr, time.monotonic() + 15)
        for s in nr:
            s.close()
        st = srv.stats()
        print("  never-readers closed by the server: %d/%d; recv_stall_cutoffs=%d "
              "send_timeouts=%d recv_enobufs=%d" % (
                  closed, NEVER_READERS, st.get("recv_stall_cutoffs", 0),
                  st.get("send_timeouts", 0), st.get("recv_enobufs", 0)), flush=True)
        # Those not cut off had all their replies taken by the kernel's
        # send buffer (it grows on loopback): they hold no receive buffer
        # and wait for their next command like any idle session.
        check(closed >= NEVER_READERS // 2, "never-readers cut off: %d" % closed)
        check_eq(st.get("recv_stall_cutoffs", 0) + st.get("send_timeouts", 0) +
                 st.get("recv_hold_cutoffs", 0), closed, "cut-offs counted")
        check_eq(st.get("messages_accepted", 0), NORMAL_CLIENTS * MESSAGES_EACH,
                 "messages_accepted")

@T.test("one client that never reads, no other waiting for buffers: cut off at send_timeout")
def _():
    with Server(args=["-o", "send_timeout=2s", "-o", "command_timeout=300s",
                      "-o", "junk_limit=1000000"], workers=1) as srv:
        t0 = time.monotonic()
        s = never_reader(srv.port, b"EHLO x\r\n" * (32 * 1024 // 8))
        srv.wait_log(r"did not read its replies within send_timeout; closing", timeout=15)
        dt = time.monotonic() - t0
        print("  cut off %.1fs after it connected (send_timeout=2s)" % dt, flush=True)
        check(dt >= 2, "cut off before send_timeout: %.1fs" % dt)
        check_eq(closed_by_server([s], time.monotonic() + 5), 1, "closed")
        s.close()
        st = srv.stats()
        check_eq(st.get("send_timeouts", 0), 1, "send_timeouts")
        check_eq(st.get("recv_stall_cutoffs", 0), 0, "recv_stall_cutoffs (no pressure)")



@T.test("input held while the client does not read is packed into few buffers, byte for byte")
def _():
    # Small segments (MSS 536): each lands in a receive buffer of its own while the
    # session's output is full, so the connection passes CONN_HOLD_MAX and its held
    # input is packed (recv_compactions); once the client reads, every one of its
    # 3000 pipelined EHLOs must have been answered, in order, nothing lost or mangled.
    n = 3000
    with Server(args=["-o", "junk_limit=1000000", "-o", "recv_buffer_size=4096",
                      "-o", "send_timeout=30s"], workers=1) as srv:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(TIMEOUT)
        s.connect(("127.0.0.1", srv.port))
        for i in range(n // 50):
            s.sendall(b"".join(b"EHLO c%d.test\r\n" % (i * 50 + k) for k in range(50)))
        time.sleep(1.0)  # not reading: the server's output stays full meanwhile
        s.sendall(b"QUIT\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        lines = data.split(b"\r\n")
        finals = [l for l in lines if l.startswith(b"250 ")]
        bad = [l for l in lines if l[:1] in (b"4", b"5")]
        st = srv.stats()
        print("  %d EHLO replies, recv_compactions=%d recv_held=%d" % (
            len(finals), st.get("recv_compactions", 0), st.get("recv_held", 0)), flush=True)
        check_eq(bad, [], "error replies")
        check_eq(len(finals), n, "EHLO replies")
        check(lines[-2].startswith(b"221 "), "QUIT answered last: %r" % lines[-3:])
        check(st.get("recv_compactions", 0) > 0, "held input was never packed: %r" % st)


def dribbler_open(port, i, head):
    c = Client(port)
    c.ehlo()
    c.cmd("MAIL FROM:<big%d@sender.test>" % i).expect(250)
    c.cmd("RCPT TO:<u@example.test>").expect(250)
    c.cmd("DATA").expect(354)
    c.send(head)
    return c


@T.test("slow large uploads beside small messages: every small message gets 250")
def _():
    d = tempfile.mkdtemp(prefix="ringmx-fair-share-")
    # 4 MiB of staging (1024 chunks); large messages share 2 MiB of it.
    # Four uploads of 1 MB stalled mid-DATA would hold all but about 24
    # chunks: small messages of 16 KiB from 20 clients at once would not
    # fit in that.
    args = ["-o", "sink=spool", "-o", "spool_dir=" + d + "/spool", "-o", "durability=none",
            "-o", "spool_memory=4m", "-o", "message_size_limit=1500k"]
    try:
        with Server(args=args, workers=1) as srv:
            line = b"x" * 998 + b"\r\n"
            head = b"Subject: large\r\n\r\n" + line * 1020
            big = [dribbler_open(srv.port, i, head) for i in range(4)]
            for c in big:  # one byte at a time from here on: slow
                c.send(b"y")
            wait_for(lambda: srv.stats().get("bytes_received", 0) >= 4 * len(head),
                     what="the large uploads staged")
            lat, errors = run_normal(srv.port, 20, 3, lines=650)
            check(not errors, "small messages failed: %s" % "; ".join(errors[:5]))
            check_eq(len(lat), 60, "small messages accepted")
            print("  small messages: %d accepted beside 4 stalled large uploads, p99 %.3fs"
                  % (len(lat), p99(lat)), flush=True)
            # A large message declared with SIZE= while the share is taken
            # is refused at MAIL, before its upload.
            with srv.client() as c:
                c.ehlo()
                c.cmd("MAIL FROM:<late@sender.test> SIZE=1000000").expect(452, "4.3.1")
                c.cmd("QUIT").expect(221)
            codes = []
            for c in big:
                c.send(b"\r\n.\r\n")
                codes.append(c.reply().code)
                c.close()
            print("  the large uploads ended with %s" % codes, flush=True)
            check(codes.count(250) >= 1, "the share held at least one large upload")
            check(set(codes) <= {250, 451}, "large uploads: 250 or 451")
            st = srv.stats()
            check(st.get("spool_share_full", 0) >= 1, "spool_share_full counted")
            check_eq(st.get("spool_share_refused", 0), 1, "spool_share_refused")
            # The share is given back: a large message goes through now.
            with srv.client() as c:
                c.ehlo()
                c.cmd("MAIL FROM:<after@sender.test> SIZE=1000000").expect(250)
                c.cmd("RCPT TO:<u@example.test>").expect(250)
                c.cmd("DATA").expect(354)
                c.send(head + b".\r\n")
                c.expect(250)
    finally:
        shutil.rmtree(d)


@T.test("start-up and SIGHUP refuse a message_size_limit half of spool_memory cannot stage")
def _():
    d = tempfile.mkdtemp(prefix="ringmx-fair-share-")
    try:
        r = run([ringmxd_path(), "-t", "-o", "sink=spool", "-o", "spool_dir=" + d + "/s",
                 "-o", "spool_memory=8m"])
        check(r.returncode != 0, "exit status %d" % r.returncode)
        check("spool_memory: 8388608 bytes cannot stage a message of message_size_limit "
              "(10240000 bytes)" in r.stderr, "the error: %r" % r.stderr)
        check("at least 21135168" in r.stderr, "the minimum named: %r" % r.stderr)
        conf = "sink = spool\nspool_dir = %s/s\nspool_memory = 4m\nmessage_size_limit = %s\n"
        with Server(config_text=conf % (d, "1m"), workers=1) as srv:
            off = srv.log_size()
            srv.write_config(conf % (d, "2m"))
            srv.signal(signal.SIGHUP)
            srv.wait_log(r"reload refused.*spool_memory: 4194304 bytes cannot stage", since=off)
            with srv.client() as c:  # the running limit (1m) still applies
                c.ehlo()
                c.cmd("MAIL FROM:<a@sender.test> SIZE=1500000").expect(552, "5.3.4")
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    T.main()
