#!/usr/bin/env python3
"""test_reverse_proxies - real reverse proxies in front of a `proxy=yes`
listener (docs/proxy.md, "Recipes"), each sending a PROXY v1 header:

  - nginx `stream` with `proxy_protocol on;` (Debian: nginx +
    libnginx-mod-stream): plaintext SMTP through it, and nginx terminating
    TLS (`listen ... ssl;`) in front of the plaintext proxy=yes listener;
  - stunnel (Debian: stunnel4) in server mode with `protocol = proxy`,
    terminating TLS.

smtplib sends one message through each; the ringmxd message log line must
name the smtplib client's own source port (client=[127.0.0.1]:PORT), not
the proxy's. HAProxy is tested by test_proxy_haproxy.py.

Each proxy runs in the foreground on free loopback ports, with its config
in a temporary directory, and is stopped in a finally. A missing binary
skips that proxy's checks with a message (tools/lib.sh PKGS_TEST installs
them). The configs here are the ones docs/proxy.md shows: keep them equal.

Owner: the PROXY protocol module. Standalone: exit 0 / 1 / 77, last line
"N passed, M failed". Uses ringmx_harness (read-only)."""

import os
import shutil
import smtplib
import ssl
import subprocess
import tempfile
from email.message import EmailMessage

from ringmx_harness import (TIMEOUT, Skip, Suite, check, check_eq, fail, free_port,
                            self_signed_cert, stop_process, wait_for)

T = Suite(__file__)

NGINX_STREAM_SO = "/usr/lib/nginx/modules/ngx_stream_module.so"

PORT = free_port()
srv = T.shared(listen=(), port=PORT,
               args=["--listen", "127.0.0.1:%d proxy=yes" % PORT])

TMP = tempfile.TemporaryDirectory(prefix="ringmx-rproxy-")


def cert():
    """A self-signed ECDSA P-256 cert/key for localhost."""
    return self_signed_cert(TMP.name)


def tls_ctx():
    return ssl.create_default_context(cafile=cert()[0])


def listening(port):
    """True once something LISTENs on 127.0.0.1:port (from /proc/net/tcp,
    so that waiting does not open a connection through the proxy)."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                return True
    return False


class Proxy:
    """A proxy process in the foreground with its own temp dir; waits for
    every port in ports to listen, stops it (SIGTERM, then SIGKILL) on exit."""

    name = "proxy"

    def __init__(self, ports):
        self.ports = ports
        self.dir = tempfile.TemporaryDirectory(prefix="ringmx-%s-" % self.name)
        self.out = os.path.join(self.dir.name, "output.log")
        self.proc = None

    def command(self):
        raise NotImplementedError

    def logs(self):
        text = ""
        for fn in sorted(os.listdir(self.dir.name)):
            if fn.endswith(".log"):
                with open(os.path.join(self.dir.name, fn), "rb") as f:
                    text += "--- %s\n%s" % (fn, f.read().decode("utf-8", "replace")[-2000:])
        return text

    def __enter__(self):
        cmd = self.command()
        try:
            with open(self.out, "wb") as lf:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf,
                                             stderr=lf, cwd=self.dir.name)

            def up():
                if self.proc.poll() is not None:
                    fail("%s exited with %d: %s\n%s" % (self.name, self.proc.returncode,
                                                      " ".join(cmd), self.logs()))
                return all(listening(p) for p in self.ports)
            wait_for(up, what="%s listening on %r" % (self.name, self.ports))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            stop_process(self.proc)
        finally:
            self.dir.cleanup()
        return False


# ---------------------------------------------------------------- nginx

def nginx_bin():
    p = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(p, os.X_OK):
        raise Skip("nginx is not installed (apt-get install nginx libnginx-mod-stream)")
    if not os.path.isfile(NGINX_STREAM_SO):
        raise Skip("nginx's stream module %s is missing (apt-get install "
                   "libnginx-mod-stream)" % NGINX_STREAM_SO)
    return p


class Nginx(Proxy):
    """nginx -c CONF -p DIR -g 'daemon off;': one stream server block per
    (front port, tls) pair, all with proxy_pass to ringmxd and proxy_protocol."""

    name = "nginx"

    def __init__(self, backend, fronts):
        super().__init__([p for p, _tls in fronts])
        d = self.dir.name
        self.conf = os.path.join(d, "nginx.conf")
        servers = ""
        for port, tls in fronts:
            if tls:
                c, k = cert()
                servers += ("    server {\n"
                            "        listen 127.0.0.1:%d ssl;\n"
                            "        ssl_certificate %s;\n"
                            "        ssl_certificate_key %s;\n"
                            "        proxy_pass 127.0.0.1:%d;\n"
                            "        proxy_protocol on;\n"
                            "    }\n" % (port, c, k, backend))
            else:
                servers += ("    server {\n"
                            "        listen 127.0.0.1:%d;\n"
                            "        proxy_pass 127.0.0.1:%d;\n"
                            "        proxy_protocol on;\n"
                            "    }\n" % (port, backend))
        with open(self.conf, "w") as f:
            f.write("load_module %s;\n"
                    "worker_processes 1;\n"
                    "pid %s/nginx.pid;\n"
                    "error_log %s/error.log info;\n"
                    "events {\n    worker_connections 64;\n}\n"
                    "stream {\n%s}\n"
                    % (NGINX_STREAM_SO, d, d, servers))

    def command(self):
        # -e: the start-up error log, before error_log is read (else
        # /var/log/nginx/error.log).
        return [nginx_bin(), "-c", self.conf, "-p", self.dir.name + "/",
                "-e", os.path.join(self.dir.name, "error.log"), "-g", "daemon off;"]


# ---------------------------------------------------------------- stunnel

def stunnel_bin():
    for name in ("stunnel4", "stunnel"):
        p = shutil.which(name)
        if p:
            return p
    raise Skip("stunnel is not installed (apt-get install stunnel4)")


class Stunnel(Proxy):
    """stunnel in server mode: TLS on front, PROXY v1 + plaintext to ringmxd."""

    name = "stunnel"

    def __init__(self, backend, front):
        super().__init__([front])
        c, k = cert()
        self.conf = os.path.join(self.dir.name, "stunnel.conf")
        with open(self.conf, "w") as f:
            f.write("foreground = yes\n"
                    "pid =\n"
                    "syslog = no\n"
                    "output = %s/stunnel.log\n"
                    "\n"
                    "[smtps]\n"
                    "accept = 127.0.0.1:%d\n"
                    "connect = 127.0.0.1:%d\n"
                    "cert = %s\n"
                    "key = %s\n"
                    "protocol = proxy\n"
                    % (self.dir.name, front, backend, c, k))

    def command(self):
        return [stunnel_bin(), self.conf]


# ---------------------------------------------------------------- checks

def message(subject):
    m = EmailMessage()
    m["From"] = "alice@sender.test"
    m["To"] = "u@example.test"
    m["Subject"] = subject
    m.set_content("hello\n")
    return m


def send_through(front, tls, subject):
    """One message with smtplib (SMTP or SMTP_SSL) to front; returns the
    client's own source port and the TLS version it negotiated (or None)."""
    cls = smtplib.SMTP_SSL if tls else smtplib.SMTP
    kw = {"context": tls_ctx()} if tls else {}
    with cls("127.0.0.1", front, local_hostname="smtplib.test", timeout=TIMEOUT,
             source_address=("127.0.0.1", 0), **kw) as c:
        cport = c.sock.getsockname()[1]
        version = c.sock.version() if tls else None
        check_eq(c.send_message(message(subject)), {}, "refused recipients")
        check_eq(c.quit()[0], 221, "QUIT")
    return cport, version


