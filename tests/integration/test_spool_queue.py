#!/usr/bin/env python3
"""test_spool_queue - the delivery queue through ringmx-spool: queue (text
and --json), hold / release / delete / flush written to the delivery
journal while ringmxd is stopped (the tool holds SPOOL_DIR/lock), and the
request/answer files in SPOOL_DIR/ctl/ used while ringmxd holds the lock.

ringmxd runs with sink = spool and no relay, so messages just stay queued.
The daemon's side of the online mode is not tested here: the test takes
the lock itself and answers the request the way ringmxd will.

Owner: the relay module. Standalone: exit 0 / 1 / 77, last line
"N passed, M failed". Uses ringmx_harness and test_spool's helpers."""

import fcntl
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import time

from ringmx_harness import Suite, check, check_eq, fail, TIMEOUT
from test_spool import SpoolServer, send, spool_tool, tmp_spool, tool

T = Suite(__file__)

ST = {}  # the spool shared by the checks, filled by the first one


def queue_text(spool):
    return tool(spool, "queue").stdout.decode()


def queue_json(spool):
    out = tool(spool, "queue", "--json").stdout.decode()
    return {m["queue_id"]: m for m in map(json.loads, out.splitlines())}


def message_block(text, qid):
    """The lines of one message in `queue` output: from its id to the blank line."""
    m = re.search(r"^%s .*?(?:\n\n|\Z)" % qid, text, re.M | re.S)
    check(m is not None, "queue lacks %s:\n%s" % (qid, text))
    return m.group(0)


def journals(spool):
    return glob.glob(os.path.join(spool, "w*", "*.jnl"))


def journal_of(spool, qid):
    seg = re.search(r"^segment: (.*)\.seg$", tool(spool, "show", qid).stdout.decode(), re.M)
    check(seg is not None, "show %s names no segment" % qid)
    return seg.group(1) + ".jnl"


def journal_bytes(spool):
    return {p: open(p, "rb").read() for p in journals(spool)}


@T.test("queue lists stopped ringmxd's messages, text and --json")
def _():
    d, spool = tmp_spool()
    ST.update(d=d, spool=spool)
    with SpoolServer(spool) as srv:
        one = send(srv, [("a@sender.test", b"Subject: one\r\n\r\nbody\r\n")],
                   rcpts=("u@example.test", "v@example.test"))
        more = send(srv, [("b@sender.test", b"Subject: two\r\n\r\nx\r\n"),
                          ("", b"Subject: three\r\n\r\ny\r\n")], rcpts=("w@example.test",))
        # Read while ringmxd runs: no lock, no journal needed.
        check(one[0] in queue_text(spool), "queue while running")
    ST["ids"] = ids = one + more
    text = queue_text(spool)
    for qid in ids:
        message_block(text, qid)
    b = message_block(text, ids[0])
    check(re.search(r"^%s +\d+ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z active +<a@sender.test>"
                    % ids[0], b, re.M), "first line: %r" % b)
    check("attempts: 0, next: now" in b, "attempts/next: %r" % b)
    check("<u@example.test>" in b and "<v@example.test>" in b, "recipients: %r" % b)
    check(re.search(r"^%s .* active +<>$" % ids[2], text, re.M), "null sender: %s" % text)
    check(re.search(r"^-- \d+ KiB in 3 messages\.$", text, re.M), "summary: %s" % text)
    check(not journals(spool), "queue wrote a journal")

    js = queue_json(spool)
    check_eq(sorted(js), sorted(ids), "--json ids")
    m = js[ids[0]]
    check_eq(m["state"], "active", "state")
    check_eq(m["sender"], "a@sender.test", "sender")
    check_eq(m["recipients"], ["u@example.test", "v@example.test"], "recipients")
    check_eq(m["attempts"], 0, "attempts")
    check_eq(m["next_attempt"], "now", "next_attempt")
    check_eq(m["reason"], None, "reason")
    check(m["size"] > 0 and re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z$", m["arrival_time"]),
          "size/arrival: %r" % m)
    check_eq(js[ids[2]]["sender"], "", "null sender in json")
    out = tool(spool, "list").stdout.decode()
    check(all(q in out for q in ids), "list still works")


