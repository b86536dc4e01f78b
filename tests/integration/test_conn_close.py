#!/usr/bin/env python3
"""test_conn_close - a connection's life as the client and the system see
it (engine/conn/conn.c, engine/runtime/worker.c): after the client's QUIT
the 221 and the server's FIN arrive in one TCP segment, over TLS with the
close_notify in it too; a 421 the server ends a session with while the
client is still writing still reaches the client; accepted sockets are
direct descriptors (none in the process's descriptor table) whose
client address comes with the accept; the counts stay right.

Segments are counted on the client's socket (TCP_INFO tcpi_segs_in), so
the checks see the server's packets, not its code.

Owner: the connection module (engine/conn). Standalone: exit 0 / 1 / 77,
last line "N passed, M failed". Uses ringmx_harness (read-only)."""

import os
import socket
import ssl
import struct
import tempfile

from ringmx_harness import (Client, Server, Suite, check, check_eq, free_port, ipv6_available,
                            self_signed_cert, smtplib_send, wait_for)

T = Suite(__file__)
TMP = tempfile.TemporaryDirectory(prefix="ringmx-close-")
srv = T.shared(workers=1)

TCP_CLOSE_WAIT = 8


def tcp_info(sock):
    """(tcpi_state, tcpi_segs_in) of a connected socket (linux/tcp.h)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    return raw[0], struct.unpack_from("I", raw, 140)[0]


def read_to_eof(sock):
    data = b""
    while True:
        d = sock.recv(4096)
        if not d:
            return data
        data += d


def quit_segments(sock, send, read_rest):
    """Send QUIT once everything before it is answered and acknowledged;
    return what came back and how many segments carried it, FIN included."""
    before = tcp_info(sock)[1]
    send(b"QUIT\r\n")
    data = read_rest()
    wait_for(lambda: tcp_info(sock)[0] == TCP_CLOSE_WAIT, what="the server's FIN")
    return data, tcp_info(sock)[1] - before


@T.test("QUIT: the 221 and the FIN come in one segment (MSG_MORE, close linked to the send)")
def _():
    for i in range(5):
        with socket.create_connection(("127.0.0.1", srv().port), timeout=10) as s:
            f = s.makefile("rb")
            check(f.readline().startswith(b"220 "), "greeting")
            s.sendall(b"EHLO c.test\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            data, segs = quit_segments(s, s.sendall, lambda: f.read())
            check_eq(data, b"221 2.0.0 Bye\r\n", "reply %d" % i)
            check_eq(segs, 1, "segments after QUIT, connection %d" % i)


@T.test("a 421 the server ends with while the client still writes: the reply arrives, "
        "then the close (not held back)")
def _():
    with Server(workers=1, args=["-o", "error_limit=5"]) as s:
        for i in range(3):
            with s.client() as c:
                c.send_async(b"XYZZY\r\n" * 20000)
                for _ in range(6):
                    c.expect(500, "5.5.2")
                c.expect(421, "4.7.0", "too many errors")
                c.expect_closed()
                c.wait_sent()
        smtplib_send(s)


def tls_server():
    """A plaintext listener with STARTTLS and an implicit TLS one: (server,
    implicit port, CA file)."""
    cert, key = self_signed_cert(os.path.join(TMP.name, "tls"))
    port, implicit = free_port(), free_port()
    s = Server(args=["-o", "tls_cert=" + cert, "-o", "tls_key=" + key], listen=(), port=port,
               workers=1, config_text="listen = 127.0.0.1:%d\nlisten = 127.0.0.1:%d tls=implicit\n"
               % (port, implicit))
    return s, implicit, cert


def tls_quit(tls):
    """QUIT over TLS: the 221, the close_notify and the FIN, in one segment
    (the TLS socket took over the raw one's descriptor)."""
    f = tls.makefile("rb")

    def rest():
        line = f.readline()
        check_eq(tls.recv(100), b"", "close_notify after the 221")
        return line
    data, segs = quit_segments(tls, tls.sendall, rest)
    check_eq(data, b"221 2.0.0 Bye\r\n", "reply")
    return segs


@T.test("STARTTLS and implicit TLS, QUIT: 221, close_notify and FIN in one segment")
def _():
    s, implicit, cert = tls_server()
    with s:
        ctx = ssl.create_default_context(cafile=cert)
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
            f = raw.makefile("rb")
            check(f.readline().startswith(b"220 "), "greeting")
            raw.sendall(b"EHLO c.test\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\n")
            check(f.readline().startswith(b"220 "), "220 for STARTTLS")
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"EHLO c.test\r\n")
                tf = tls.makefile("rb")
                while not tf.readline().startswith(b"250 "):
                    pass
                check_eq(tls_quit(tls), 1, "segments after QUIT (STARTTLS)")
        with socket.create_connection(("127.0.0.1", implicit), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tf = tls.makefile("rb")
                check(tf.readline().startswith(b"220 "), "greeting")
                check_eq(tls_quit(tls), 1, "segments after QUIT (implicit TLS)")


@T.test("200 QUITs: 200 accepted, 200 closed, a disconnect line for each")
def _():
    s = srv()
    before = s.stats()
    off = s.log_size()
    ports = []
    for i in range(200):
        with s.client() as c:
            c.quit()
            ports.append(c.local_port)
    lines = s.wait_log(r"disconnect from \[127\.0\.0\.1\]:\d+", count=200, since=off)
    check_eq(len(lines), 200, "disconnect lines")
    for p in ports:
        check(any(":%d " % p in ln for ln in lines), "no disconnect line for port %d" % p)
    after = s.stats()
    check_eq(after["connections_accepted"] - before["connections_accepted"], 200, "accepted")
    check_eq(after["connections_closed"] - before["connections_closed"], 200, "closed")


@T.test("accepted sockets are direct descriptors: 50 open connections add no entry to "
        "ringmxd's descriptor table")
def _():
    s = srv()
    fds = "/proc/%d/fd" % s.proc.pid
    n0 = len(os.listdir(fds))
    cs = [s.client() for _ in range(50)]
    grew = len(os.listdir(fds)) - n0
    for c in cs:
        c.quit()
        c.close()
    check(grew < 5, "the descriptor table grew by %d with 50 connections open" % grew)


@T.test("the client's address comes with its accept: 127.0.0.x sources, [::1]")
def _():
    s = srv()
    for i in (2, 77, 254):
        src = "127.0.0.%d" % i
        with Client(s.port, source=src) as c:
            c.quit()
            line = s.wait_disconnect(c.local_port)
            check("[%s]:%d " % (src, c.local_port) in line, line)
    if not ipv6_available():
        return
    with Server(workers=1, listen=("::1",)) as s6:
        with Client(s6.port, host="::1") as c:
            c.ehlo()
            c.cmd("MAIL FROM:<a@sender.test>").expect(250)
            c.quit()
            line = s6.wait_disconnect(c.local_port)
            check("[IPv6:::1]:%d " % c.local_port in line, line)


if __name__ == "__main__":
    T.main()