def check_logged(s, proxy, cport):
    """ringmxd logged the message and the disconnect under the smtplib
    client's port; the session itself was plaintext (the proxy did TLS)."""
    try:
        ln = s.wait_disconnect(cport)
    except AssertionError as e:
        fail("%s\n%s log:\n%s" % (e, proxy.name, proxy.logs()))
    check("tls=" not in ln, "the proxy->ringmxd leg should be plaintext: " + ln)
    lines = s.message_lines(cport, status="queued")
    check(len(lines) == 1 and "client=[127.0.0.1]:%d" % cport in lines[0],
          "no client=[127.0.0.1]:%d message line; log tail:\n%s" % (cport, s.log()[-2000:]))


_ran = []


def v1_headers(s):
    _ran.append(True)
    return s.stats().get("proxy_headers_v1", 0)


@T.test("nginx stream proxy_protocol on: plaintext smtplib, client's real port logged")
def _():
    nginx_bin()
    s = srv()
    before = v1_headers(s)
    front = free_port()
    with Nginx(s.port, [(front, False)]) as ng:
        cport, _v = send_through(front, False, "through nginx")
        check_logged(s, ng, cport)
    check_eq(v1_headers(s) - before, 1, "proxy_headers_v1 added")


@T.test("nginx stream listen ssl + proxy_protocol on: smtplib.SMTP_SSL, client's real "
        "port logged")
def _():
    nginx_bin()
    cert()
    s = srv()
    before = v1_headers(s)
    front = free_port()
    with Nginx(s.port, [(front, True)]) as ng:
        cport, version = send_through(front, True, "through nginx ssl")
        check(version in ("TLSv1.2", "TLSv1.3"), "client TLS version: %r" % version)
        check_logged(s, ng, cport)
    check_eq(v1_headers(s) - before, 1, "proxy_headers_v1 added")


@T.test("stunnel protocol = proxy: smtplib.SMTP_SSL, client's real port logged")
def _():
    stunnel_bin()
    cert()
    s = srv()
    before = v1_headers(s)
    front = free_port()
    with Stunnel(s.port, front) as st:
        cport, version = send_through(front, True, "through stunnel")
        check(version in ("TLSv1.2", "TLSv1.3"), "client TLS version: %r" % version)
        check_logged(s, st, cport)
    check_eq(v1_headers(s) - before, 1, "proxy_headers_v1 added")


@T.test("no malformed or untrusted PROXY headers from the proxies")
def _():
    if not _ran:
        raise Skip("no proxy was tested")
    st = srv().stats()
    check_eq((st.get("proxy_bad", 0), st.get("proxy_untrusted", 0),
              st.get("proxy_headers_v2", 0)), (0, 0, 0), "proxy_bad, proxy_untrusted, v2")


T.main()
