#!/usr/bin/env python3
"""user/group (issue 15): started as root, ringmxd binds a port below 1024,
reads a TLS key only root may read, then runs as the user: real, effective
and saved ids, no capabilities, no_new_privs, the spool's files the user's;
STARTTLS still works with that key, a SIGHUP that cannot re-read it is
refused with the key's mode and owner and the old certificate keeps
serving. A spool owned by someone else, an unknown user, user = root and
group without user are each one clear error; root without user warns once;
a process that is not root cannot switch to another user. Needs root and
the 'nobody' account (Debian's base-passwd)."""

import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import tempfile
import time

from ringmx_harness import (Server, Skip, Suite, check, check_eq, fail, free_port,
                            privileged_port, run, ringmxd_path, world_executable, TIMEOUT)

T = Suite(__file__)
OPENSSL = "/usr/bin/openssl"

if os.geteuid() != 0:
    print("skip %s: needs root (it drops to nobody)" % T.name)
    raise SystemExit(77)
try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    print("skip %s: no 'nobody' account" % T.name)
    raise SystemExit(77)
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name
UID, GID = NOBODY.pw_uid, NOBODY.pw_gid

# The spool must be reachable by nobody: a world-searchable directory,
# not the harness's private one.
TMP = tempfile.mkdtemp(prefix="ringmx-privdrop-")
os.chmod(TMP, 0o755)


