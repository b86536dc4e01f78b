#!/usr/bin/env python3
"""test_milter_real - ringmxd filtering through the real milters Debian ships (issue 14):
rspamd's proxy worker in milter mode (GTUBE rejected with rspamd's own reply, a clean
message spooled with the headers rspamd adds, a client's forged X-Spam removed; rspamd then
OpenDKIM on a 300 KB message) and OpenDKIM signing (the spooled
DKIM-Signature verifies against the generated key, with opendkim's own verifier and with an
independent c=simple/simple one, and fails once one body or header byte changes; header
fields with odd whitespace keep their exact bytes), and OpenDKIM verifying as on an MX
(Authentication-Results dkim=pass, dkim=fail once a byte changes).

Each milter is a private instance the test starts on free loopback ports with its
configuration and state in a temporary directory; it is stopped (its whole process group)
and the directory removed before the script ends. rspamd runs with no Redis and with only
the milter_headers module, its DNS pointed at a closed loopback port, so nothing leaves
the machine. As root rspamd's workers run as its package's _rspamd user (-u/-g: rspamd
refuses root workers), opendkim as root (it allows that; no UserID). opendkim's files live
under the build directory: it refuses a configuration below the world-writable /tmp.

Standalone: exit 0 / 1 / 77 (both rspamd and opendkim/opendkim-tools missing; one missing
skips only its checks, each skip names the package), last line "N passed, M failed".
About 20 s (rspamd starts in 1-3 s with the short public-suffix list it is given).
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile

from ringmx_harness import (HOSTNAME, OPENSSL, Skip, Suite, check, check_eq, fail, free_port, ringmxd_path,
                            wait_for)
from test_milter import MServer, qid_of, session

T = Suite(__file__)

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
RSPAMD_START = 120.0    # rspamd compiles its maps at start: seconds, more on a loaded box


def need(binary, package):
    if shutil.which(binary) is None:
        raise Skip("%s is not installed (Debian: %s)" % (binary, package))
    return shutil.which(binary)


def safe_parent():
    """A directory no other user can write to, nor any directory above it: opendkim
    refuses a configuration file under /tmp ("/tmp can be read or written by other
    users"). The build directory (where ringmxd is), else the home directory."""
    for d in (os.path.dirname(ringmxd_path()), os.path.expanduser("~")):
        d = os.path.realpath(d)
        chain, p = [], d
        while True:
            chain.append(p)
            if p == "/":
                break
            p = os.path.dirname(p)
        if all(os.access(d, os.W_OK) and not (os.stat(c).st_mode & 0o022) for c in chain):
            return d
    fail("no directory without group/other write access for opendkim's files "
         "(tried the build directory and ~)")


class Daemon:
    """A foreground milter daemon in its own process group and temporary directory."""

    name = "daemon"

    def __init__(self, parent=None):
        self.dir = tempfile.mkdtemp(prefix="ringmx-%s-" % self.name, dir=parent)
        self.port = free_port()
        self.proc = None

    def launch(self, cmd, timeout):
        self.errf = open(os.path.join(self.dir, "stderr"), "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.errf,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                fail("%s exited (%s): %s" % (self.name, self.proc.returncode, self.log()[-3000:]))
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        try:
            wait_for(up, timeout=timeout, what="%s on port %d" % (self.name, self.port))
        except BaseException:
            self.stop()
            raise

    @property
    def spec(self):
        return "inet:127.0.0.1:%d" % self.port

    def log(self):
        out = ""
        for f in ("stderr", "daemon.log"):
            try:
                with open(os.path.join(self.dir, f), errors="replace") as fh:
                    out += fh.read()
            except FileNotFoundError:
                pass
        return out

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            # the workers of a process that died on its own
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.errf.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# The whole rspamd configuration: no Debian defaults (they bring modules that query the
# public DNS, fuzzy servers and remote maps), one proxy worker in milter mode that scans
# itself (self_scan is an option of its upstream: without an upstream rspamd 3.4's proxy
# aborts on the first message, "cannot find upstream for default"), and milter_headers.
# GTUBE is rspamd's own core check: no module needed.
RSPAMD_CONF = """\
options {
    pidfile = "%(dir)s/rspamd.pid";
    tempdir = "%(dir)s";
    filters = "";
    disable_hyperscan = true;
    hs_cache_dir = "%(dir)s";   # not /var/lib/rspamd
    url_tld = "%(dir)s/tld.dat";
    # nothing listens there: no query leaves the machine (/etc/resolv.conf is not read)
    dns { nameserver = ["127.0.0.1:%(dns)d"]; timeout = 1s; retransmits = 1; }
}
logging { type = "file"; filename = "%(dir)s/daemon.log"; level = "info"; }
actions { reject = 15; add_header = 6; greylist = 4; }
milter_headers {
    use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id"];
    skip_local = false;     # the test's client is 127.0.0.1, skipped by default
}
modules { path = "${PLUGINSDIR}"; }
worker "rspamd_proxy" {
    bind_socket = "127.0.0.1:%(port)d";
    milter = yes;
    upstream "local" { default = yes; self_scan = yes; }
    timeout = 30s;
    count = 1;
}
"""


class Rspamd(Daemon):
    name = "rspamd"

    def __init__(self):
        binary = need("rspamd", "rspamd")
        super().__init__()
        conf = os.path.join(self.dir, "rspamd.conf")
        with open(conf, "w") as f:
            f.write(RSPAMD_CONF % {"dir": self.dir, "port": self.port, "dns": free_port()})
        # a short public-suffix list: the full one takes rspamd ~20 s to compile
        with open(os.path.join(self.dir, "tld.dat"), "w") as f:
            f.write("test\ncom\norg\nnet\n")
        cmd = [binary, "-f", "-c", conf, "--var", "DBDIR=" + self.dir,
               "--var", "RUNDIR=" + self.dir, "--var", "LOCAL_CONFDIR=" + self.dir,
               "--var", "LOGDIR=" + self.dir]
        if os.geteuid() == 0:
            # rspamd refuses to run its workers as root; the package's user
            try:
                pw = pwd.getpwnam("_rspamd")
            except KeyError:
                raise Skip("no _rspamd user (Debian: rspamd)")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            for f in os.listdir(self.dir):
                os.chown(os.path.join(self.dir, f), pw.pw_uid, pw.pw_gid)
            cmd += ["-u", "_rspamd", "-g", "_rspamd"]
        self.launch(cmd, RSPAMD_START)


CLEAN = ("From: Alice <alice@example.test>\r\nTo: u@example.test\r\n"
         "Subject: quarterly figures\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
         "Message-ID: <clean.1@example.test>\r\n\r\n"
         "Hello,\r\n\r\nthe figures are attached in the usual place.\r\n.\r\nRegards\r\n")


def spam_msg():
    return CLEAN.replace("Subject: quarterly figures", "Subject: gtube").replace(
        "the figures are attached in the usual place.", GTUBE)


def headers_of(raw):
    """[(name, value)] of the header section of a spooled message (CRLF, folded)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    out = []
    for ln in head.split("\r\n"):
        if ln[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + "\r\n" + ln)
        else:
            name, _, value = ln.partition(":")
            out.append((name, value.lstrip(" ")))
    return out


def through(srv, body):
    """One message through srv, acknowledged: (the end of data reply, what was spooled)."""
    _mail, _rr, end = session(srv, body=body, sender="alice@example.test")
    end.expect(250)
    return end, srv.cat(qid_of(end))


RS = {}


def rspamd():
    """The one rspamd of the script, started on first use; a failed start is not retried."""
    if "err" in RS:
        raise RS["err"]
    if "srv" not in RS:
        try:
            RS["srv"] = Rspamd()
        except BaseException as e:
            RS["err"] = e
            raise
    return RS["srv"]


@T.test("rspamd (milter mode): GTUBE is rejected at end of data with rspamd's reply, not spooled")
def _():
    rs = rspamd()
    with MServer([rs.spec]) as srv:
        _mail, rr, end = session(srv, body=spam_msg(), sender="alice@example.test")
        check(end is not None, "no end of data reply (RCPT: %r)" % rr)
        # rspamd answers GTUBE with SMFIR_REPLYCODE "554 5.7.1 Gtube pattern" (its task
        # message for the GTUBE pre-result); ringmxd's own texts would be
        # milter_default_action's "451 4.7.1 Service unavailable..." or "550 5.7.1 Command
        # rejected" (engine/milter/milter_io.c)
        check_eq(end.lines, ["554 5.7.1 Gtube pattern"], "end of data reply")
        check_eq(srv.spooled(), [], "spooled")
        check(re.search(r"GTUBE|gtube|Gtube", rs.log()) is not None,
              "rspamd logged no GTUBE:\n%s" % rs.log()[-2000:])


@T.test("rspamd (milter mode): a clean message is spooled with rspamd's headers, body intact")
def _():
    rs = rspamd()
    with MServer([rs.spec]) as srv:
        end, out = through(srv, CLEAN)
        hdrs = headers_of(out)
        names = [n for n, _v in hdrs]
        for want in ("X-Spamd-Result", "X-Rspamd-Server", "X-Rspamd-Queue-Id"):
            check_eq(names.count(want), 1, "%s in %r" % (want, names))
        result = dict(hdrs)["X-Spamd-Result"]
        check(re.match(r"default: False \[-?\d+\.\d+ / 15\.00\]", result) is not None,
              "X-Spamd-Result: %r" % result)
        # rspamd's queue id is the one ringmxd gave it in the "i" macro
        check_eq(dict(hdrs)["X-Rspamd-Queue-Id"], qid_of(end), "X-Rspamd-Queue-Id")
        check_eq(names[:6], ["Received", "From", "To", "Subject", "Date", "Message-ID"],
                 "the message's own fields, in order, before rspamd's")
        check(out.endswith(CLEAN.split("\r\n\r\n", 1)[1].encode()), "body changed: %r" %
              out[-120:])
        for n, v in hdrs:
            check("\n" not in v.replace("\r\n", "") and not v.endswith("\r"),
                  "bare LF or CR in header %s: %r" % (n, v))


@T.test("rspamd (milter mode): a client's forged X-Spam and X-Spamd-Result are removed "
        "(rspamd's SMFIR_CHGHEADER with an empty value), rspamd's own added")
def _():
    rs = rspamd()
    forged = CLEAN.replace("Subject: quarterly figures\r\n", "Subject: quarterly figures\r\n"
                           "X-Spam: Yes\r\nX-Spamd-Result: default: True [99.00 / 15.00]\r\n")
    with MServer([rs.spec]) as srv:
        _end, out = through(srv, forged)
        hdrs = headers_of(out)
        names = [n for n, _v in hdrs]
        check("X-Spam" not in names, "forged X-Spam kept: %r" % names)
        check_eq(names.count("X-Spamd-Result"), 1, "X-Spamd-Result fields in %r" % names)
        check(dict(hdrs)["X-Spamd-Result"].startswith("default: False"),
              "the forged X-Spamd-Result kept: %r" % dict(hdrs)["X-Spamd-Result"])
        check(out.endswith(CLEAN.split("\r\n\r\n", 1)[1].encode()), "body changed")


@T.test("rspamd then OpenDKIM on one 300 KB message (body in 64 KiB chunks): both applied, "
        "the signature verifies")
def _():
    rs = rspamd()
    big = CLEAN.replace("the figures are attached in the usual place.\r\n", "".join(
        "line %06d of the figures, attached in the usual place.\r\n" % i for i in range(6000)))
    check(len(big) > 300000, "body too short: %d" % len(big))
    with OpenDKIM() as dk, MServer([rs.spec, dk.spec]) as srv:
        _end, out = through(srv, big)
        check(out.endswith(big.split("\r\n\r\n", 1)[1].encode()), "body changed")
        names = [n for n, _v in headers_of(out)]
        check(names[0] == "DKIM-Signature" and "X-Spamd-Result" in names,
              "fields: %r" % names)
        ok, text = dkim_verify_simple(out, dk.pub_key, dk.dir)
        check(ok, "independent verifier: %s" % text)
        ok, text = dk.verify(out)
        check(ok, "opendkim's verifier:\n%s" % text[-2000:])
        bad = out.replace(b"line 004321 of", b"line 004321 0f")
        check(bad != out and not dkim_verify_simple(bad, dk.pub_key, dk.dir)[0],
              "independent verifier passed an altered body")


@T.test("rspamd stops on SIGTERM with its workers; nothing of it is left running")
def _():
    rs = rspamd()
    RS.pop("srv")
    try:
        rs.proc.send_signal(signal.SIGTERM)     # the main process only: it stops the workers
        rs.proc.wait(15)
        check_eq(rs.proc.returncode, 0, "rspamd exit status")

        def group_gone():
            try:
                os.killpg(rs.proc.pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_for(group_gone, what="rspamd's workers (process group %d) to exit" % rs.proc.pid)
    finally:
        rs.stop()


# ------------------------------------------------------------------- OpenDKIM

DOMAIN = "example.test"
SELECTOR = "ringmx"


class OpenDKIM(Daemon):
    """opendkim signing for DOMAIN with a key it generates (Mode s), or, given the public
    key record of one (verify_pub), verifying with that key and no DNS (Mode v)."""

    name = "opendkim"

    def __init__(self, verify_pub=None):
        if verify_pub is not None:
            self.binary = need("opendkim", "opendkim")
            super().__init__(parent=safe_parent())
            keys = os.path.join(self.dir, "keys")
            with open(keys, "w") as f:
                f.write("%s._domainkey.%s %s\n" % (SELECTOR, DOMAIN, verify_pub))
            conf = os.path.join(self.dir, "opendkim.conf")
            with open(conf, "w") as f:
                f.write("Mode v\nTestPublicKeys %s\nSocket inet:%d@127.0.0.1\nBackground no\n"
                        "PidFile %s/opendkim.pid\nSyslog no\n" % (keys, self.port, self.dir))
            self.launch([self.binary, "-f", "-x", conf], 30)
            return
        self.binary = binary = need("opendkim", "opendkim")
        genkey = need("opendkim-genkey", "opendkim-tools")
        super().__init__(parent=safe_parent())
        r = subprocess.run([genkey, "-D", self.dir, "-d", DOMAIN, "-s", SELECTOR, "-b", "2048"],
                           capture_output=True, timeout=60)
        check_eq(r.returncode, 0, "opendkim-genkey: %r" % r.stderr)
        self.key = os.path.join(self.dir, SELECTOR + ".private")
        txt = open(os.path.join(self.dir, SELECTOR + ".txt")).read()
        self.pub = "".join(re.findall(r'"([^"]*)"', txt))
        check("p=" in self.pub, "public key record: %r" % txt)
        self.pub_key = self.pub.split("p=", 1)[1].strip().rstrip(";")
        conf = os.path.join(self.dir, "opendkim.conf")
        with open(conf, "w") as f:
            f.write("Mode s\nDomain %s\nSelector %s\nKeyFile %s\n"
                    "Socket inet:%d@127.0.0.1\nBackground no\nPidFile %s/opendkim.pid\n"
                    "Canonicalization simple/simple\nSyslog no\nLogWhy yes\n"
                    "InternalHosts 127.0.0.1\n"
                    % (DOMAIN, SELECTOR, self.key, self.port, self.dir))
        self.launch([binary, "-f", "-x", conf], 30)

    def verify(self, raw):
        """opendkim's own verifier (test mode, -t) against the generated public key:
        (True/False, its Authentication-Results text)."""
        d = tempfile.mkdtemp(prefix="ringmx-dkimv-", dir=self.dir)
        with open(os.path.join(d, "keys"), "w") as f:
            f.write("%s._domainkey.%s %s\n" % (SELECTOR, DOMAIN, self.pub))
        with open(os.path.join(d, "v.conf"), "w") as f:
            f.write("Mode v\nTestPublicKeys %s/keys\nSyslog no\n" % d)
        msg = os.path.join(d, "msg.eml")
        with open(msg, "wb") as f:
            f.write(raw)
        r = subprocess.run([self.binary, "-x", os.path.join(d, "v.conf"), "-vv", "-t", msg],
                           capture_output=True, timeout=30)
        text = (r.stdout + r.stderr).decode(errors="replace")
        shutil.rmtree(d, ignore_errors=True)
        ok = re.search(r"dkim=pass", text) is not None and "verification" in text and \
            re.search(r"verification \(.*\) succeeded", text) is not None
        return ok, text


def header_fields(raw):
    """The header fields of raw, each exactly as it stands (folded lines and CRLFs)."""
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    fields = []
    for ln in head.split(b"\r\n")[:-1]:
        if ln[:1] in (b" ", b"\t") and fields:
            fields[-1] += ln + b"\r\n"
        else:
            fields.append(ln + b"\r\n")
    return fields


def dkim_verify_simple(raw, pub_b64, workdir):
    """An independent check of a c=simple/simple, a=rsa-sha256 DKIM-Signature (RFC 6376
    3.4.1, 3.4.3, 3.7) over the exact bytes of raw, the RSA step by openssl: (ok, why)."""
    import base64
    import hashlib
    fields = header_fields(raw)
    sigs = [f for f in fields if f.split(b":", 1)[0].strip().lower() == b"dkim-signature"]
    if not sigs:
        return False, "no DKIM-Signature"
    sig = sigs[0]
    value = sig.split(b":", 1)[1]
    tags = {}
    for t in value.split(b";"):
        k, _, v = t.partition(b"=")
        if k.strip():
            tags[k.strip().decode()] = re.sub(rb"\s+", b"", v).decode()
    if tags.get("c") != "simple/simple" or tags.get("a") != "rsa-sha256" or "l" in tags:
        return False, "not c=simple/simple a=rsa-sha256 without l=: %r" % tags
    body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
    body = body.rstrip(b"\r\n") + b"\r\n" if body.strip(b"\r\n") else b"\r\n"
    bh = base64.b64encode(hashlib.sha256(body).digest()).decode()
    if bh != tags.get("bh"):
        return False, "body hash %s, signature says %s" % (bh, tags.get("bh"))
    data = b""
    unused = list(fields)
    for name in tags["h"].split(":"):
        for f in reversed(unused):  # the last instance not yet used (RFC 6376 5.4.2)
            if f.split(b":", 1)[0].strip().lower() == name.strip().lower().encode():
                data += f
                unused.remove(f)
                break
    data += re.sub(rb"(^|;)(\s*b\s*=)[^;]*", rb"\1\2", sig[:-2].replace(b":", b"\0", 1),
                   count=1).replace(b"\0", b":", 1)
    pem = "-----BEGIN PUBLIC KEY-----\n%s\n-----END PUBLIC KEY-----\n" % "\n".join(
        pub_b64[i:i + 64] for i in range(0, len(pub_b64), 64))
    files = {"pub.pem": pem.encode(), "sig": base64.b64decode(tags["b"]), "data": data}
    for name, content in files.items():
        with open(os.path.join(workdir, name), "wb") as f:
            f.write(content)
    r = subprocess.run([OPENSSL, "dgst", "-sha256", "-verify", os.path.join(workdir, "pub.pem"),
                        "-signature", os.path.join(workdir, "sig"),
                        os.path.join(workdir, "data")], capture_output=True, timeout=30)
    return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace").strip()


@T.test("OpenDKIM (signing): the spooled DKIM-Signature verifies (opendkim's verifier and "
        "an independent one); one body byte or one signed header byte changed, it does not")
def _():
    with OpenDKIM() as dk, MServer([dk.spec]) as srv:
        _end, out = through(srv, CLEAN)
        fields = header_fields(out)
        check(fields[0].startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; "
                                   b"d=%s;" % DOMAIN.encode()),
              "no DKIM-Signature on top: %r" % fields[:2])
        check_eq(len([f for f in fields if f.startswith(b"DKIM-Signature:")]), 1,
                 "DKIM-Signature fields")
        check(b"s=%s;" % SELECTOR.encode() in fields[0], "selector: %r" % fields[0])
        check(b"\n" not in fields[0].replace(b"\r\n", b""), "bare LF in %r" % fields[0])
        ok, text = dk.verify(out)
        check(ok, "opendkim's verifier: the signature does not verify:\n%s" % text[-2000:])
        ok, text = dkim_verify_simple(out, dk.pub_key, dk.dir)
        check(ok, "independent verifier: %s" % text)
        bad = out.replace(b"usual place", b"usual placE")
        check(bad != out, "no byte changed")
        ok, text = dk.verify(bad)
        check(not ok and "dkim=fail" in text, "opendkim verified an altered body:\n%s" % text)
        check(not dkim_verify_simple(bad, dk.pub_key, dk.dir)[0],
              "independent verifier passed an altered body")
        bad = out.replace(b"Subject: quarterly figures", b"Subject: quarterly figureS")
        check(bad != out, "no byte changed")
        ok, text = dk.verify(bad)
        check(not ok, "opendkim verified an altered Subject:\n%s" % text)
        check(not dkim_verify_simple(bad, dk.pub_key, dk.dir)[0],
              "independent verifier passed an altered Subject")


# Header fields whose exact bytes ringmxd must keep and show OpenDKIM as they are
# (OpenDKIM asks for SMFIP_HDR_LEADSPC): no space after the colon, several spaces and a
# trailing one, folding with a tab and with a space. With c=simple the signature covers
# those bytes. opendkim's own test-mode verifier (-t) cannot judge these: it rebuilds each
# field as "Name: value" (one space after the colon), so it fails the first two although the
# signature is right; the independent verifier reads the spooled bytes as they are.
ODD = CLEAN.replace("Subject: quarterly figures", "Subject:quarterly\r\n figures").replace(
    "To: u@example.test\r\n",
    "To: u@example.test,\r\n\tv@example.test\r\nCc:   three spaces \r\n")


@T.test("OpenDKIM (signing): header fields with odd whitespace and folding keep their exact "
        "bytes: the simple/simple signature verifies; one more space after a colon, it does not")
def _():
    with OpenDKIM() as dk, MServer([dk.spec]) as srv:
        _end, out = through(srv, ODD)
        check(out.endswith(ODD.split("\r\n\r\n", 1)[1].encode()), "body: %r" % out[-120:])
        head = out.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        for f in (b"Subject:quarterly\r\n figures\r\n", b"Cc:   three spaces \r\n",
                  b"To: u@example.test,\r\n\tv@example.test\r\n"):
            check(f in head, "%r not spooled as sent: %r" % (f, head))
        sig = header_fields(out)[0]
        check(b"h=From:To:Cc:Subject:Date;" in re.sub(rb"\s+", b"", sig),
              "signed fields: %r" % sig)
        ok, text = dkim_verify_simple(out, dk.pub_key, dk.dir)
        check(ok, "independent verifier: %s" % text)
        for a, b in ((b"Subject:quarterly", b"Subject: quarterly"),
                     (b"Cc:   three", b"Cc:    three"), (b"\r\n\tv@example", b"\r\n v@example")):
            bad = out.replace(a, b, 1)
            check(bad != out, "no byte changed")
            check(not dkim_verify_simple(bad, dk.pub_key, dk.dir)[0],
                  "independent verifier passed %r -> %r" % (a, b))


@T.test("OpenDKIM (verifying, as on an MX): a signed message gets Authentication-Results "
        "dkim=pass with ringmxd's host name; one body byte changed, dkim=fail")
def _():
    with OpenDKIM() as signer, MServer([signer.spec]) as srv:
        _end, signed = through(srv, CLEAN)
    # what a signing peer would send: its DKIM-Signature on the message, without our Received
    fields = [f for f in header_fields(signed) if not f.startswith(b"Received:")]
    check(fields[0].startswith(b"DKIM-Signature:"), "not signed: %r" % fields[:1])
    msg = (b"".join(fields) + b"\r\n" + signed.split(b"\r\n\r\n", 1)[1]).decode()
    with OpenDKIM(verify_pub=signer.pub) as dk, MServer([dk.spec]) as srv:
        for body, want in ((msg, "dkim=pass"), (msg.replace("usual place", "usual placE"),
                                                 "dkim=fail")):
            _end, out = through(srv, body)
            first = header_fields(out)[0]
            check(first.startswith(b"Authentication-Results: %s;" % HOSTNAME.encode()),
                  "no Authentication-Results on top: %r" % out[:300])
            check(want.encode() in first and b"header.d=example.test" in first,
                  "%s expected: %r" % (want, first))
            check(out.endswith(body.split("\r\n\r\n", 1)[1].encode()), "body changed")


if __name__ == "__main__":
    try:
        T.main()
    finally:
        if "srv" in RS:
            RS.pop("srv").stop()
