#!/usr/bin/env python3
"""test_spool_faults - faults injected into the spool through the hooks of
engine/runtime/fault.h, with the test daemon tests/ringmxd_faults (ringmxd built with
RINGMX_FAULTS; $RINGMXD_FAULTS): a failed directory fsync fails the batch
like a failed data fsync, so no 250 depends on a directory entry that may
not exist; a message that got 451 because its fdatasync failed is neither
recovered nor delivered after a restart (the client retries it).

Owner: the spool module (issue 11). Standalone: exit 0 / 1 / 77, last line
"N passed, M failed"."""

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time

from ringmx_harness import Suite, Server, Skip, check, check_eq, qid_of, TIMEOUT
from nexthop import FakeMX
from dio_util import dio_tmpdir
from relay_util import RelayServer, hop, qid_in, spool_cmd, spool_tool, use_fault_daemon

T = Suite(__file__)


@contextlib.contextmanager
def faulty_spool(hook, segment_size, direct=False):
    """A temporary spool, the fault daemon, and hook armed by a file that
    does not exist yet: yields (spool, fault file, ringmxd args). direct: on a
    file system where spool_io = direct works (dio_util)."""
    use_fault_daemon()
    base = dio_tmpdir() if direct else None
    if direct and base is None:
        raise Skip("no file system with a direct I/O alignment here (/tmp, the build dir)")
    d = tempfile.mkdtemp(prefix="ringmx-faults-", dir=base)
    spool = os.path.join(d, "spool")
    fault = os.path.join(d, "fault-" + hook)
    os.environ[hook] = fault
    try:
        yield spool, fault, ["-o", "sink=spool", "-o", "spool_dir=" + spool,
                             "-o", "segment_size=" + segment_size, "-o", "durability=fsync"]
    finally:
        os.environ.pop(hook, None)
        shutil.rmtree(d, ignore_errors=True)


def message(i, size):
    head = "Subject: fault %d\r\nMessage-ID: <f%d@faults.test>\r\n\r\n" % (i, i)
    return head.encode() + (b"%08d %s\r\n" % (i, b"f" * 88)) * (size // 100)


def send_to(c, rcpt, data):
    """MAIL/RCPT/DATA to rcpt; the final reply (MAIL and RCPT must work)."""
    c.cmd("MAIL FROM:<a@sender.test>").expect(250)
    c.cmd("RCPT TO:<%s>" % rcpt).expect(250)
    c.cmd("DATA").expect(354)
    c.send(data + b".\r\n")
    return c.reply()


def send_one(c, data):
    """MAIL/RCPT/DATA on an open client; the final reply, or the refusal."""
    r = c.cmd("MAIL FROM:<a@sender.test>")
    if r.code != 250:
        return r
    r = c.cmd("RCPT TO:<u@example.test>")
    if r.code != 250:
        return r
    c.cmd("DATA").expect(354)
    c.send(data + b".\r\n")
    return c.reply()


@T.test("directory fsync fails: no 250 for mail in a segment created meanwhile, 451 instead")
def _():
    # 64 KiB segments, 30 KB messages: at most two fit in a segment, so a
    # few messages need new segment files (made, or prepared ahead, and
    # their names made durable by a directory fsync).
    with faulty_spool("RINGMX_FAULT_DIRSYNC", "64k") as (spool, fault, args):
        with Server(args=args, workers=1) as srv:
            with srv.client() as c:
                c.ehlo()
                send_one(c, message(0, 30000)).expect(250, "2.0.0")
                # Segments whose directory entry was fsynced before the
                # fault: the current one and maybe one prepared ahead.
                before = set(os.listdir(os.path.join(spool, "w0")))
                open(fault, "w").close()
                replies = []
                for i in range(1, 11):
                    rep = send_one(c, message(i, 30000))
                    replies.append(rep)
                    if rep.code != 250:
                        c.cmd("RSET")
                ok = [r for r in replies if r.code == 250]
                bad = [r for r in replies if r.code != 250]
                # What could still fit in segments made before the fault.
                check(len(ok) <= 2 * len([n for n in before if n.endswith(".seg")]),
                      "%d of 10 messages got 250 with every directory fsync failing: %s"
                      % (len(ok), [r.lines for r in replies]))
                check(bad, "no refusal")
                for r in bad:
                    r.expect(451, "4.3.0")
                check(re.search(r"spool: fsync .*w0: Input/output error", srv.log()),
                      "the failed directory fsync is not logged")
                # The fault gone, mail flows again (after the retry pause).
                os.unlink(fault)
                deadline = time.monotonic() + TIMEOUT
                got = None
                while time.monotonic() < deadline and got is None:
                    rep = send_one(c, message(99, 30000))
                    if rep.code == 250:
                        got = rep
                    else:
                        c.cmd("RSET")
                        time.sleep(0.2)
                check(got is not None, "mail not accepted once directory fsyncs work again")
                c.quit()
        r = subprocess.run([spool_tool(), "-d", spool, "verify"], capture_output=True,
                           timeout=TIMEOUT)
        check_eq(r.returncode, 0, "verify exit status (%s)" % r.stdout.decode()[-500:])


def sync_fails(mode, what):
    with faulty_spool("RINGMX_FAULT_FSYNC", "1m", direct=mode == "direct") as (spool, fault, args):
        good = []
        with Server(args=args + ["-o", "spool_io=" + mode], workers=1) as srv:
            srv.wait_log(r"spool_io %s" % mode)
            with srv.client() as c:
                c.ehlo()
                for i in range(2):
                    good.append(qid_of(send_to(c, "g%d@example.test" % i, message(i, 3000))))
                # The write goes through, its fdatasync "fails": 451, and the
                # record is in the file all the same.
                open(fault, "w").close()
                send_to(c, "void@example.test", message(50, 3000)).expect(451, "4.3.0")
                os.unlink(fault)
                c.cmd("RSET")
                good.append(qid_of(send_to(c, "g2@example.test", message(2, 3000))))
                c.quit()
            check(re.search(r"%s on .* failed: Input/output error; segment abandoned" % what,
                            srv.log()), "the failed %s is not logged" % what)
        listed = spool_cmd(spool, "list").stdout
        check("void@example.test" not in listed, "the 451'd message is in the spool:\n" + listed)
        for qid in good:
            check(qid in listed, "%s not in the spool:\n%s" % (qid, listed))
        with FakeMX() as mx, RelayServer(spool, hop(mx), workers=1) as srv:
            got = mx.wait_for(len(good))
            for qid in good:
                srv.wait_log(r"%s: removed" % qid)
            time.sleep(0.5)
        rcpts = sorted(r for m in mx.messages for r in m.rcpts)
        check_eq(rcpts, ["g0@example.test", "g1@example.test", "g2@example.test"],
                 "recipients delivered after the restart")
        check_eq(sorted(qid_in(m.data_bytes) for m in got), sorted(good), "delivered")


# Buffered: the batch's fdatasync fails. Direct: the write itself is the
# durability point (RWF_DSYNC) and fails.
T.test("fdatasync fails after the records were written: the 451'd message is never delivered")(
    lambda: sync_fails("buffered", "fdatasync"))
T.test("spool_io=direct: the RWF_DSYNC write fails: the 451'd message is never delivered")(
    lambda: sync_fails("direct", r"write \(RWF_DSYNC\)"))


if __name__ == "__main__":
    T.main(requires=[spool_tool()])
