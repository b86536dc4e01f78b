#!/usr/bin/env python3
"""test_tls_tickets - TLS session resumption (docs/tls.md, "Session tickets")
with openssl s_client against a one-worker ringmxd with an implicit TLS
listener:

  - tls_session_tickets = yes (default): a session saved with -sess_out is
    resumed with -sess_in ("Reused") for TLS 1.3 and TLS 1.2; -reconnect
    resumes too for TLS 1.2 (s_client's -reconnect cannot resume TLS 1.3:
    it reconnects before the post-handshake NewSessionTicket is read);
    the disconnect lines say "/resumed" and the tls_resumed counter
    matches exactly.
  - tls_session_tickets = no: no ticket is issued (and, with wolfSSL's
    session cache off, no session id either), so s_client has no session
    to save; every connection is "New" for both versions and tls_resumed
    stays 0.

Owner: the TLS module. Standalone: exit 0 / 1 / 77, last line
"N passed, M failed". Uses ringmx_harness (read-only)."""

import os
import re
import subprocess
import tempfile

from ringmx_harness import (Server, Suite, check, check_eq, fail, free_port,
                            self_signed_cert)

OPENSSL = "/usr/bin/openssl"
T = Suite(__file__)
TMP = tempfile.TemporaryDirectory(prefix="ringmx-tickets-")
D = TMP.name
VERSIONS = (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2"))


def make_cert():
    """ECDSA P-256 self-signed cert/key for localhost."""
    return self_signed_cert(D)


if not os.access(OPENSSL, os.X_OK):
    print("skip %s: openssl is not installed" % T.name)
    print("0 passed, 0 failed")
    raise SystemExit(77)
CERT, KEY = make_cert()


def implicit_server(*opts):
    port = free_port()
    args = ["-o", "tls_cert=" + CERT, "-o", "tls_key=" + KEY]
    for o in opts:
        args += ["-o", o]
    return Server(args=args, listen=(), port=port, workers=1,
                  config_text="listen = 127.0.0.1:%d tls=implicit\n" % port)


def s_client(port, *args):
    """One implicit-TLS session: greeting, QUIT. Returns (stdout, outcomes)
    where outcomes lists s_client's 'New, TLSv1.x' / 'Reused, TLSv1.x'."""
    cmd = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-ign_eof",
           "-CAfile", CERT] + list(args)
    p = subprocess.run(cmd, input="QUIT\r\n", capture_output=True, text=True, timeout=20)
    out = p.stdout
    check("221 2.0.0 Bye" in out, "%s: no 221 (exit %d): %s\n%s"
          % (" ".join(cmd), p.returncode, out[-1200:], p.stderr[-600:]))
    return out, re.findall(r"^(New|Reused), (TLSv1\.[23]),", out, re.M)


def session_file(name):
    path = os.path.join(D, name)
    if os.path.exists(path):
        os.unlink(path)
    return path


def tls_lines(s, since):
    """The tls=... field of every disconnect line after offset since."""
    return re.findall(r"disconnect from \S+ .*?tls=(\S+)", s.log_since(since))


@T.test("tickets on (default): -sess_out then -sess_in is Reused for TLS 1.3 and 1.2; "
        "-reconnect resumes TLS 1.2; tls_resumed and /resumed match")
def _():
    with implicit_server() as s:
        off = s.log_size()
        for flag, ver in VERSIONS:
            sess = session_file("on" + flag)
            _out, got = s_client(s.port, flag, "-sess_out", sess)
            check_eq(got, [("New", ver)], "first %s connection" % ver)
            check(os.path.exists(sess) and os.path.getsize(sess) > 0,
                  "%s: s_client saved no session (no ticket received)" % ver)
            _out, got = s_client(s.port, flag, "-sess_in", sess)
            check_eq(got, [("Reused", ver)], "second %s connection (-sess_in)" % ver)
        out, got = s_client(s.port, "-tls1_2", "-reconnect")
        check_eq(got, [("New", "TLSv1.2")] + [("Reused", "TLSv1.2")] * 5,
                 "-tls1_2 -reconnect (1 full + 5 resumed)")
        # 4 + 6 handshakes, of which 1 + 1 + 5 resumed.
        lines = s.wait_log(r"disconnect from .* tls=", count=10, since=off)
        check_eq(len(lines), 10, "disconnect lines")
        tls = tls_lines(s, off)
        check_eq(sum(t.endswith("/resumed") for t in tls), 7, "/resumed lines in %r" % tls)
        check(tls[1].startswith("TLSv1.3/") and tls[1].endswith("/resumed"), tls[1])
        check(tls[3].startswith("TLSv1.2/") and tls[3].endswith("/resumed"), tls[3])
        st = s.stats()
        check_eq(st.get("tls_handshakes"), 10, "tls_handshakes")
        check_eq(st.get("tls_resumed"), 7, "tls_resumed")
        check_eq(st.get("tls_handshake_failures"), 0, "tls_handshake_failures")


@T.test("tickets off (-o tls_session_tickets=no): no session to save, every connection "
        "New for TLS 1.3 and 1.2; tls_resumed 0")
def _():
    with implicit_server("tls_session_tickets=no") as s:
        off = s.log_size()
        for flag, ver in VERSIONS:
            sess = session_file("off" + flag)
            out, got = s_client(s.port, flag, "-sess_out", sess)
            check_eq(got, [("New", ver)], "first %s connection" % ver)
            check("TLS session ticket:" not in out, "%s: a ticket was issued: %s"
                  % (ver, out[-1500:]))
            # OpenSSL saves a session only when it can be resumed: a ticket,
            # or (TLS 1.2) a session id, which the server never gives with
            # its session cache off. Nothing to offer, so the next is New.
            check(not os.path.exists(sess), "%s: s_client saved a resumable session" % ver)
            _out, got = s_client(s.port, flag)
            check_eq(got, [("New", ver)], "second %s connection" % ver)
        _out, got = s_client(s.port, "-tls1_2", "-reconnect")
        check_eq(got, [("New", "TLSv1.2")] * 6, "-tls1_2 -reconnect")
        s.wait_log(r"disconnect from .* tls=", count=10, since=off)
        tls = tls_lines(s, off)
        check(not any(t.endswith("/resumed") for t in tls), "resumed: %r" % tls)
        st = s.stats()
        check_eq(st.get("tls_handshakes"), 10, "tls_handshakes")
        check_eq(st.get("tls_resumed"), 0, "tls_resumed")


T.main(requires=[OPENSSL])
