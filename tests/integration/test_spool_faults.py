#!/usr/bin/env python3
"""test_spool_faults - faults injected into the spool through the hooks of
engine/fault.h, with the test daemon tests/ringmxd_faults (ringmxd built with
RINGMX_FAULTS; $RINGMXD_FAULTS): a failed directory fsync fails the batch
like a failed data fsync, so no 250 depends on a directory entry that may
not exist.

Owner: the spool module (issue 11). Standalone: exit 0 / 1 / 77, last line
"N passed, M failed"."""

import os
import re
import shutil
import subprocess
import tempfile
import time

from ringmx_harness import Suite, Server, Skip, check, check_eq, TIMEOUT
import relay_util
from relay_util import spool_tool

T = Suite(__file__)


def use_fault_daemon():
    p = relay_util._tool("RINGMXD_FAULTS", "tests", "ringmxd_faults")
    if not os.access(p, os.X_OK):
        raise Skip("no fault-injection daemon at %s" % p)
    os.environ["RINGMXD"] = p


def message(i, size):
    head = "Subject: fault %d\r\nMessage-ID: <f%d@faults.test>\r\n\r\n" % (i, i)
    return head.encode() + (b"%08d %s\r\n" % (i, b"f" * 88)) * (size // 100)


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
    use_fault_daemon()
    d = tempfile.mkdtemp(prefix="ringmx-faults-")
    spool = os.path.join(d, "spool")
    fault = os.path.join(d, "fault-dirsync")
    os.environ["RINGMX_FAULT_DIRSYNC"] = fault
    try:
        # 64 KiB segments, 30 KB messages: at most two fit in a segment, so
        # a few messages need new segment files (made, or prepared ahead, and
        # their names made durable by a directory fsync).
        args = ["-o", "sink=spool", "-o", "spool_dir=" + spool, "-o", "segment_size=64k",
                "-o", "durability=fsync"]
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
    finally:
        os.environ.pop("RINGMX_FAULT_DIRSYNC", None)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    T.main(requires=[spool_tool()])
