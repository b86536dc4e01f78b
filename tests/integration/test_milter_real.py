#!/usr/bin/env python3
"""test_milter_real - ringmxd with the real milters from Debian (issue 14), each a private
instance on free loopback ports and temporary directories, started and stopped here:

- rspamd 3.4 in its milter mode (the proxy worker, `milter = yes`, self-scan): GTUBE is
  refused at end of data with rspamd's own reply, nothing spooled; a clean message is
  spooled with rspamd's header changes applied (it deletes a client's forged `X-Spam`).
- OpenDKIM in signing mode: the spooled message carries the DKIM-Signature OpenDKIM
  inserted at the top, and a second OpenDKIM in verifying mode (its TestPublicKeys file
  standing in for DNS), run as a milter of a second ringmxd, finds it `dkim=pass`; the
  same message with one body octet changed is `dkim=fail`.

Standalone: exit 0 / 1 / 77 (rspamd or opendkim missing), last line "N passed, M failed".
About half a minute.
"""

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

from ringmx_harness import Skip, Suite, check, check_eq, fail, free_port, wait_for
from test_milter import MServer, qid_of, session

T = Suite(__file__)
RSPAMD = "/usr/bin/rspamd"
OPENDKIM = "/usr/sbin/opendkim"
GENKEY = "/usr/sbin/opendkim-genkey"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def port_open(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


class Rspamd:
    """rspamd with Debian's configuration and a private LOCAL_CONFDIR overriding the
    workers' sockets, the log and the pid file; no redis (its modules just stay off)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ringmx-rspamd-")
        self.port, normal, ctl = free_port(), free_port(), free_port()
        for d in ("override.d", "local.d", "db", "run", "log"):
            os.mkdir(os.path.join(self.dir, d))
        files = {
            "override.d/worker-proxy.inc":
                'bind_socket = "127.0.0.1:%d";\nmilter = yes;\ntimeout = 60s;\ncount = 1;\n'
                'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n' % self.port,
            "override.d/worker-normal.inc": 'bind_socket = "127.0.0.1:%d";\ncount = 1;\n' % normal,
            "override.d/worker-controller.inc":
                'bind_socket = "127.0.0.1:%d";\ncount = 1;\n' % ctl,
            "override.d/logging.inc":
                'type = "file";\nfilename = "%s/log/rspamd.log";\nlevel = "notice";\n' % self.dir,
            "override.d/options.inc": 'pidfile = "%s/run/rspamd.pid";\n' % self.dir,
        }
        for name, text in files.items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        user = "_rspamd"
        pw = pwd.getpwnam(user)
        for root, dirs, fs in os.walk(self.dir):
            for n in dirs + fs + ["."]:
                os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)
        v = self.dir
        self.proc = subprocess.Popen(
            [RSPAMD, "-f", "-u", user, "-g", user, "--var=LOCAL_CONFDIR=" + v,
             "--var=DBDIR=%s/db" % v, "--var=RUNDIR=%s/run" % v, "--var=LOGDIR=%s/log" % v],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None or port_open(self.port), timeout=60,
                 what="rspamd's milter port")
        check(self.proc.poll() is None, "rspamd exited: %s" % self.log()[-2000:])

    def log(self):
        try:
            return open(os.path.join(self.dir, "log", "rspamd.log")).read()
        except OSError:
            return ""

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Opendkim:
    def __init__(self, conf_lines, workdir):
        self.port = free_port()
        self.conf = os.path.join(workdir, "opendkim-%d.conf" % self.port)
        with open(self.conf, "w") as f:
            f.write("\n".join(conf_lines + [
                "Socket inet:%d@127.0.0.1" % self.port, "Background no", "Syslog no",
                "PidFile %s/opendkim-%d.pid" % (workdir, self.port)]) + "\n")
        self.errf = open(self.conf + ".log", "wb")
        self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", self.conf], stdout=self.errf,
                                     stderr=self.errf)
        wait_for(lambda: self.proc.poll() is not None or port_open(self.port),
                 what="opendkim on port %d" % self.port)
        check(self.proc.poll() is None,
              "opendkim exited: %s" % open(self.conf + ".log", "rb").read()[-2000:])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.errf.close()


def scan_until_ready(srv, body, sender="s@sender.test"):
    """rspamd's main process binds its sockets before its workers are ready: until then
    its milter answers nothing and ringmxd gives the default 451. Try for up to 60 s."""
    deadline = time.monotonic() + 60
    while True:
        mail, rr, end = session(srv, body=body, sender=sender)
        if end is None or end.code != 451 or time.monotonic() > deadline:
            return mail, rr, end
        time.sleep(1)


STATE = {}


def rspamd():
    if "rspamd" not in STATE:
        STATE["rspamd"] = Rspamd()
    return STATE["rspamd"]


@T.test("rspamd: GTUBE is refused at end of data with rspamd's own reply; nothing spooled")
def _():
    r = rspamd()
    with MServer(["inet:127.0.0.1:%d" % r.port], timeout="60s") as srv:
        msg = ("From: s@sender.test\r\nTo: u@example.test\r\nSubject: gtube\r\n"
               "Message-ID: <gtube@sender.test>\r\n\r\n%s\r\n" % GTUBE)
        _mail, _rr, end = scan_until_ready(srv, msg)
        check(end is not None and end.code // 100 == 5, "GTUBE reply: %r" % end)
        check("Gtube" in end.text or "GTUBE" in end.text.upper(),
              "not rspamd's text: %r" % end)
        check("Command rejected" not in end.text, "ringmxd's generic text: %r" % end)
        check_eq(srv.spooled(), [], "spooled")
        srv.wait_log(r"milter-reject: eom from inet:127\.0\.0\.1:%d: 5" % r.port)


@T.test("rspamd: a clean message is spooled with rspamd's header changes (a forged X-Spam removed)")
def _():
    r = rspamd()
    with MServer(["inet:127.0.0.1:%d" % r.port], timeout="60s") as srv:
        msg = ("From: s@sender.test\r\nTo: u@example.test\r\nSubject: clean\r\n"
               "X-Spam: forged-by-the-client\r\nMessage-ID: <clean@sender.test>\r\n\r\n"
               "An ordinary message.\r\n")
        _mail, _rr, end = scan_until_ready(srv, msg)
        check(end is not None and end.code == 250, "clean reply: %r" % end)
        out = srv.cat(qid_of(end))
        check(b"forged-by-the-client" not in out,
              "rspamd's removal of X-Spam did not land: %r" % out[:600])
        check(out.endswith(b"\r\n\r\nAn ordinary message.\r\n"), "body changed: %r" % out[-80:])


@T.test("OpenDKIM signs; the spooled message verifies with OpenDKIM (pass), altered fails")
def _():
    work = tempfile.mkdtemp(prefix="ringmx-opendkim-")
    signer = verifier = None
    try:
        subprocess.run([GENKEY, "-D", work, "-d", "example.test", "-s", "sel"], check=True,
                       capture_output=True)
        txt = open(os.path.join(work, "sel.txt")).read()
        keys = os.path.join(work, "keys")
        with open(keys, "w") as f:
            f.write("sel._domainkey.example.test %s\n" % "".join(re.findall(r'"([^"]*)"', txt)))
        signer = Opendkim(["Mode s", "Domain example.test", "Selector sel",
                           "KeyFile %s/sel.private" % work, "RequireSafeKeys no",
                           "Canonicalization relaxed/relaxed",
                           "SignHeaders From,To,Subject,Date,Message-ID"], work)
        verifier = Opendkim(["Mode v", "TestPublicKeys " + keys,
                             "AuthservID verifier.test"], work)
        msg = ("From: s@example.test\r\nTo: u@example.test\r\nSubject: signed\r\n"
               "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <d1@example.test>\r\n\r\n"
               "Hello signer.\r\n.a line with a dot\r\n")
        with MServer(["inet:127.0.0.1:%d" % signer.port], timeout="30s") as srv:
            _m, _r, end = session(srv, body=msg, sender="s@example.test")
            check(end is not None and end.code == 250, "signer: %r" % end)
            signed = srv.cat(qid_of(end)).decode()
        check(signed.startswith("DKIM-Signature: v=1; a=rsa-sha256;"),
              "no DKIM-Signature at the top: %r" % signed[:200])
        check("\r\n\t" in signed.split("\r\n\r\n")[0] and "\n\t" not in
              signed.split("\r\n\r\n")[0].replace("\r\n\t", ""),
              "folded header not in CRLF form: %r" % signed[:400])
        results = {}
        for label, text in (("as signed", signed),
                            ("altered", signed.replace("Hello signer.", "Hello signeR."))):
            with MServer(["inet:127.0.0.1:%d" % verifier.port], timeout="30s") as v:
                _m, _r, end = session(v, body=text, sender="s@example.test")
                check(end is not None and end.code == 250, "verifier: %r" % end)
                out = v.cat(qid_of(end)).decode()
            m = re.search(r"Authentication-Results: verifier\.test;\s+dkim=(\w+)", out)
            check(m is not None, "no Authentication-Results from the verifier: %r" % out[:600])
            results[label] = m.group(1)
        check_eq(results["as signed"], "pass", "the signed message")
        check_eq(results["altered"], "fail", "the altered message")
    finally:
        for p in (signer, verifier):
            if p is not None:
                p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    missing = [p for p in (RSPAMD, OPENDKIM, GENKEY) if not os.access(p, os.X_OK)]
    if missing:
        print("skip test_milter_real: %s not installed (Debian: rspamd opendkim opendkim-tools)"
              % ", ".join(missing))
        print("0 passed, 0 failed")
        raise SystemExit(77)
    try:
        T.main()
    finally:
        if "rspamd" in STATE:
            STATE["rspamd"].stop()
