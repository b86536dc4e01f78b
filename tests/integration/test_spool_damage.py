#!/usr/bin/env python3
"""test_spool_damage - a spool segment damaged in the middle (issue 11): every
intact record after the damage is found again and delivered, the damaged bytes
are set aside under SPOOL_DIR/damaged/ and named by `ringmx-spool verify`, and
the segment is never deleted while some of its bytes are not finished records.
A segment cut short under the relay's mapping (SIGBUS on access, as a bad
sector would give) is an error for that record: ringmxd survives, also when
the page goes bad after the relay checked it and the client core is the one
that reads it (DATA's dot-stuffing; tests/ringmxd_faults, RINGMX_FAULT_BODY_CUT).

Owner: the spool module (issue 11). Standalone: exit 0 / 1 / 77, last line
"N passed, M failed"."""

import os
import re
import shutil
import tempfile

from ringmx_harness import Suite, Server, check, check_eq
from nexthop import FakeMX
from relay_util import (RelayServer, hop, send_message, message, qid_in, spool_cmd, spool_tool,
                        use_fault_daemon)

T = Suite(__file__)
N = 6


def records(seg):
    """(offset, length) of each message record of a clean segment file
    (filler records, flag 1, that end direct writes are stepped over)."""
    with open(seg, "rb") as f:
        data = f.read()
    out, off = [], 0
    while off + 64 <= len(data) and data[off:off + 4] == b"RMSR":
        n = int.from_bytes(data[off + 8:off + 16], "little")
        if not int.from_bytes(data[off + 6:off + 8], "little") & 1:
            out.append((off, n))
        off += n
    return data, out


def spool_some(spool, n):
    """n messages into one segment, without a next hop; their queue ids."""
    with Server(args=["-o", "sink=spool", "-o", "spool_dir=" + spool,
                      "-o", "segment_size=1m"], workers=1) as srv:
        return [send_message(srv, "a@sender.test", ["u%d@example.test" % i],
                             message("damage %d" % i, ["line %d" % i] * 40))
                for i in range(n)]


def survived_cut(srv, mx):
    """After a cut body: ringmxd alive, nothing accepted from the cut body, and
    still relaying (a new message goes through)."""
    check(srv.alive(), "ringmxd died:\n" + srv.log()[-3000:])
    check_eq(len(mx.messages), 0, "a message was accepted from a cut body")
    qid2 = send_message(srv, "a@sender.test", ["v@example.test"], message("after", ["fine"]))
    got = mx.wait_for(1)
    check_eq([qid_in(m.data_bytes) for m in got], [qid2], "delivered")
    check(srv.alive(), "ringmxd died")


@T.test("a damaged record in the middle: all others delivered, bytes set aside, segment kept")
def _():
    d = tempfile.mkdtemp(prefix="ringmx-damage-")
    spool = os.path.join(d, "spool")
    try:
        ids = spool_some(spool, N)
        seg = os.path.join(spool, "w0", "0000000000000001.seg")
        data, recs = records(seg)
        check_eq(len(recs), N, "records in the segment")
        # Record 1: its header garbled (rec_len), so the scan must search
        # forward for the next record. Record 3: one byte of its message
        # flipped (the header holds, the CRC fails).
        bad = {1, 3}
        o1 = recs[1][0]
        o3 = recs[3][0] + recs[3][1] - 40
        with open(seg, "r+b") as f:
            f.seek(o1 + 8)
            f.write(b"\xa5" * 8)
            f.seek(o3)
            f.write(bytes([data[o3] ^ 0x55]))
        size = os.path.getsize(seg)
        v = spool_cmd(spool, "verify")
        check_eq(v.returncode, 1, "verify exit status on damage")
        for i in bad:
            off, n = recs[i]
            check(re.search(r"DAMAGED .*0000000000000001\.seg: bytes %d\.\.%d " % (off, off + n),
                            v.stdout), "verify does not name record %d's bytes:\n%s"
                  % (i, v.stdout))
        with FakeMX() as mx, RelayServer(spool, hop(mx), workers=1) as srv:
            got = mx.wait_for(N - len(bad))
            want = sorted(ids[i] for i in range(N) if i not in bad)
            for qid in want:
                srv.wait_log(r"%s: removed" % qid)
            check_eq(sorted(qid_in(m.data_bytes) for m in got), want, "delivered")
            check(re.search(r"DAMAGED at offset %d" % recs[1][0], srv.log()),
                  "damage not logged")
            # Every intact record is finished: the segment stays anyway.
            check(os.path.exists(seg), "the damaged segment was deleted")
            check_eq(os.path.getsize(seg), size, "the damaged segment was changed")
        check_eq(len(mx.messages), N - len(bad), "deliveries")
        # The bytes are set aside, and verify names the copies.
        v = spool_cmd(spool, "verify")
        check_eq(v.returncode, 1, "verify exit status on damage")
        for i in bad:
            off, n = recs[i]
            copy = os.path.join(spool, "damaged", "w0-%016x-%016x.bin" % (1, off))
            check(os.path.exists(copy), "no copy %s" % copy)
            with open(copy, "rb") as f:
                with open(seg, "rb") as s:
                    s.seek(off)
                    check(f.read() == s.read(n), "the copy of record %d differs" % i)
            check("their copy: " + copy in v.stdout, "verify does not name %s:\n%s"
                  % (copy, v.stdout))
        # A restart delivers nothing again and still keeps the segment.
        with FakeMX() as mx2, RelayServer(spool, hop(mx2), workers=1) as srv:
            srv.wait_log(r"segment is kept")
        check_eq(len(mx2.messages), 0, "deliveries after the second restart")
        check(os.path.exists(seg), "the damaged segment was deleted at the second start")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@T.test("a segment cut short under the relay's mapping: SIGBUS caught, record unreadable, alive")
