#!/usr/bin/env python3
"""test_tls - native TLS in ringmxd (issue 5, docs/tls.md) with real peers:
openssl s_client (STARTTLS and implicit, TLS 1.2 and 1.3; TLS 1.0/1.1
refused), Python ssl + smtplib, swaks --tls / --tls-on-connect, the
CVE-2011-0411 injection probes, SNI, SIGHUP reload with a session open
across it, start-up refusals (expired, key mismatch, not PEM, missing) and
Received: with ESMTPS through the spool.

Owner: the TLS module. Standalone: exit 0 / 1 / 77, last line
"N passed, M failed". Uses ringmx_harness (read-only)."""

import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile

from ringmx_harness import (Suite, Server, Client, Skip, check, check_eq, fail, free_port, run,
                            ringmxd_path, wait_for, TIMEOUT)

OPENSSL = "/usr/bin/openssl"
SWAKS = "/usr/bin/swaks"
T = Suite(__file__)
TMP = tempfile.TemporaryDirectory(prefix="ringmx-tls-")
D = TMP.name


def sh(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=30, **kw)
    if r.returncode != 0:
        fail("%s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr[-800:]))
    return r


def make_cert(name, cn, start=None, end=None):
    """ECDSA P-256 self-signed cert/key pair; start/end 'YYYYMMDDHHMMSSZ'."""
    cert, key = os.path.join(D, name + ".pem"), os.path.join(D, name + "-key.pem")
    san = "subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1" % cn
    if start is None:
        sh([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=" + cn,
            "-addext", san])
        return cert, key
    ca = os.path.join(D, "ca-" + name)
    os.makedirs(ca, exist_ok=True)
    open(os.path.join(ca, "index.txt"), "w").close()
    with open(os.path.join(ca, "serial"), "w") as f:
        f.write("1000\n")
    conf = os.path.join(ca, "ca.cnf")
    with open(conf, "w") as f:
        f.write("[ca]\ndefault_ca=d\n[d]\ndir=%s\ndatabase=%s/index.txt\nnew_certs_dir=%s\n"
                "serial=%s/serial\ndefault_md=sha256\npolicy=p\ncopy_extensions=copy\n"
                "[p]\ncommonName=supplied\n" % (ca, ca, ca, ca))
    csr = os.path.join(ca, "req.csr")
    sh([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn, "-addext", san])
    sh([OPENSSL, "ca", "-batch", "-selfsign", "-config", conf, "-keyfile", key, "-in", csr,
        "-out", cert, "-startdate", start, "-enddate", end, "-notext"])
    return cert, key


if not os.access(OPENSSL, os.X_OK):
    print("skip %s: openssl is not installed" % T.name)
    print("0 passed, 0 failed")
    raise SystemExit(77)
CERT, KEY = make_cert("default", "localhost")
SNI_CERT, SNI_KEY = make_cert("sni", "mail.example.org")


srv = T.shared(args=["-o", "tls_cert=" + CERT, "-o", "tls_key=" + KEY,
                     "-o", "tls_sni=mail.example.org %s %s" % (SNI_CERT, SNI_KEY)])
_implicit = {}


def implicit_srv():
    """A second shared daemon with an implicit TLS listener only."""
    if "srv" not in _implicit:
        port = free_port()
        s = Server(args=["-o", "tls_cert=" + CERT, "-o", "tls_key=" + KEY], listen=(),
                   config_text="listen = 127.0.0.1:%d tls=implicit\n" % port, port=port)
        s.start()
        _implicit["srv"] = s
    return _implicit["srv"]


def s_client(port, *args, stdin="EHLO c.test\r\nQUIT\r\n", starttls=True):
    cmd = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-ign_eof",
           "-CAfile", CERT]
    if starttls:
        cmd += ["-starttls", "smtp"]
    return subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True,
                          timeout=20)


