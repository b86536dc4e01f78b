#!/usr/bin/env python3
"""etc/seccomp-ringmxd.json (issue 15): it is what tools/seccomp-profile makes of the installed
default profile (Debian's golang-github-containers-common, Podman's default), and differs from
that default by one rule allowing exactly io_uring_setup, io_uring_enter and io_uring_register.
Then both profiles are really applied, as runc would apply them (seccomp_exec.py, on
python3-seccomp): under the default ringmxd exits 1 with check_io_uring's message; under
ringmxd's it runs, answers 220, takes a message into the spool and stops cleanly."""

import json
import os
import subprocess
import sys
import tempfile

from ringmx_harness import (HOSTNAME, SKIP, Skip, Suite, check, check_eq, free_port,
                            ringmxd_path, scan_bad, smtplib_send)
from seccomp_exec import SYSTEM_PYTHON, confined_server, seccomp_mode

T = Suite(__file__)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
GENERATOR = os.path.join(ROOT, "tools", "seccomp-profile")
PROFILE = os.path.join(ROOT, "etc", "seccomp-ringmxd.json")
DEFAULT = "/usr/share/containers/seccomp.json"
EXEC = os.path.join(HERE, "seccomp_exec.py")
IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}


def need_default():
    if not os.path.isfile(DEFAULT):
        raise Skip("%s is missing (apt-get install golang-github-containers-common)" % DEFAULT)


def load(path):
    with open(path) as f:
        return json.load(f)


def names_in(profile):
    return {n for rule in profile["syscalls"] for n in rule.get("names") or ()}


@T.test("the committed profile is byte for byte what tools/seccomp-profile makes of the default")
def _():
    need_default()
    p = subprocess.run([sys.executable, GENERATOR, DEFAULT], capture_output=True, text=True,
                       timeout=30)
    check_eq(p.returncode, 0, "tools/seccomp-profile exit code (stderr %r)" % p.stderr)
    with open(PROFILE) as f:
        committed = f.read()
    check(p.stdout == committed, "etc/seccomp-ringmxd.json is stale: run "
          "tools/seccomp-profile > etc/seccomp-ringmxd.json and review the diff")


@T.test("it is the default plus one rule: SCMP_ACT_ALLOW for the three io_uring calls only")
def _():
    need_default()
    default, ours = load(DEFAULT), load(PROFILE)
    check(not names_in(default) & IO_URING,
          "the default profile names io_uring itself now: %s" % (names_in(default) & IO_URING))
    check_eq(len(ours["syscalls"]), len(default["syscalls"]) + 1, "number of rules")
    extra = ours["syscalls"][-1]
    rest = dict(ours, syscalls=ours["syscalls"][:-1])
    check(rest == default, "apart from its last rule the profile differs from the default")
    check_eq(set(extra["names"]), IO_URING, "names of the added rule")
    check_eq(len(extra["names"]), 3, "the added rule lists each call once")
    check_eq(extra["action"], "SCMP_ACT_ALLOW", "action of the added rule")
    check(not extra.get("args") and not extra.get("includes") and not extra.get("excludes"),
          "the added rule must be unconditional: %r" % extra)
    # Under the default the io_uring calls meet the default action: blocked, not allowed.
    check(default["defaultAction"] != "SCMP_ACT_ALLOW", default["defaultAction"])


@T.test("tools/seccomp-profile refuses a profile that already has an io_uring rule")
def _():
    with tempfile.TemporaryDirectory(prefix="ringmx-seccomp-") as d:
        p = subprocess.run([sys.executable, GENERATOR, PROFILE], capture_output=True,
                           text=True, timeout=30)
        check_eq(p.returncode, 1, "exit code on its own output (stdout %r)" % p.stdout[:200])
        check("io_uring" in p.stderr and p.stdout == "", p.stderr)
        missing = os.path.join(d, "none.json")
        p = subprocess.run([sys.executable, GENERATOR, missing], capture_output=True,
                           text=True, timeout=30)
        check(p.returncode == 1 and missing in p.stderr, p.stderr)