@T.test("offline hold / release / delete / flush append to the journal")
def _():
    spool, ids = ST["spool"], ST["ids"]
    r = tool(spool, "hold", ids[0])
    check_eq(r.stdout.decode(), "ok hold %s\n" % ids[0], "hold output")
    check(os.path.exists(os.path.join(spool, "lock")), "lock file created")
    check_eq(journals(spool), [journal_of(spool, ids[0])], "one journal, beside the segment")
    check_eq(os.stat(journal_of(spool, ids[0])).st_mode & 0o777, 0o600, "journal mode")
    check(re.search(r"^%s .* held +<a@sender.test>" % ids[0], queue_text(spool), re.M),
          "held in queue")
    check_eq(queue_json(spool)[ids[0]]["state"], "held", "held in json")

    tool(spool, "release", ids[0])
    check_eq(queue_json(spool)[ids[0]]["state"], "active", "released")

    r = tool(spool, "delete", ids[1])
    check_eq(r.stdout.decode(), "ok delete %s\n" % ids[1], "delete output")
    text = queue_text(spool)
    check(ids[1] not in text, "deleted message still queued:\n%s" % text)
    check(re.search(r"^-- \d+ KiB in 2 messages\.$", text, re.M), "summary: %s" % text)
    check(ids[1] in tool(spool, "list").stdout.decode(), "the record itself stays")

    # Unknown and deleted ids: an error line each, exit 1; the good one applied.
    r = tool(spool, "hold", ids[2], "NOSUCHID00000", ids[1], ok=False)
    check_eq(r.returncode, 1, "exit code with unknown ids")
    check_eq(r.stdout.decode(), "ok hold %s\nerror hold NOSUCHID00000: no such message\n"
             "error hold %s: no such message\n" % (ids[2], ids[1]), "mixed output")
    r = tool(spool, "hold", "bad id\nflush", ok=False)
    check_eq(r.returncode, 2, "a malformed id is a usage error")

    r = tool(spool, "flush")
    check_eq(r.stdout.decode(), "ok flush\n", "flush output")
    js = queue_json(spool)
    check_eq(js[ids[0]]["state"], "deferred", "flushed state")
    check_eq(js[ids[0]]["next_attempt"], "now", "flushed next")
    check_eq(js[ids[0]]["reason"], "flush requested", "flushed reason")
    check_eq(js[ids[2]]["state"], "held", "a held message stays held")
    b = message_block(queue_text(spool), ids[0])
    check("(flush requested)" in b and "next: now" in b, "flush in text: %r" % b)
    tool(spool, "flush", ids[0])
    check_eq(tool(spool, "flush", "NOSUCHID00000", ok=False).returncode, 1, "flush unknown")

    # A torn last record (a crash mid-append) is ignored, then cut off.
    jn = journal_of(spool, ids[2])
    good = os.path.getsize(jn)
    with open(jn, "ab") as f:
        f.write(b"RMMJ\x04\x00\x00\x00garbage")
    check_eq(queue_json(spool)[ids[2]]["state"], "held", "torn tail ignored")
    tool(spool, "release", ids[2])
    check_eq(queue_json(spool)[ids[2]]["state"], "deferred", "appended after the cut (flushed before)")
    check_eq(os.path.getsize(jn), good + 48, "torn tail truncated before the append")


@T.test("ringmxd starts and stops again with journals, lock and ctl/ in the spool")
def _():
    spool, ids = ST["spool"], ST["ids"]
    with SpoolServer(spool):
        check(ids[0] in queue_text(spool), "queue while running")
    check(os.path.exists(journal_of(spool, ids[0])), "journal kept")