def _():
    d = tempfile.mkdtemp(prefix="ringmx-sigbus-")
    spool = os.path.join(d, "spool")
    try:
        body = ["%05d " % i + "z" * 90 for i in range(600)]   # ~60 KB: many pages
        with Server(args=["-o", "sink=spool", "-o", "spool_dir=" + spool,
                          "-o", "segment_size=1m"], workers=1) as srv:
            qid = send_message(srv, "a@sender.test", ["u@example.test"],
                               message("sigbus", body))
        seg = os.path.join(spool, "w0", "0000000000000001.seg")
        with FakeMX(chunking=True) as mx:
            mx.refuse()
            with RelayServer(spool, hop(mx), workers=1) as srv:
                # Recovered and mapped; the first attempt fails (refused).
                srv.wait_log(r"%s: to=<u@example.test>.*status=deferred" % qid)
                # Cut the file under the mapping: the envelope (first page)
                # was copied at load, the body pages now raise SIGBUS.
                os.truncate(seg, 4096)
                since = srv.since()
                mx.accept_again()
                srv.wait_log(r"%s: message UNREADABLE" % qid, since=since, timeout=15)
                survived_cut(srv, mx)
    finally:
        shutil.rmtree(d, ignore_errors=True)



@T.test("a body page goes bad after the relay checked it, and the client core reads it "
        "(DATA): SIGBUS caught there too, deferred, alive")
def _():
    use_fault_daemon()
    d = tempfile.mkdtemp(prefix="ringmx-sigbus-core-")
    spool = os.path.join(d, "spool")
    cut = os.path.join(d, "cut")
    os.environ["RINGMX_FAULT_BODY_CUT"] = cut
    try:
        body = ["%05d " % i + "y" * 90 for i in range(600)]   # ~60 KB, no line with '.'
        with Server(args=["-o", "sink=spool", "-o", "spool_dir=" + spool,
                          "-o", "segment_size=1m"], workers=1) as srv:
            qid = send_message(srv, "a@sender.test", ["u@example.test"],
                               message("sigbus core", body))
        # No CHUNKING: DATA, where the core reads the body to stuff dots. The cut
        # comes right after the relay's own check of every page (the hook), so the
        # first to read the body is the core.
        with FakeMX(chunking=False) as mx:
            open(cut, "w").close()
            with RelayServer(spool, hop(mx), workers=1) as srv:
                srv.wait_log(r"%s: message UNREADABLE" % qid, timeout=15)
                srv.wait_log(r"%s: to=<u@example.test>.*status=deferred .*unreadable" % qid)
                os.unlink(cut)
                survived_cut(srv, mx)
    finally:
        os.environ.pop("RINGMX_FAULT_BODY_CUT", None)
        shutil.rmtree(d, ignore_errors=True)

if __name__ == "__main__":
    T.main(requires=[spool_tool()])