def seccomp_usable():
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise Skip("no %s" % SYSTEM_PYTHON)
    p = subprocess.run([SYSTEM_PYTHON, EXEC, PROFILE, "true"], capture_output=True, text=True,
                       timeout=30)
    if p.returncode == SKIP:
        raise Skip(p.stderr.strip() + " (apt-get install python3-seccomp)")
    check_eq(p.returncode, 0, "seccomp_exec.py PROFILE true (stderr %r)" % p.stderr)


@T.test("under the unmodified default profile ringmxd exits 1 with the io_uring message")
def _():
    need_default()
    seccomp_usable()
    p = subprocess.run([SYSTEM_PYTHON, EXEC, DEFAULT, ringmxd_path(), "--listen",
                        "127.0.0.1:%d" % free_port(), "--workers", "1", "-o", "sink=discard",
                        "-o", "hostname=" + HOSTNAME],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
    check(scan_bad(p.stderr) is None, "sanitizer report: %s" % scan_bad(p.stderr))
    check_eq(p.returncode, 1, "exit code (stderr %r)" % p.stderr)
    # The default answers calls it does not list with ENOSYS (its defaultErrnoRet 38).
    check("ringmxd: fatal: io_uring is not available (Function not implemented). ringmxd "
          "needs io_uring (Linux >= 6.1)." in p.stderr, p.stderr)
    check("io_uring_setup, io_uring_enter and io_uring_register" in p.stderr, p.stderr)
    check("listening on" not in p.stderr, p.stderr)


@T.test("a profile that allows io_uring_setup and io_uring_enter but not io_uring_register: "
        "ringmxd exits 1 with the same message, before any worker starts")
def _():
    need_default()
    seccomp_usable()
    prof = load(PROFILE)
    for rule in prof["syscalls"]:
        if "io_uring_register" in rule.get("names", []):
            rule["names"] = [n for n in rule["names"] if n != "io_uring_register"]
    with tempfile.TemporaryDirectory(prefix="ringmx-seccomp-") as d:
        path = os.path.join(d, "no-register.json")
        with open(path, "w") as f:
            json.dump(prof, f)
        p = subprocess.run([SYSTEM_PYTHON, EXEC, path, ringmxd_path(), "--listen",
                            "127.0.0.1:%d" % free_port(), "--workers", "1", "-o", "sink=discard",
                            "-o", "hostname=" + HOSTNAME],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
    check(scan_bad(p.stderr) is None, "sanitizer report: %s" % scan_bad(p.stderr))
    check_eq(p.returncode, 1, "exit code (stderr %r)" % p.stderr)
    check("ringmxd: fatal: io_uring is not available (Function not implemented)" in p.stderr,
          p.stderr)
    check("etc/seccomp-ringmxd.json" in p.stderr, p.stderr)
    check("provided buffer ring" not in p.stderr, p.stderr)


@T.test("under etc/seccomp-ringmxd.json ringmxd runs filtered, answers 220, spools a message")
def _():
    need_default()
    seccomp_usable()
    with tempfile.TemporaryDirectory(prefix="ringmx-seccomp-") as d:
        spool = os.path.join(d, "spool")
        with confined_server(PROFILE, workers=2,
                             args=["-o", "sink=spool", "-o", "spool_dir=" + spool]) as s:
            check_eq(seccomp_mode(s.proc.pid), 2, "Seccomp: in /proc/%d/status (2: filter)"
                     % s.proc.pid)
            with s.client(greet=False) as c:
                c.expect(220)
                c.quit()
            smtplib_send(s)
            # Durable: 250 came after the spool's fdatasync (or, spool_io
            # direct, after its RWF_DSYNC write), under the filter.
            stats = s.stats()
            synced = stats.get("spool_fsyncs", 0) >= 1 or (
                "spool_io direct" in s.log() and stats.get("spool_writes", 0) >= 1)
            check(stats.get("spool_messages", 0) >= 1 and synced,
                  "spool counters: %r" % {k: v for k, v in stats.items() if "spool" in k})
        check(os.path.isdir(os.path.join(spool, "w0")), "no spool written under " + spool)


T.main()