def crc32c(data):
    """Bitwise CRC32C (Castagnoli, reflected), slow but enough for a record."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def journal_record(rtype, rec_off, first, count, text=b""):
    """One record as docs/spool-format.md ("Delivery journal") lays it out,
    written independently of journal_format.c."""
    body = struct.pack("<IBBHIIQIIQQ", 0x4A4D4D52, rtype, 0, len(text), 0, count, rec_off,
                       first, 0, int(time.time() * 1e6), 0) + text
    body += b"\0" * (-len(body) % 8)
    return body[:8] + struct.pack("<I", crc32c(body)) + body[12:]


@T.test("recipients delivered per the journal are not listed; a finished message is gone")
def _():
    spool, ids = ST["spool"], ST["ids"]

    def append(qid, rtype, first, count, text=b""):
        off = int(re.search(r"^offset: (\d+)$", tool(spool, "show", qid).stdout.decode(),
                            re.M).group(1))
        with open(journal_of(spool, qid), "ab") as f:
            f.write(journal_record(rtype, off, first, count, text))

    append(ids[0], 1, 0, 1, b"250 2.0.0 ok")          # DELIVERED u@
    js = queue_json(spool)
    check_eq(js[ids[0]]["recipients"], ["v@example.test"], "pending recipients")
    b = message_block(queue_text(spool), ids[0])
    check("<u@example.test>" not in b and "<v@example.test>" in b, "text: %r" % b)
    append(ids[0], 3, 0, 0xFFFFFFFF, b"451 4.3.0 try again")   # DEFERRED
    check_eq(queue_json(spool)[ids[0]]["reason"], "451 4.3.0 try again", "last reason")
    append(ids[2], 2, 0, 0xFFFFFFFF, b"550 5.1.1 unknown")     # FAILED all
    check(ids[2] not in queue_json(spool), "a finished message is not queued")
    r = tool(spool, "hold", ids[2], ok=False)
    check_eq(r.stdout.decode(), "error hold %s: no such message\n" % ids[2], "finished")


def run_bg(spool, *args, timeout=None):
    env = dict(os.environ)
    if timeout is not None:
        env["RINGMX_SPOOL_CTL_TIMEOUT"] = str(timeout)
    return subprocess.Popen([spool_tool(), "-d", spool] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def wait_req(spool, proc):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        reqs = glob.glob(os.path.join(spool, "ctl", "*.req"))
        if reqs:
            return reqs[0]
        if proc.poll() is not None:
            fail("ringmx-spool exited %d before writing a request: %r"
                 % (proc.returncode, proc.communicate()))
        time.sleep(0.02)
    fail("no request file in ctl/")


@T.test("online: with the lock held, a request in ctl/ and ringmxd's answer")
def _():
    spool, ids = ST["spool"], ST["ids"]
    before = journal_bytes(spool)
    with open(os.path.join(spool, "lock"), "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX | fcntl.LOCK_NB)   # as ringmxd does
        p = run_bg(spool, "hold", ids[0], ids[2])
        req = wait_req(spool, p)
        check(re.match(r"\d+\.\d+\.req$", os.path.basename(req)), "request name %s" % req)
        check_eq(os.stat(os.path.dirname(req)).st_mode & 0o777, 0o700, "ctl/ mode")
        check_eq(open(req).read(), "hold %s\nhold %s\n" % (ids[0], ids[2]), "request")
        # Answer as ringmxd: .tmp, rename to .res, remove the .req.
        res = req[:-4] + ".res"
        with open(res + ".tmp", "w") as f:
            f.write("ok hold %s\nok hold %s\n" % (ids[0], ids[2]))
        os.rename(res + ".tmp", res)
        os.unlink(req)
        out, err = p.communicate(timeout=TIMEOUT)
        check_eq(p.returncode, 0, "exit code (stderr %r)" % err)
        check_eq(out.decode(), "ok hold %s\nok hold %s\n" % (ids[0], ids[2]), "printed answer")
        check(not os.path.exists(res), "answer removed")

        # An error line from ringmxd: exit 1; flush without ids is one line.
        p = run_bg(spool, "flush")
        req = wait_req(spool, p)
        check_eq(open(req).read(), "flush\n", "flush request")
        res = req[:-4] + ".res"
        with open(res + ".tmp", "w") as f:
            f.write("error flush : relay not configured\n")
        os.rename(res + ".tmp", res)
        os.unlink(req)
        out, _ = p.communicate(timeout=TIMEOUT)
        check_eq(p.returncode, 1, "exit code on an error line")
        check("error flush" in out.decode(), "error printed")

        # Nobody answers: exit 2 after RINGMX_SPOOL_CTL_TIMEOUT, request withdrawn.
        t0 = time.monotonic()
        p = run_bg(spool, "release", ids[0], timeout=0.5)
        out, err = p.communicate(timeout=TIMEOUT)
        check_eq(p.returncode, 2, "exit code on timeout")
        check(time.monotonic() - t0 < 5, "timeout honoured")
        check("did not answer" in err.decode(), "timeout message: %r" % err)
        check_eq(glob.glob(os.path.join(spool, "ctl", "*")), [], "request withdrawn")
    check_eq(journal_bytes(spool), before, "online mode wrote no journal")


@T.test("show the queue (for the log)")
def _():
    print(queue_text(ST["spool"]) + tool(ST["spool"], "queue", "--json").stdout.decode())


@T.test("cleanup")
def _():
    shutil.rmtree(ST["d"], ignore_errors=True)


if __name__ == "__main__":
    T.main(requires=[spool_tool()])
