#!/usr/bin/env python3
"""recipient_maps on the real ringmxd: a known user gets 250, an unknown user
of an accepted domain 550 5.1.1 (exact text, reject log line, rcpt_unknown
counter), @domain catch-alls, case folding, <Postmaster>, swaks; SIGHUP adds
a user (new and open sessions), SIGHUP with a broken map is refused naming
the map's file and line while the old map stays in force; start-up with a
broken or missing map exits non-zero with one error line."""

import os
import re
import signal
import tempfile

from ringmx_harness import Server, Suite, check, check_eq, free_port, ringmxd_path, run

T = Suite(__file__)
MAPDIR = tempfile.TemporaryDirectory(prefix="ringmx-rcpt-maps-")
SWAKS = "/usr/bin/swaks"
UNKNOWN = "550 5.1.1 <%s>: Recipient address rejected: User unknown"


def map_file(name, text):
    path = os.path.join(MAPDIR.name, name)
    with open(path + ".new", "w") as f:
        f.write(text)
    os.rename(path + ".new", path)
    return path


USERS = map_file("users", "# valid recipients, Postfix relay_recipient_maps style\n"
                          "alice@example.test   OK\n"
                          "Bob@Example.TEST\tOK\n"
                          "   carol@example.test  (a continuation: ignored)\n"
                          "\n"
                          "@catchall.test OK\n")
OTHER = map_file("other", "dave@other.test OK\n")
CONF = ("domains = example.test, catchall.test, other.test, empty.test\n"
        "recipient_maps = %s,\n    %s\n" % (USERS, OTHER))


def rcpt(c, addr):
    c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.cmd("RSET").expect(250, "2.0.0")
    return r


def rcpt_code(s, addr):
    with s.client() as c:
        c.ehlo()
        r = rcpt(c, addr)
        c.quit()
    return r.code


srv = T.shared(workers=2, config_text=CONF)


@T.test("start-up logs what the maps hold")
def _():
    s = srv()
    ln = s.wait_log(r"recipient_maps: \d+ entries")[0]
    check("recipient_maps: 4 entries (1 @domain, 0 duplicates ignored) from 2 files" in ln, ln)


@T.test("known users 250, any case; unknown users 550 5.1.1 with the address as given")
def _():
    s = srv()
    with s.client() as c:
        c.ehlo()
        for a in ("alice@example.test", "ALICE@EXAMPLE.TEST", "bob@example.test",
                  "dave@other.test"):
            rcpt(c, a).expect(250, "2.1.5")
        for a in ("Mallory@Example.Test", "carol@example.test", "dave@example.test",
                  "alice@other.test", "anyone@empty.test", "postmaster@example.test"):
            r = rcpt(c, a)
            check_eq(r.lines, [UNKNOWN % a], "reply to RCPT TO:<%s>" % a)
        c.quit()


@T.test("@domain accepts every local part; <Postmaster> is never refused")
def _():
    s = srv()
    with s.client() as c:
        c.ehlo()
        for a in ("x@catchall.test", "Whoever.Else@CatchAll.Test", "Postmaster"):
            rcpt(c, a).expect(250, "2.1.5")
        c.quit()


@T.test("an unaccepted domain is still relay access denied, not user unknown")
def _():
    s = srv()
    with s.client() as c:
        c.ehlo()
        rcpt(c, "alice@elsewhere.test").expect(550, "5.7.1")
        c.quit()


@T.test("each refusal is logged (NOQUEUE: reject) and counted (rcpt_unknown)")
def _():
    s = srv()
    before = s.stats().get("rcpt_unknown", 0)
    off = s.log_size()
    with s.client() as c:
        c.ehlo()
        port = c.sock.getsockname()[1]
        rcpt(c, "nobody@example.test")
        rcpt(c, "nobody2@example.test")
        c.quit()
    ln = s.wait_log(r"NOQUEUE: reject: RCPT from \[127\.0\.0\.1\]:%d: " % port, since=off)[0]
    check((UNKNOWN % "nobody@example.test") in ln and "to=<nobody@example.test>" in ln, ln)
    check_eq(s.stats().get("rcpt_unknown", 0) - before, 2, "rcpt_unknown increase")


