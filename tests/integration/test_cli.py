#!/usr/bin/env python3
"""ringmxd command line: --version, --help, unknown options, -t/--check-config
(valid and broken files with FILE:LINE), --print-config and precedence,
--listen (repeatable, IPv6), --port, --workers, bind failure, a second
instance on the same port, io_uring blocked by seccomp."""

import os
import re
import socket
import subprocess
import tempfile

from ringmx_harness import (HOSTNAME, Server, Skip, Suite, check, check_eq, free_port,
                            ipv6_available, ringmxd_path, run, scan_bad, smtplib_send)

T = Suite(__file__)
TMP = tempfile.TemporaryDirectory(prefix="ringmx-cli-")


def rx(*args, **kw):
    p = run([ringmxd_path()] + list(args), **kw)
    bad = scan_bad(p.stderr)
    check(bad is None, "sanitizer report: %s" % bad)
    return p


def conf(text, name="t.conf"):
    path = os.path.join(TMP.name, name)
    with open(path, "w") as f:
        f.write(text)
    return path


@T.test("-V and --version: 'ringmxd 0.1.0' first, then liburing, wolfSSL, c-ares, the build "
        "and the default TLS suite order")
def _():
    def pkgver(name):
        r = subprocess.run(["pkg-config", "--modversion", name], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    for opt in ("-V", "--version"):
        p = rx(opt)
        check_eq(p.returncode, 0, opt + " exit code")
        lines = p.stdout.splitlines()
        check_eq(lines[0], "ringmxd 0.1.0", opt + " first line")
        check(len(lines) == 6, "%s: %r" % (opt, lines))
        for i, (lib, pc) in enumerate((("liburing", "liburing"), ("wolfSSL", "wolfssl"),
                                       ("c-ares", "libcares")), 1):
            want = pkgver(pc)
            check(lines[i].startswith(lib + " ") and (want is None or want in lines[i]),
                  "%s: %r (pkg-config says %s)" % (opt, lines[i], want))
        check(lines[4].startswith("build: buildtype="), "%s: %r" % (opt, lines[4]))
        # Debian's wolfSSL is built without AES assembly (no WOLFSSL_AESNI in its options.h).
        with open("/usr/include/wolfssl/options.h") as f:
            aesni = re.search(r"^#define\s+WOLFSSL_AESNI\b", f.read(), re.M) is not None
        if not aesni:
            check_eq(lines[5], "tls: default suites ChaCha20-Poly1305 first (this wolfSSL has no "
                     "AES assembly)", opt + " TLS line")
        else:
            check(re.match(r"tls: default suites (AES-GCM|ChaCha20-Poly1305) first \(", lines[5]),
                  "%s: %r" % (opt, lines[5]))


@T.test("-h and --help: usage on stdout, exit 0")
def _():
    for opt in ("-h", "--help"):
        p = rx(opt)
        check_eq(p.returncode, 0, opt + " exit code")
        check(p.stdout.startswith("Usage: ringmxd"), opt + ": " + p.stdout[:200])
        for o in ("--config", "--check-config", "--print-config", "--listen", "--port",
                  "--workers", "--cpus", "-o KEY=VALUE", "--version"):
            check(o in p.stdout, "%s: usage lacks %s" % (opt, o))


@T.test("unknown option: exit 2 with a message naming it")
def _():
    p = rx("--bogus")
    check_eq(p.returncode, 2, "--bogus exit code")
    check("--bogus" in p.stderr, p.stderr)
    p = rx("-Z")
    check_eq(p.returncode, 2, "-Z exit code")
    check("-Z" in p.stderr, p.stderr)
    p = rx("--port")
    check_eq(p.returncode, 2, "--port without argument")


@T.test("-t on a valid file: 'ringmxd: configuration FILE is valid', exit 0")
def _():
    path = conf("# comment\nhostname = mx.example.test\ndomains = example.test, .example.test\n"
                "message_size_limit = 20000\nbare_newline = reject\ngreeting_timeout = 2s\n"
                "command_timeout = 5m\nlisten = 127.0.0.1:2525\n")
    for opt in ("-t", "--check-config"):
        p = rx(opt, "-c", path)
        check_eq((p.returncode, p.stdout.strip()),
                 (0, "ringmxd: configuration %s is valid" % path), opt)


BROKEN = [
    ("hostname = a.test\ndomains = a.test\nno_such_key = 1\n", 3, "no_such_key"),
    ("message_size_limit = lots\n", 1, "message_size_limit"),
    ("\n\nbare_newline = sometimes\n", 3, "bare_newline"),
    ("greeting_timeout = 5 fortnights\n", 1, "greeting_timeout"),
    ("workers = -1\n", 1, "workers"),
    ("max_connections = 0\n", 1, "max_connections"),
    ("listen = 127.0.0.1:99999\n", 1, "listen"),
    ("# ok\ndomains = bad..domain\n", 2, "domains"),
]

for text, line, key in BROKEN:
    def _mk(text=text, line=line, key=key):
        @T.test("-t on a broken file (%s, line %d): one line FILE:%d: %s: ..., exit 1"
                % (key, line, line, key))
        def _():
            path = conf(text, "broken.conf")
            p = rx("-t", "-c", path)
            check_eq(p.returncode, 1, "exit code (stdout %r)" % p.stdout)
            lines = p.stderr.strip().splitlines()
            check_eq(len(lines), 1, "stderr lines %r" % lines)
            want = "ringmxd: %s:%d: %s: " % (path, line, key)
            check(lines[0].startswith(want) and len(lines[0]) > len(want),
                  "stderr %r should start with %r" % (lines[0], want))
    _mk()


@T.test("-c missing file: exit 1 naming it")
def _():
    p = rx("-t", "-c", "/nonexistent/ringmxd.conf")
    check_eq(p.returncode, 1, "exit code")
    check("/nonexistent/ringmxd.conf" in p.stderr, p.stderr)


@T.test("-o with an unknown key or bad value: exit 1")
def _():
    p = rx("-t", "-o", "no_such_key=1")
    check_eq(p.returncode, 1, "unknown key exit code")
    check("no_such_key" in p.stderr, p.stderr)
    p = rx("-t", "-o", "recipient_limit=many")
    check_eq(p.returncode, 1, "bad value exit code")
    check("recipient_limit" in p.stderr, p.stderr)


@T.test("--print-config: defaults, precedence file < -o, output re-reads with -t")
def _():
    p = rx("--print-config", "-o", "hostname=h.test", "-o", "sink=discard")
    check_eq(p.returncode, 0, "exit code")
    out = p.stdout
    for want in ("message_size_limit = 10240000", "recipient_limit = 1000", "error_limit = 20",
                 "junk_limit = 100", "bare_newline = normalize", "sink = discard",
                 "hostname = h.test"):
        check(re.search(r"^%s$" % re.escape(want), out, re.M), "missing %r in:\n%s" % (want, out))
    check(re.search(r"^domains = localhost, example\.test$", out, re.M), "domains:\n" + out)
    path = conf("message_size_limit = 1000\nrecipient_limit = 7\n", "prec.conf")
    p = rx("--print-config", "-c", path, "-o", "message_size_limit=2000", "-o", "hostname=h.test")
    check(re.search(r"^message_size_limit = 2000$", p.stdout, re.M), p.stdout)
    check(re.search(r"^recipient_limit = 7$", p.stdout, re.M), p.stdout)
    again = conf(out, "printed.conf")
    p = rx("-t", "-c", again)
    check_eq((p.returncode, p.stdout.strip()), (0, "ringmxd: configuration %s is valid" % again),
             "printed config re-read: " + p.stderr)


@T.test("--port overrides the file's listen port; --workers 3 is logged")
def _():
    port = free_port()
    with Server(listen=(), workers=None, port=port,
                args=["--port", str(port), "--workers", "3"],
                config_text="listen = 127.0.0.1:1\n") as s:
        check("listening on 127.0.0.1:%d (3 workers" % port in s.log(), s.log())
        smtplib_send(s)


@T.test("--listen twice: both addresses serve; file listen ignored")
def _():
    with Server(listen=("127.0.0.1", "127.0.0.1"), workers=1,
                config_text="listen = 127.0.0.1:1\n") as s:
        smtplib_send(s, port=s.ports[0])
        smtplib_send(s, port=s.ports[1])
        check("127.0.0.1:1 " not in s.log() and "127.0.0.1:1," not in s.log(), s.log())


@T.test("--listen [::1]:PORT serves over IPv6")
def _():
    if not ipv6_available():
        raise Skip("::1 cannot be bound here")
    with Server(listen=("::1",), workers=1) as s:
        smtplib_send(s, host="::1")
        s.wait_log(r"client=\[[^\]]*::1\]:\d+, .*status=queued")


@T.test("--cpus 0 --workers 2: starts and serves")
def _():
    with Server(workers=2, args=["--cpus", "0"]) as s:
        smtplib_send(s)


@T.test("bind failure (port held without SO_REUSEPORT): exit 1 naming the listener")
def _():
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        hold.bind(("127.0.0.1", 0))
        hold.listen(1)
        port = hold.getsockname()[1]
        p = rx("--listen", "127.0.0.1:%d" % port, "--workers", "1", "-o", "hostname=" + HOSTNAME,
               timeout=15)
        check_eq(p.returncode, 1, "exit code (stderr %r)" % p.stderr)
        check("127.0.0.1:%d" % port in p.stderr, "message should name the listener: " + p.stderr)
        check("listening on" not in p.stderr, p.stderr)
    finally:
        hold.close()


@T.test("a second ringmxd on the same port refuses to start (no silent SO_REUSEPORT sharing)")
def _():
    with Server(workers=2) as s:
        p = rx("--listen", "127.0.0.1:%d" % s.port, "--workers", "1", "-o", "sink=discard",
               "-o", "hostname=" + HOSTNAME, timeout=15)
        check_eq(p.returncode, 1, "exit code (stderr %r)" % p.stderr)
        check("Address already in use" in p.stderr and "127.0.0.1:%d" % s.port in p.stderr,
              p.stderr)
        smtplib_send(s)  # the first one still has every connection


@T.test("io_uring blocked by seccomp (as in Docker's default profile): one clear fatal line, exit 1")
def _():
    deny = os.environ.get("RINGMX_DENY_IO_URING")
    if not deny or not os.access(deny, os.X_OK):
        raise Skip("RINGMX_DENY_IO_URING not set")
    p = subprocess.run([deny, ringmxd_path(), "--listen", "127.0.0.1:%d" % free_port(),
                        "-o", "sink=discard", "-o", "hostname=" + HOSTNAME],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
    if p.returncode == 77:
        raise Skip("seccomp not available here")
    check_eq(p.returncode, 1, "exit code (stderr %r)" % p.stderr)
    check("io_uring is not available (Operation not permitted)" in p.stderr, p.stderr)
    check("seccomp" in p.stderr and "kernel.io_uring_disabled" in p.stderr,
          "the message should name the causes and the fix: " + p.stderr)
    check("listening on" not in p.stderr, p.stderr)


T.main()