def _aes_first():
    out = subprocess.run([ringmxd_path(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"^tls: default suites (AES-GCM|ChaCha20-Poly1305) first", out, re.M)
    check(m, "ringmxd --version has no tls line: %r" % out)
    return m.group(1) == "AES-GCM"


# The server's order wins: what the default order puts first is negotiated.
AES_FIRST = _aes_first()


@T.test("the default suite order: what ringmxd --version says comes first is what a client "
        "offering both gets (TLS 1.3 and 1.2; the client lists AES-GCM first)")
def _():
    want13 = "TLS_AES_256_GCM_SHA384" if AES_FIRST else "TLS_CHACHA20_POLY1305_SHA256"
    p = s_client(srv().port, "-tls1_3", "-ciphersuites",
                 "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")
    check("Cipher is " + want13 in p.stdout or "Ciphersuite: " + want13 in p.stdout,
          "TLS 1.3: want %s: %s" % (want13, p.stdout[-1200:]))
    want12 = "ECDHE-ECDSA-AES256-GCM-SHA384" if AES_FIRST else "ECDHE-ECDSA-CHACHA20-POLY1305"
    p = s_client(srv().port, "-tls1_2", "-cipher",
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305")
    check("Cipher is " + want12 in p.stdout or "Cipher    : " + want12 in p.stdout,
          "TLS 1.2: want %s: %s" % (want12, p.stdout[-1200:]))


def ctx(cafile=CERT, **kw):
    c = ssl.create_default_context(cafile=cafile)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


# ---------------------------------------------------------------- handshakes

@T.test("s_client -starttls smtp, TLS 1.3 and 1.2: EHLO after TLS, no STARTTLS offered")
def _():
    for ver, want in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
        p = s_client(srv().port, ver)
        check("Protocol  : " + want in p.stdout or "New, " + want in p.stdout,
              "%s not negotiated: %s" % (want, p.stdout[-1500:]))
        check("221 2.0.0 Bye" in p.stdout, p.stdout[-800:])
        after = p.stdout.split("250 CHUNKING", 1)[-1]
        check("STARTTLS" not in after, "STARTTLS offered after TLS: " + p.stdout[-800:])
    srv().wait_log(r"disconnect from .* tls=TLSv1\.2/TLS_ECDHE_ECDSA_WITH_%s"
                   % ("AES_256_GCM_SHA384" if AES_FIRST else "CHACHA20_POLY1305_SHA256"))


@T.test("plaintext EHLO offers STARTTLS on a listener with a certificate")
def _():
    with srv().client() as c:
        r = c.ehlo()
        check("STARTTLS" in r.texts, r)
        c.cmd("STARTTLS now").expect(501, "5.5.4")
        c.quit()


@T.test("implicit TLS (s_client -connect): handshake first, then the 220")
def _():
    s = implicit_srv()
    p = s_client(s.port, starttls=False)
    check(re.search(r"^220 mx\.ringmx\.test ESMTP", p.stdout, re.M), p.stdout[-1500:])
    check("STARTTLS" not in p.stdout.split("220 mx", 1)[1], "STARTTLS offered on implicit")
    check("221 2.0.0 Bye" in p.stdout, p.stdout[-800:])


@T.test("TLS 1.0 and 1.1 are refused (STARTTLS and implicit)")
def _():
    for ver in ("-tls1", "-tls1_1"):
        p = s_client(srv().port, ver, "-cipher", "DEFAULT@SECLEVEL=0")
        check(p.returncode != 0 and "Cipher is (NONE)" in p.stdout + p.stderr or
              "no protocols available" in p.stderr, "%s accepted: %s" % (ver, p.stdout[-800:]))
        p = s_client(implicit_srv().port, ver, "-cipher", "DEFAULT@SECLEVEL=0", starttls=False)
        check(p.returncode != 0, "%s accepted on implicit: %s" % (ver, p.stdout[-800:]))
    srv().wait_log(r"TLS handshake failed from \[127\.0\.0\.1\]:\d+: ")


@T.test("Python smtplib STARTTLS and SMTP_SSL: full sends")
def _():
    with smtplib.SMTP("127.0.0.1", srv().port, local_hostname="py.test", timeout=TIMEOUT) as s:
        s.starttls(context=ctx())
        code, _ = s.ehlo()
        check_eq(code, 250, "EHLO after STARTTLS")
        check(not s.has_extn("starttls"), "STARTTLS offered after TLS")
        check_eq(s.sendmail("a@py.test", ["u@example.test"], b"Subject: t\r\n\r\nhi\r\n"), {},
                 "refused")
    with smtplib.SMTP_SSL("127.0.0.1", implicit_srv().port, local_hostname="py.test",
                          context=ctx(), timeout=TIMEOUT) as s:
        check_eq(s.sendmail("a@py.test", ["u@example.test"], b"Subject: t\r\n\r\nhi\r\n"), {},
                 "refused")


@T.test("swaks --tls and --tls-on-connect: exit 0, queued")
def _():
    if not os.access(SWAKS, os.X_OK):
        raise Skip("swaks is not installed")
    for port, opt in ((srv().port, "--tls"), (implicit_srv().port, "--tls-on-connect")):
        p = run([SWAKS, "--server", "127.0.0.1", "--port", str(port), opt, "--timeout", "10",
                 "--to", "x@example.test", "--from", "a@b.test", "--helo", "swaks.test"],
                timeout=30)
        check_eq(p.returncode, 0, "swaks %s: %s" % (opt, p.stdout[-1500:]))
        check("queued as" in p.stdout, p.stdout[-800:])


# ---------------------------------------------------------------- injection

def starttls_raw(c):
    """After EHLO on Client c, wrap its socket in TLS (no SNI)."""
    return ctx().wrap_socket(c.sock, server_hostname="localhost")


@T.test("injection: STARTTLS\\r\\nNOOP\\r\\n in one write -> only the 220; after TLS the "
        "first reply answers the first encrypted command")
def _():
    s = srv()
    with s.client() as c:
        c.ehlo()
        c.send("STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@attacker.test>\r\n")
        c.expect(220, "2.0.0", "Ready to start TLS")
        check(c.buf == b"", "more than the 220 before TLS: %r" % c.buf)
        t = starttls_raw(c)
        t.settimeout(TIMEOUT)
        t.sendall(b"EHLO tls.test\r\n")
        data = b""
        while b"250 CHUNKING\r\n" not in data:
            d = t.recv(4096)
            check(d, "closed after TLS; got %r" % data)
            data += d
        check(data.startswith(b"250-mx.ringmx.test\r\n"), "first reply after TLS: %r" % data[:80])
        check(b"250 2.0.0 Ok" not in data, "the injected NOOP was answered: %r" % data)
        t.sendall(b"QUIT\r\n")
        check(b"221" in t.recv(4096), "QUIT")
        t.close()
    ln = s.wait_disconnect(c.local_port)
    check("noop=" not in ln and "mail=" not in ln, "injected commands counted: " + ln)


@T.test("injection: MAIL FROM in plaintext after the 220 is never processed")
def _():
    s = srv()
    with s.client() as c:
        c.ehlo()
        c.cmd("STARTTLS").expect(220, "2.0.0")
        c.send("MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<u@example.test>\r\n")
        c.expect_closed()
    ln = s.wait_disconnect(c.local_port)
    check("mail=" not in ln and "rcpt=" not in ln, "injected MAIL processed: " + ln)
    s.wait_log(r"TLS handshake failed from \[127\.0\.0\.1\]:%d: " % c.local_port)
    # The plaintext left after the 220 reached the client, so it meets the server either
    # while the 220's send is still completing (discarded, starttls_injection_discarded)
    # or in the handshake (fed to TLS as a bad record). Which one is a race; the handshake
    # fails either way, and the counter is pinned deterministically in test_probes.py.
    st = s.stats()
    check(st.get("tls_handshake_failures", 0) >= 1, "counter: %r" % st)


# ---------------------------------------------------------------- SNI, policy

@T.test("SNI selects the certificate (s_client -servername), default otherwise")
def _():
    p = s_client(srv().port, "-servername", "mail.example.org", "-CAfile", SNI_CERT)
    check("subject=CN = mail.example.org" in p.stdout, p.stdout[:1500])
    p = s_client(srv().port, "-servername", "other.example.org")
    check("subject=CN = localhost" in p.stdout, p.stdout[:1500])


@T.test("tls=required: MAIL before STARTTLS gets 530 5.7.0")
def _():
    port = free_port()
    with Server(args=["-o", "tls_cert=" + CERT, "-o", "tls_key=" + KEY], listen=(), port=port,
                config_text="listen = 127.0.0.1:%d tls=required\n" % port) as s:
        with s.client() as c:
            c.ehlo()
            c.cmd("MAIL FROM:<a@b.test>").expect(530, "5.7.0",
                                                "Must issue a STARTTLS command first")
            c.quit()


@T.test("handshake_timeout: a silent client is cut off and counted")
def _():
    port = free_port()
    with Server(args=["-o", "tls_cert=" + CERT, "-o", "tls_key=" + KEY,
                      "-o", "handshake_timeout=1s"], listen=(), port=port,
                config_text="listen = 127.0.0.1:%d tls=implicit\n" % port) as s:
        c = Client(port, greet=False)
        c.expect_closed(timeout=5)
        s.wait_log(r"TLS handshake failed from \[127\.0\.0\.1\]:%d: timeout" % c.local_port)
        check(s.stats().get("tls_handshake_timeouts") == 1, "tls_handshake_timeouts")
        c.close()


# ---------------------------------------------------------------- reload

def subject(port):
    p = s_client(port, starttls=False, stdin="QUIT\r\n")
    m = re.search(r"subject=CN = ([^\s,]+)", p.stdout)
    return m.group(1) if m else p.stdout[-500:]


@T.test("SIGHUP reload: an open TLS session keeps working, new sessions get the new cert; "
        "a broken cert is refused and the old one stays")
def _():
    cert, key = os.path.join(D, "live.pem"), os.path.join(D, "live-key.pem")
    for a, b in ((CERT, cert), (KEY, key)):
        with open(a, "rb") as f, open(b, "wb") as g:
            g.write(f.read())
    port = free_port()
    with Server(args=["-o", "tls_cert=" + cert, "-o", "tls_key=" + key], listen=(), port=port,
                workers=1, config_text="listen = 127.0.0.1:%d tls=implicit\n" % port) as s:
        check_eq(subject(port), "localhost", "subject before")
        old = ctx().wrap_socket(socket.create_connection(("127.0.0.1", port), TIMEOUT),
                                server_hostname="localhost")
        check(old.recv(4096).startswith(b"220 "), "greeting")
        new_cert, new_key = make_cert("renewed", "renewed.example")
        for a, b in ((new_cert, cert), (new_key, key)):
            with open(a, "rb") as f, open(b + ".tmp", "wb") as g:
                g.write(f.read())
            os.rename(b + ".tmp", b)
        off = s.log_size()
        s.signal(signal.SIGHUP)
        s.wait_log(r"configuration reloaded", since=off)
        old.sendall(b"NOOP\r\n")
        check(old.recv(4096).startswith(b"250 2.0.0 Ok"), "old session after reload")
        check_eq(subject(port), "renewed.example", "subject after reload")
        old.sendall(b"QUIT\r\n")
        check(old.recv(4096).startswith(b"221"), "old session QUIT")
        old.close()
        # A broken certificate: refused, the renewed one stays.
        with open(cert, "w") as f:
            f.write("garbage\n")
        off = s.log_size()
        s.signal(signal.SIGHUP)
        s.wait_log(r"reload refused, keeping the running configuration and certificates: "
                   r"tls_cert: .*live\.pem: not a PEM certificate", since=off)
        check_eq(subject(port), "renewed.example", "subject after a refused reload")
        check(s.stats().get("tls_ctx_reloads") == 1, "tls_ctx_reloads")


# ---------------------------------------------------------------- start-up checks

def start_fails(cert, key):
    r = run([ringmxd_path(), "-o", "tls_cert=" + cert, "-o", "tls_key=" + key, "-t"])
    check(r.returncode == 1, "ringmxd -t accepted %s: %s" % (cert, r.stdout + r.stderr))
    return r.stderr.strip().splitlines()[-1]  # after any expiry warning


@T.test("start-up refusals: expired, not yet valid, key mismatch, not PEM, missing file")
def _():
    exp_c, exp_k = make_cert("expired", "localhost", "20200101000000Z", "20200201000000Z")
    check_eq(start_fails(exp_c, exp_k), "ringmxd: tls_cert: %s: certificate expired on "
             "2020-02-01 00:00:00 UTC" % exp_c, "expired")
    fut_c, fut_k = make_cert("future", "localhost", "20990101000000Z", "20990201000000Z")
    check_eq(start_fails(fut_c, fut_k), "ringmxd: tls_cert: %s: certificate not valid before "
             "2099-01-01 00:00:00 UTC" % fut_c, "not yet valid")
    check_eq(start_fails(CERT, SNI_KEY), "ringmxd: tls_key: %s: private key does not match "
             "the certificate in %s" % (SNI_KEY, CERT), "mismatch")
    junk = os.path.join(D, "junk.pem")
    with open(junk, "w") as f:
        f.write("not a certificate\n")
    check_eq(start_fails(junk, KEY), "ringmxd: tls_cert: %s: not a PEM certificate (no "
             "'-----BEGIN CERTIFICATE-----')" % junk, "not PEM")
    check_eq(start_fails(D + "/nope.pem", KEY), "ringmxd: tls_cert: %s/nope.pem: No such file "
             "or directory" % D, "missing")
    soon_c, soon_k = make_cert("soon", "localhost", "20200101000000Z", "20991231000000Z")
    r = run([ringmxd_path(), "-o", "tls_cert=" + soon_c, "-o", "tls_key=" + soon_k, "-t"])
    check_eq(r.returncode, 0, "a valid certificate: " + r.stderr)


@T.test("start-up refusal: unreadable key names the permission problem (non-root only)")
def _():
    if os.geteuid() == 0:
        raise Skip("root reads every file")
    key = os.path.join(D, "locked-key.pem")
    with open(KEY, "rb") as f, open(key, "wb") as g:
        g.write(f.read())
    os.chmod(key, 0)
    msg = start_fails(CERT, key)
    check(re.search(r"tls_key: .*locked-key\.pem: Permission denied \(mode 0000, owner \w+",
                    msg), msg)


# ---------------------------------------------------------------- Received:

@T.test("Received: says ESMTPS with version and cipher (spool)")
def _():
    spool = os.path.join(D, "spool")
    tool = os.environ.get("RINGMX_SPOOL") or os.path.join(
        os.path.dirname(ringmxd_path()), "tools", "ringmx-spool")
    with Server(args=["-o", "tls_cert=" + CERT, "-o", "tls_key=" + KEY, "-o", "sink=spool",
                      "-o", "spool_dir=" + spool]) as s:
        with smtplib.SMTP("127.0.0.1", s.port, local_hostname="py.test", timeout=TIMEOUT) as m:
            m.starttls(context=ctx(minimum_version=ssl.TLSVersion.TLSv1_3))
            m.ehlo()
            m.mail("a@py.test")
            m.rcpt("u@example.test")
            code, resp = m.data(b"Subject: tls\r\n\r\nbody\r\n")
            check_eq(code, 250, "end of data")
        qid = re.search(rb"queued as ([0-9A-Za-z]{13})", resp).group(1).decode()
        out = subprocess.run([tool, "-d", spool, "cat", qid], capture_output=True,
                             timeout=TIMEOUT)
        check_eq(out.returncode, 0, "ringmx-spool cat: %r" % out.stderr)
        hdr = out.stdout.split(b"\r\n\r\n", 1)[0].decode()
        suite = "TLS_AES_256_GCM_SHA384" if AES_FIRST else "TLS_CHACHA20_POLY1305_SHA256"
        check(re.search(r"\(using TLSv1\.3 with cipher " + suite + r"\)\r\n\tby "
                        r"mx\.ringmx\.test \(ringmx\) with ESMTPS id " + qid, hdr), hdr)


def _stop_implicit():
    s = _implicit.get("srv")
    if s is not None:
        s.stop()
        s.tmpdir.cleanup()


@T.test("implicit TLS behind a PROXY v1 header: header first in plaintext, then the handshake")
def _():
    port = free_port()
    with Server(args=["-o", "tls_cert=" + CERT, "-o", "tls_key=" + KEY], listen=(),
                config_text="listen = 127.0.0.1:%d tls=implicit proxy=yes\n" % port,
                port=port) as s:
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        raw.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 465\r\n")
        tls = ctx().wrap_socket(raw, server_hostname="localhost")
        f = tls.makefile("rb")
        check(f.readline().startswith(b"220 "), "greeting over TLS after the header")
        tls.sendall(b"EHLO c.test\r\n")
        lines = []
        while True:
            line = f.readline()
            lines.append(line)
            if line[3:4] != b"-":
                break
        check(lines[-1].startswith(b"250 ") and not any(b"STARTTLS" in l for l in lines),
              "EHLO over implicit TLS, no STARTTLS: %r" % lines)
        tls.sendall(b"QUIT\r\n")
        check(f.readline().startswith(b"221 "), "QUIT")
        tls.close()
        s.wait_log(r"disconnect from \[198\.51\.100\.7\]:4711 .*tls=TLSv1\.[23]")


T.test("implicit server: SIGTERM, exit 0, clean log")(_stop_implicit)
T.main(requires=[OPENSSL])