@T.test("swaks: a known user is queued (exit 0); an unknown user fails (exit 24, 550 5.1.1)")
def _():
    s = srv()
    base = [SWAKS, "--server", "127.0.0.1", "--port", str(s.port), "--timeout", "10",
            "--helo", "swaks.test", "--from", "a@sender.test"]
    p = run(base + ["--to", "alice@example.test"], timeout=30)
    check_eq(p.returncode, 0, "swaks exit code: " + p.stdout[-1500:])
    check(re.search(r"<-  250 2\.0\.0 Ok: queued as", p.stdout), p.stdout[-1500:])
    p = run(base + ["--to", "mallory@example.test"], timeout=30)
    check_eq(p.returncode, 24, "swaks exit code: " + p.stdout[-1500:])
    check(("<** " + UNKNOWN % "mallory@example.test") in p.stdout, p.stdout[-1500:])


def reload(s, ok=True):
    off = s.log_size()
    s.signal(signal.SIGHUP)
    pat = r"configuration reloaded" if ok else r"reload refused, keeping the running configuration"
    return s.wait_log(pat, since=off)[0], off


@T.test("SIGHUP reads the maps again: an added user is accepted, in an open session too")
def _():
    path = map_file("hup", "alice@example.test\n")
    with Server(workers=2, config_text="domains = example.test\nrecipient_maps = %s\n" % path) as s:
        check_eq(rcpt_code(s, "erin@example.test"), 550, "erin before")
        open_c = s.client()
        open_c.ehlo()
        map_file("hup", "alice@example.test\nerin@example.test\n")
        _ln, off = reload(s)
        s.wait_log(r"recipient_maps: 2 entries", since=off)
        check_eq(rcpt_code(s, "erin@example.test"), 250, "erin after (new session)")
        rcpt(open_c, "erin@example.test").expect(250, "2.1.5")
        open_c.quit()
        open_c.close()
        # Removed again: refused again.
        map_file("hup", "alice@example.test\n")
        reload(s)
        check_eq(rcpt_code(s, "erin@example.test"), 550, "erin removed")
        check_eq(rcpt_code(s, "alice@example.test"), 250, "alice kept")


@T.test("SIGHUP with a broken map: refused naming its file and line, the old map stays")
def _():
    path = map_file("hup-broken", "alice@example.test\n")
    with Server(workers=2, config_text="domains = example.test\nrecipient_maps = %s\n" % path,
                check_exit=False) as s:
        map_file("hup-broken", "alice@example.test\nerin@example.test\n# fine\nno-at-sign\n")
        ln, _off = reload(s, ok=False)
        check(("recipient_maps: %s:4: not user@domain or @domain: 'no-at-sign'" % path) in ln, ln)
        check_eq(rcpt_code(s, "alice@example.test"), 250, "alice (old map)")
        check_eq(rcpt_code(s, "erin@example.test"), 550, "erin (only in the refused map)")
        os.unlink(path)
        ln, _off = reload(s, ok=False)
        check(("%s: cannot open" % path) in ln, ln)
        check_eq(rcpt_code(s, "alice@example.test"), 250, "alice (old map, file gone)")
        rc = s.stop(check=False)
        check_eq(rc, 0, "exit code after refused reloads")


def start_fails(map_text, want):
    path = map_file("start", map_text) if map_text is not None else os.path.join(MAPDIR.name,
                                                                                 "absent")
    if map_text is None and os.path.exists(path):
        os.unlink(path)
    conf = map_file("start.conf", "domains = example.test\nsink = discard\n"
                                  "recipient_maps = %s\n" % path)
    for extra in (["-t"], ["--listen", "127.0.0.1:%d" % free_port(), "--workers", "1"]):
        p = run([ringmxd_path(), "-c", conf] + extra, timeout=30)
        check(p.returncode != 0, "exit code %d with %s: %s" % (p.returncode, extra, p.stderr))
        lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
        check_eq(len(lines), 1, "output lines with %s" % extra)
        check_eq(lines[0], "ringmxd: %s:3: recipient_maps: %s" % (conf, want % path),
                 "error line with %s" % extra)


@T.test("start-up with a broken map: non-zero exit, one line naming the map's file and line")
def _():
    start_fails("alice@example.test\n\nbob@exa_mple.test OK\n",
                "%s:3: not a domain after '@': 'bob@exa_mple.test'")
    start_fails(" indented@example.test\n", "%s:1: continuation line without an entry: "
                                            "'indented@example.test'")


@T.test("start-up with a missing map: non-zero exit, one line naming it")
def _():
    start_fails(None, "%s: cannot open: No such file or directory")


T.main()
