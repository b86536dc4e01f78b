#!/usr/bin/env python3
"""Clients that reset the connection right after the final dot.

The message is committed (its batch is on its way to disk) but the client
is gone, so the spool keeps the transaction until the batch is durable
while the connection slot already serves the next client. The spool once
sized its transaction pool at one per connection and aborted on an
assertion after a few dozen such resets with max_connections=2."""

import socket
import struct
import time

from ringmx_harness import Client, Server, Suite, check, smtplib_send

T = Suite(__file__)


def reply(sock):
    buf = b""
    while True:
        d = sock.recv(65536)
        if not d:
            raise EOFError("server closed")
        buf += d
        lines = buf.split(b"\r\n")
        if buf.endswith(b"\r\n") and lines[-2][3:4] != b"-":
            return buf


def greeted(s):
    """A new connection that got the 220. The slot of the client that just reset stays
    busy until the kernel hands back its receive (a cancel's CQE, later on a loaded box),
    and with max_connections=2 the next client may meanwhile get 421 4.3.2 too many
    connections: try again then, for up to 10 s."""
    deadline = time.monotonic() + 10
    while True:
        a = socket.create_connection((s.host, s.port), timeout=10)
        g = reply(a)
        if g.startswith(b"220 "):
            return a
        a.close()
        check(g.startswith(b"421 4.3.2") and time.monotonic() < deadline,
              "greeting: %r" % g)
        time.sleep(0.05)


@T.test("200 resets right after the final dot with max_connections=2: no crash, still serving")
def _():
    with Server(workers=1, args=["-o", "sink=spool", "-o", "max_connections=2"]) as s:
        with Client(s.port) as held:              # keeps one slot in a transaction
            held.ehlo()
            held.cmd("MAIL FROM:<held@example.org>").expect(250)
            body = (b"x" * 998 + b"\r\n") * 300      # ~300 KB: several staging chunks
            done = 0
            t0 = time.monotonic()
            while done < 200 and time.monotonic() - t0 < 60:
                a = greeted(s)
                a.sendall(b"EHLO a\r\n")
                reply(a)
                a.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n")
                r = reply(a)
                while r.count(b"\r\n") < 3:
                    r += reply(a)
                check(r.split(b"\r\n")[2].startswith(b"354"), "DATA: %r" % r)
                a.sendall(body + b".\r\n")
                a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                a.close()                          # RST after the dot
                done += 1
            check(done == 200, "only %d cycles in 60s" % done)
            check(s.alive(), "ringmxd died; log tail:\n" + s.log()[-3000:])
            held.cmd("RSET").expect(250)
        smtplib_send(s)


T.main()
