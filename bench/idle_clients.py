#!/usr/bin/env python3
"""bench/idle_clients.py HOST PORT COUNT [SRC_FIRST-SRC_LAST] - hold COUNT idle SMTP connections.

Used by bench/scale (ringmx-load has no idle mode: every connection it opens sends
mail). Opens COUNT TCP connections to HOST:PORT, each bound to the next IPv4 loopback
source address of the range (default 127.0.0.2-127.0.0.250, IP_BIND_ADDRESS_NO_PORT so
the port is chosen at connect time), reads each 220 greeting, then prints
"ready N" on stdout and holds every connection open, sending nothing, until stdin
reaches EOF (or 600 s pass), then closes them all and exits.

At most 64 connects are in flight at once (a real crowd of clients arrives spread out,
not as one burst); the process raises its soft RLIMIT_NOFILE to the hard limit.
Exit status 1 if a connection failed or did not get a 220.
"""
import ipaddress
import os
import resource
import selectors
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24


def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.2-127.0.0.250"
    a, _, b = rng.partition("-")
    first, last = int(ipaddress.IPv4Address(a)), int(ipaddress.IPv4Address(b or a))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if count + 16 > hard:
        sys.exit(f"idle_clients: {count} connections need more than the hard file limit {hard}")

    sel = selectors.DefaultSelector()
    socks, pending, ready, failed = [], {}, 0, 0
    src = first
    deadline = time.time() + 120
    nxt = 0
    while ready + failed < count:
        while nxt < count and len(pending) < 64:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((str(ipaddress.IPv4Address(src)), 0))
            src = first if src >= last else src + 1
            s.setblocking(False)
            try:
                s.connect((host, port))
            except BlockingIOError:
                pass
            pending[s] = b""
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
            nxt += 1
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            try:
                data = s.recv(512)
            except OSError:
                data = b""
            buf = pending[s] + data
            if data and not buf.endswith(b"\r\n"):
                pending[s] = buf
                continue
            sel.unregister(s)
            del pending[s]
            if buf.startswith(b"220") and b"\r\n" in buf:
                ready += 1
            else:
                failed += 1
        if time.time() > deadline:
            failed += len(pending)
            break
    print(f"ready {ready} failed {failed}", flush=True)
    # Hold until told to go (stdin EOF) or 600 s.
    sel2 = selectors.DefaultSelector()
    sel2.register(sys.stdin, selectors.EVENT_READ)
    end = time.time() + 600
    while time.time() < end:
        if sel2.select(timeout=1):
            if not os.read(sys.stdin.fileno(), 4096):
                break
    for s in socks:
        s.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