def sh(args):
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        fail("%s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr[-800:]))


def make_cert():
    cert, key = os.path.join(TMP, "cert.pem"), os.path.join(TMP, "key.pem")
    sh([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    os.chmod(cert, 0o644)
    os.chown(key, 0, 0)
    os.chmod(key, 0o600)   # root only, as the issue asks to support
    return cert, key


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            k, _, v = ln.partition(":")
            out[k] = v.split()
    return out


def new_spool(name):
    d = os.path.join(TMP, name)
    shutil.rmtree(d, ignore_errors=True)
    return d


def tls_ctx(cert):
    c = ssl.create_default_context(cafile=cert)
    c.check_hostname = False
    return c


def send_tls(port, cert):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="c.test", timeout=TIMEOUT) as s:
        s.starttls(context=tls_ctx(cert))
        s.ehlo("c.test")
        refused = s.sendmail("a@sender.test", ["u@example.test"],
                             b"Subject: privdrop\r\n\r\nbody\r\n")
        check(refused == {}, "refused: %r" % refused)


def start_fails(args, want):
    """ringmxd exits non-zero at start-up with one line matching want."""
    r = run([ringmxd_path(), "--listen", "127.0.0.1:%d" % free_port(), "--workers", "1",
             "-o", "sink=spool"] + args)
    check(r.returncode != 0, "ringmxd started; log: %s" % (r.stdout + r.stderr)[-2000:])
    text = (r.stdout + r.stderr).strip()
    check(re.search(want, text), "want %r in: %s" % (want, text))
    return text


CERT, KEY = None, None


@T.test("as root with user = nobody: port < 1024 bound, then uid/gid/groups nobody, "
        "no capabilities, no_new_privs; STARTTLS with a root-only key; spool files nobody's")
def _():
    global CERT, KEY
    if not os.access(OPENSSL, os.X_OK):
        raise Skip("openssl is not installed")
    CERT, KEY = make_cert()
    spool = new_spool("spool1")
    port = privileged_port()
    with Server(listen=(), port=port, workers=2,
                args=["--listen", "127.0.0.1:%d" % port, "-o", "sink=spool",
                      "-o", "spool_dir=" + spool, "-o", "user=nobody", "-o", "group=" + NOGROUP,
                      "-o", "tls_cert=" + CERT, "-o", "tls_key=" + KEY]) as srv:
        srv.wait_log(r"running as user nobody \(uid %d, gid %d\)" % (UID, GID))
        st = proc_status(srv.proc.pid)
        check_eq(st["Uid"], [str(UID)] * 4, "Uid (real, effective, saved, fs)")
        check_eq(st["Gid"], [str(GID)] * 4, "Gid")
        check("0" not in st.get("Groups", []), "root's group kept: %r" % st.get("Groups"))
        for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            check_eq(int(st[cap][0], 16), 0, cap)
        check_eq(st["NoNewPrivs"], ["1"], "NoNewPrivs")
        send_tls(port, CERT)
        srv.wait_log(r"status=queued")
        owners = set()
        for root, dirs, files in os.walk(spool):
            for n in dirs + files:
                owners.add(os.lstat(os.path.join(root, n)).st_uid)
        check(owners == {UID}, "spool entries owned by %r, want only %d" % (owners, UID))

        # SIGHUP as nobody: the root-only key cannot be read again.
        off = srv.log_size()
        srv.signal(signal.SIGHUP)
        line = srv.wait_log(r"reload refused", since=off)[0]
        check(re.search(r"tls_key: %s: Permission denied \(mode 0600, owner root; ringmxd "
                        r"runs as uid %d\)" % (re.escape(KEY), UID), line), line)
        send_tls(port, CERT)   # the running certificate still serves
        # The fix docs/operations.md gives: the key readable by the group.
        os.chown(KEY, 0, GID)
        os.chmod(KEY, 0o640)
        off = srv.log_size()
        srv.signal(signal.SIGHUP)
        srv.wait_log(r"configuration reloaded", since=off)
        send_tls(port, CERT)


@T.test("spool_dir with a file root owns: one error naming it and the chown, exit 1")
def _():
    spool = new_spool("spool2")
    os.makedirs(os.path.join(spool, "w0"))
    os.chown(spool, UID, GID)
    os.chown(os.path.join(spool, "w0"), UID, GID)
    with open(os.path.join(spool, "w0", "stray"), "w"):
        pass
    text = start_fails(["-o", "spool_dir=" + spool, "-o", "user=nobody"],
                       r"spool_dir %s: %s is owned by root, not by user nobody; fix it with: "
                       r"chown -R nobody:%s %s" % (re.escape(spool),
                                                  re.escape(os.path.join(spool, "w0", "stray")),
                                                  NOGROUP, re.escape(spool)))
    check_eq(len([ln for ln in text.splitlines() if "spool_dir" in ln]), 1, "error lines")


@T.test("a missing spool_dir is created for the user")
def _():
    spool = new_spool("spool3")
    with Server(workers=1, args=["-o", "sink=spool", "-o", "spool_dir=" + spool,
                                 "-o", "user=nobody"]) as srv:
        srv.wait_log(r"running as user nobody")
        check_eq(os.stat(spool).st_uid, UID, "spool_dir owner")


@T.test("config errors: unknown user and group, user = root, group without user, a bad name")
def _():
    conf = os.path.join(TMP, "bad.conf")
    cases = [("user = no-such-user-ringmx\n", r"bad\.conf:1: user: no such user 'no-such-user-ringmx'"),
             ("user = nobody\ngroup = no-such-group-ringmx\n",
              r"bad\.conf:2: group: no such group 'no-such-group-ringmx'"),
             ("user = root\n", r"bad\.conf:1: user: 'root' has user id 0"),
             ("\ngroup = %s\n" % NOGROUP, r"bad\.conf:2: group: needs user"),
             ("user = a b\n", r"bad\.conf:1: user: not a user name")]
    for text, want in cases:
        with open(conf, "w") as f:
            f.write(text)
        r = run([ringmxd_path(), "-t", "-c", conf])
        out = (r.stdout + r.stderr).strip()
        check(r.returncode != 0, "%r: accepted: %s" % (text, out))
        check(re.search(want, out), "%r: want %r, got %s" % (text, want, out))
        check_eq(len(out.splitlines()), 1, "error lines for %r" % text)
    r = run([ringmxd_path(), "-o", "user=nobody", "--print-config"])
    check(re.search(r"^user = nobody$", r.stdout, re.M), r.stdout[-500:])


@T.test("root without user: one warning, not repeated by a reload")
def _():
    with Server(workers=2) as srv:
        srv.wait_log(r"warning: running as root: set user = ")
        off = srv.log_size()
        srv.signal(signal.SIGHUP)
        srv.wait_log(r"configuration reloaded", since=off)
        check_eq(len(re.findall(r"running as root", srv.log())), 1, "warnings")


def as_nobody():
    os.setgroups([])
    os.setgid(GID)
    os.setuid(UID)


@T.test("not root: user = the same account runs (systemd User=); another account is refused")
def _():
    spool = new_spool("spool4")
    os.makedirs(spool)
    os.chown(spool, UID, GID)
    port = free_port()
    # As nobody: a copy of the binary nobody can execute (the build dir may be under /root).
    cmd = [world_executable(ringmxd_path()), "--listen", "127.0.0.1:%d" % port, "--workers", "1",
           "-o", "sink=spool",
           "-o", "spool_dir=" + spool, "-o", "shutdown_timeout=5s"]
    log = os.path.join(TMP, "nobody.log")
    with open(log, "wb") as lf:
        p = subprocess.Popen(cmd + ["-o", "user=nobody"], stdout=lf, stderr=lf,
                             stdin=subprocess.DEVNULL, preexec_fn=as_nobody, cwd=TMP)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "listening on" not in open(log).read():
            check(p.poll() is None, "exited %r: %s" % (p.poll(), open(log).read()[-2000:]))
            check(time.monotonic() < deadline, "no start: " + open(log).read()[-2000:])
            time.sleep(0.05)
        text = open(log).read()
        check("running as root" not in text and "running as user" not in text, text[-1500:])
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(TIMEOUT)
    check_eq(rc, 0, "exit code")
    r = subprocess.run(cmd + ["-o", "user=daemon"], capture_output=True, text=True,
                       timeout=TIMEOUT, preexec_fn=as_nobody, cwd=TMP)
    out = (r.stdout + r.stderr).strip()
    check(r.returncode != 0, "started: " + out[-1500:])
    check(re.search(r"user = daemon: ringmxd runs as uid %d gid %d and cannot become uid \d+"
                    % (UID, GID), out), out)


try:
    T.main()
finally:
    shutil.rmtree(TMP, ignore_errors=True)
