#!/usr/bin/env python3
"""test_spool_enospc - disk full: on a small tmpfs the spool answers 452 4.3.1
(or 451), ringmxd keeps serving everything else, and mail is accepted again
once space comes back. Needs mount(2) (root / CAP_SYS_ADMIN); exit 77 where
mounting is not permitted.

Owner: the spool module (issue 3). Standalone: exit 0 / 1 / 77, last line
"N passed, M failed"."""

import os
import re
import shutil
import subprocess
import tempfile
import time

from ringmx_harness import Suite, Server, Skip, check, check_eq, fail, TIMEOUT

T = Suite(__file__)
TMPFS_SIZE = "8m"


def spool_tool():
    p = os.environ.get("RINGMX_SPOOL")
    if not p:
        p = os.path.join(os.path.dirname(os.environ.get("RINGMXD", "build-test/ringmxd")),
                         "tools", "ringmx-spool")
    return os.path.abspath(p)


def message(i, size):
    head = "Subject: fill %d\r\nMessage-ID: <f%d@enospc.test>\r\n\r\n" % (i, i)
    return head.encode() + (b"%08d %s\r\n" % (i, b"f" * 88)) * (size // 100)


def send_one(c, data):
    """MAIL/RCPT/DATA on an open client; returns the final reply (or the
    refusal at MAIL)."""
    r = c.cmd("MAIL FROM:<a@sender.test>")
    if r.code != 250:
        return r
    c.cmd("RCPT TO:<u@example.test>").expect(250)
    c.cmd("DATA").expect(354)
    c.send(data + b".\r\n")
    return c.reply()


@T.test("tmpfs full: 452 4.3.1, still serving, accepted again when space returns")
def _():
    d = tempfile.mkdtemp(prefix="ringmx-enospc-")
    mnt = os.path.join(d, "mnt")
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + TMPFS_SIZE, "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(d)
        raise Skip("cannot mount a tmpfs here: %s" % (r.stderr.strip() or r.returncode))
    try:
        # Space we can give back later.
        eater = os.path.join(mnt, "eater")
        with open(eater, "wb") as f:
            f.write(b"\1" * (2 << 20))
        spool = os.path.join(mnt, "spool")
        args = ["-o", "sink=spool", "-o", "spool_dir=" + spool, "-o", "segment_size=256k"]
        with Server(args=args, workers=1) as srv:
            refused = None
            with srv.client() as c:
                c.ehlo()
                for i in range(400):
                    rep = send_one(c, message(i, 60000))
                    if rep.code == 250:
                        continue
                    refused = rep
                    break
                check(refused is not None, "the 8 MiB tmpfs never filled up")
                # Segments are preallocated, so the disk fills when the next
                # segment cannot be created: 452 4.3.1, at MAIL or at the end.
                refused.expect(452, "4.3.1")
                # Still serving: the session and the engine are fine.
                c.cmd("RSET").expect(250)
                c.cmd("NOOP").expect(250)
                c.cmd("MAIL FROM:<a@sender.test>")  # may be 452 while full
                c.cmd("RSET").expect(250)
            with srv.client() as c2:
                c2.ehlo()
                c2.cmd("MAIL FROM:<a@sender.test>")
                c2.cmd("RSET").expect(250)
                c2.cmd("NOOP").expect(250)
                c2.quit()
            stats = srv.stats()
            check(stats.get("spool_enospc", 0) >= 1, "spool_enospc: %r" % stats)
            # Give space back; after the retry pause mail flows again.
            os.unlink(eater)
            time.sleep(0.3)
            with srv.client() as c:
                c.ehlo()
                data = message(9999, 20000)
                ok = None
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline:
                    rep = send_one(c, data)
                    if rep.code == 250:
                        ok = rep
                        break
                    c.cmd("RSET")
                    time.sleep(0.2)
                check(ok is not None, "mail not accepted after space came back")
                qid = re.search(r"queued as (\w+)", ok.text).group(1)
                c.cmd("RCPT TO:<x@elsewhere.test>")  # out of sequence: 503
                c.cmd("MAIL FROM:<a@sender.test>").expect(250)
                c.cmd("RCPT TO:<x@elsewhere.test>").expect(550, "5.7.1")
                c.quit()
            out = subprocess.run([spool_tool(), "-d", spool, "cat", qid], capture_output=True,
                                 timeout=TIMEOUT).stdout
            check(out.startswith(b"Received: ") and out.endswith(data), "message not byte-exact")
            check(subprocess.run([spool_tool(), "-d", spool, "verify"], capture_output=True,
                                 timeout=TIMEOUT).returncode == 0, "verify")
            check("452" in srv.log() or "cannot create segment" in srv.log(),
                  "disk full not logged")
            # Zero-filling the next segment ahead of need hit the full disk
            # first: not fatal, counted, logged once (not once per attempt).
            stats = srv.stats()
            check(stats.get("spool_prezero_errors", 0) >= 1, "spool_prezero_errors: %r" % stats)
            check_eq(len(re.findall(r"zero-filling segment .* failed", srv.log())), 1,
                     "zero-filling failures logged")
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    T.main(requires=[spool_tool()])
