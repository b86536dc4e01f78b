#!/usr/bin/env python3
"""test_spool - the durable spool end to end: messages sent with smtplib
come back byte-exact through ringmx-spool (Received: first), list / show /
verify / export --maildir / stats, recovery after a restart, a torn tail,
damage, spool_memory, durability=none and start-up errors.

Owner: the spool module (issue 3). Standalone: exit 0 / 1 / 77, last line
"N passed, M failed". Uses ringmx_harness (read-only)."""

import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time

from ringmx_harness import Suite, Server, Skip, check, check_eq, fail, run, wait_for, TIMEOUT
from dio_util import dio_tmpdir
from relay_util import load_tool

T = Suite(__file__)


def spool_tool():
    p = os.environ.get("RINGMX_SPOOL")
    if not p:
        here = os.path.dirname(os.path.abspath(__file__))
        p = os.path.join(os.path.dirname(os.environ.get("RINGMXD", os.path.join(
            here, "..", "..", "build-test", "ringmxd"))), "tools", "ringmx-spool")
    return os.path.abspath(p)


def tool(spool, *args, ok=True):
    r = subprocess.run([spool_tool(), "-d", spool] + list(args), capture_output=True,
                       timeout=TIMEOUT)
    if ok and r.returncode != 0:
        fail("ringmx-spool %s: exit %d: %s %s" % (" ".join(args), r.returncode,
                                                 r.stdout[-2000:], r.stderr[-2000:]))
    return r


def body(i, size=600):
    lines = ["From: s%d@sender.test" % i, "To: u@example.test",
             "Message-ID: <m%d.spooltest@sender.test>" % i, "Subject: spool %d" % i, ""]
    n = 0
    while n < size:
        ln = ".dot-leading line %d of message %d" % (n, i) if n % 3 == 0 else \
             "line %d of message %d: %s" % (n, i, "x" * (n % 70))
        lines.append(ln)
        n += len(ln) + 2
    return ("\r\n".join(lines) + "\r\n").encode()


def send(srv, msgs, mail_opts=(), rcpts=("u@example.test", "v@example.test")):
    """Send (sender, body) pairs on one connection; return queue ids."""
    ids = []
    with smtplib.SMTP(srv.host, srv.port, local_hostname="client.spool.test",
                      timeout=TIMEOUT) as s:
        s.ehlo()
        for sender, data in msgs:
            code, _ = s.mail(sender, list(mail_opts))
            check_eq(code, 250, "MAIL")
            for r in rcpts:
                check_eq(s.rcpt(r)[0], 250, "RCPT")
            code, resp = s.data(data)
            check_eq(code, 250, "end of data reply %r" % resp)
            m = re.search(rb"queued as ([0-9A-Z]{13})", resp)
            check(m is not None, "no queue id in %r" % resp)
            ids.append(m.group(1).decode())
    return ids


def check_message(spool, qid, sent):
    out = tool(spool, "cat", qid).stdout
    check(out.startswith(b"Received: from client.spool.test "), "no Received: first: %r" % out[:80])
    check(out.endswith(sent), "message %s is not byte-exact" % qid)
    hdr = out[:len(out) - len(sent)]
    check(b"id " + qid.encode() in hdr, "Received: lacks the queue id")
    # The trace header is one header field: continuation lines start with a tab.
    lines = hdr.split(b"\r\n")
    check(lines[-1] == b"" and all(ln.startswith(b"\t") for ln in lines[1:-1]),
          "unexpected bytes between Received: and the message: %r" % hdr)


class SpoolServer(Server):
    """A Server whose spool lives in a directory the test owns."""

    def __init__(self, spool, extra=(), **kw):
        # The harness defaults to sink=discard; these tests are about the spool.
        super().__init__(args=["-o", "sink=spool", "-o", "spool_dir=" + spool] + list(extra),
                         **kw)


def msg_offsets(data):
    """Offsets of the message records of a segment's bytes, stepping over the
    filler records (flag 1) that end direct writes on a 4 KiB boundary."""
    out, off = [], 0
    while off + 64 <= len(data) and data[off:off + 4] == b"RMSR":
        if not int.from_bytes(data[off + 6:off + 8], "little") & 1:
            out.append(off)
        off += int.from_bytes(data[off + 8:off + 16], "little")
    return out


def tmp_spool(direct=False):
    """A temporary directory and the spool in it; direct: on a file system
    where ringmxd can write with spool_io = direct (dio_util)."""
    base = None
    if direct:
        base = dio_tmpdir()
        if base is None:
            raise Skip("no file system with a direct I/O alignment here (/tmp, the build dir)")
    d = tempfile.mkdtemp(prefix="ringmx-spool-test-", dir=base)
    return d, os.path.join(d, "spool")


def byte_exact(mode):
    d, spool = tmp_spool(direct=mode == "direct")
    try:
        with SpoolServer(spool, extra=["-o", "spool_io=" + mode]) as srv:
            srv.wait_log(r"spool_io %s," % mode)
            msgs = [("s%d@sender.test" % i, body(i, 300 + 900 * i)) for i in range(6)]
            msgs.append(("", body(99, 3 << 20)))   # null sender, 3 MiB (many chunks)
            ids = send(srv, msgs[:3], mail_opts=("BODY=8BITMIME",))
            ids += send(srv, msgs[3:])
            check_eq(len(set(ids)), len(ids), "distinct queue ids")
            for qid, (_s, data) in zip(ids, msgs):
                check_message(spool, qid, data)     # while ringmxd runs
            lst = tool(spool, "list").stdout.decode()
            for qid in ids:
                check(qid in lst, "list lacks %s" % qid)
            check(re.search(r"%s .* <s0@sender.test> <u@example.test>,<v@example.test>"
                            % ids[0], lst), "list line: %s" % lst)
            show = tool(spool, "show", ids[0]).stdout.decode()
            for want in ("client: 127.0.0.1 port", "helo: client.spool.test",
                         "mail_from: <s0@sender.test>", "rcpt_to: <u@example.test>",
                         "rcpt_to: <v@example.test>", "body: 8BITMIME", "esmtp: yes"):
                check(want in show, "show lacks %r:\n%s" % (want, show))
            check("mail_from: <>" in tool(spool, "show", ids[-1]).stdout.decode(), "null sender")
            check(tool(spool, "show", "NOSUCHID00000", ok=False).returncode == 1, "unknown id")
            v = tool(spool, "verify").stdout.decode()
            check(v.strip().endswith(": ok"), "verify: %s" % v)
            st = tool(spool, "stats").stdout.decode()
            check("messages: %d" % len(ids) in st, "stats: %s" % st)
            stats = srv.stats()
            check(stats.get("spool_messages") == len(ids), "spool_messages: %r" % stats)
            if mode == "buffered":
                check(stats.get("spool_fsyncs", 0) >= 1, "no fsync counted")
            else:
                # Each write is durable itself (RWF_DSYNC): no fdatasync.
                check_eq(stats.get("spool_fsyncs"), 0, "fsyncs with direct writes")
                check(stats.get("spool_writes", 0) >= 2, "writes: %r" % stats)
        # After a clean stop: the same, and segments are trimmed.
        for qid, (_s, data) in zip(ids, msgs):
            check_message(spool, qid, data)
        tool(spool, "verify")
    finally:
        shutil.rmtree(d)


@T.test("spool_io=auto: direct without a relay, buffered when the relay reads the spool back")
def _():
    d, spool = tmp_spool(direct=True)
    try:
        with SpoolServer(spool) as srv:
            srv.wait_log(r"durability fsync, spool_io direct,")
        with SpoolServer(spool, extra=["-o", "relay_host=127.0.0.1:9"]) as srv:
            srv.wait_log(r"durability fsync \(segments pre-zeroed\), spool_io buffered,")
        with SpoolServer(spool, extra=["-o", "durability=none"]) as srv:
            srv.wait_log(r"durability none, spool_io buffered,")
    finally:
        shutil.rmtree(d)
    # tmpfs has no direct I/O alignment to report (statx): auto says why it
    # writes buffered; direct refuses to start with that reason.
    if not os.path.isdir("/dev/shm"):
        return
    d = tempfile.mkdtemp(prefix="ringmx-spool-shm-", dir="/dev/shm")
    spool = os.path.join(d, "spool")
    try:
        with SpoolServer(spool) as srv:
            srv.wait_log(r"spool_io buffered \(not direct: the file system of .* reports no "
                         r"direct I/O alignment\),")
        srv = SpoolServer(spool, extra=["-o", "spool_io=direct"])
        try:
            srv.start()
            fail("spool_io=direct started on tmpfs")
        except Exception as e:  # noqa: BLE001
            check("spool: spool_io = direct: the file system of" in str(e), "message: %s" % e)
        finally:
            if srv.tmpdir is not None:
                srv.tmpdir.cleanup()
    finally:
        shutil.rmtree(d)


T.test("smtplib messages come back byte-exact via cat; list, show, verify, stats")(
    lambda: byte_exact("buffered"))
# Direct: records packed across the 4 KiB blocks each write rewrites.
T.test("spool_io=direct: the same, byte-exact, no fdatasync")(lambda: byte_exact("direct"))


@T.test("export --maildir writes one file per message via tmp, and is repeatable")
def _():
    d, spool = tmp_spool()
    try:
        with SpoolServer(spool) as srv:
            msgs = [("s%d@sender.test" % i, body(i)) for i in range(5)]
            ids = send(srv, msgs)
            md = os.path.join(d, "Maildir")
            r = tool(spool, "export", "--maildir", md).stdout.decode()
            check("exported 5 messages" in r, r)
            files = sorted(os.listdir(os.path.join(md, "new")))
            check_eq(len(files), 5, "files in new/")
            check_eq(os.listdir(os.path.join(md, "tmp")), [], "tmp/ after export")
            got = {}
            for f in files:
                with open(os.path.join(md, "new", f), "rb") as fh:
                    got[f] = fh.read()
            for qid, (_s, data) in zip(ids, msgs):
                name = [f for f in files if qid in f]
                check_eq(len(name), 1, "one file for %s" % qid)
                check_eq(got[name[0]], tool(spool, "cat", qid).stdout, "exported bytes")
            r = tool(spool, "export", "--maildir", md).stdout.decode()
            check("exported 0 messages" in r and "5 already there" in r, r)
    finally:
        shutil.rmtree(d)


@T.test("restart: recovery logged, old messages kept, new ones in a new segment")
def _():
    d, spool = tmp_spool()
    try:
        with SpoolServer(spool, workers=1) as srv:
            a = send(srv, [("a@sender.test", body(1))])
        with SpoolServer(spool, workers=1) as srv:
            srv.wait_log(r"recovered 1 messages")
            b = send(srv, [("b@sender.test", body(2))])
        segs = sorted(os.listdir(os.path.join(spool, "w0")))
        check_eq(segs, ["0000000000000001.seg", "0000000000000002.seg"], "segments")
        check_message(spool, a[0], body(1))
        check_message(spool, b[0], body(2))
        # A restart with nothing sent leaves no empty segment behind.
        with SpoolServer(spool, workers=1):
            pass
        check_eq(len(os.listdir(os.path.join(spool, "w0"))), 2, "segments after idle run")
    finally:
        shutil.rmtree(d)


@T.test("torn tail: verify accepts it, ringmxd truncates it and logs the offset")
def _():
    d, spool = tmp_spool()
    try:
        with SpoolServer(spool, workers=1) as srv:
            ids = send(srv, [("a@sender.test", body(i)) for i in range(3)])
        seg = os.path.join(spool, "w0", "0000000000000001.seg")
        size = os.path.getsize(seg)
        with open(seg, "rb") as f:
            first = f.read()
        # Half of a copy of the first record appended, then zeros: a write
        # cut short by a crash in a preallocated file.
        rec_len = int.from_bytes(first[8:16], "little")
        with open(seg, "ab") as f:
            f.write(first[:rec_len // 2] + b"\0" * 8192)
        v = tool(spool, "verify")
        check(b"incomplete record at %d" % size in v.stdout, v.stdout)
        with SpoolServer(spool, workers=1) as srv:
            srv.wait_log(r"torn tail at %d truncated" % size)
        check_eq(os.path.getsize(seg), size, "size after truncation")
        check(b"incomplete" not in tool(spool, "verify").stdout, "still torn")
        for i, qid in enumerate(ids):
            check_message(spool, qid, body(i))
    finally:
        shutil.rmtree(d)


@T.test("damage in the middle: verify fails, ringmxd logs it, starts, never hands it on, reads on")
def _():
    d, spool = tmp_spool()
    try:
        with SpoolServer(spool, workers=1) as srv:
            ids = send(srv, [("a@sender.test", body(i)) for i in range(3)])
        seg = os.path.join(spool, "w0", "0000000000000001.seg")
        with open(seg, "r+b") as f:
            data = f.read()
            second = msg_offsets(data)[1]
            f.seek(second + 300)
            f.write(bytes([data[second + 300] ^ 0x55]))
        size = os.path.getsize(seg)
        v = tool(spool, "verify", ok=False)
        check(v.returncode == 1 and b"DAMAGED" in v.stdout, "verify: %r" % v.stdout)
        check(tool(spool, "cat", ids[1], ok=False).returncode == 1, "damaged record handed on")
        check_message(spool, ids[0], body(0))
        # The record after the damaged one is found again (issue 11).
        check_message(spool, ids[2], body(2))
        with SpoolServer(spool, workers=1) as srv:
            srv.wait_log(r"DAMAGED at offset %d" % second)
            send(srv, [("b@sender.test", body(7))])
        check_eq(os.path.getsize(seg), size, "a damaged segment is not truncated")
    finally:
        shutil.rmtree(d)


@T.test("spool_memory: a message past the large messages' share gets 451 4.3.0, the next "
        "one is fine")
def _():
    d, spool = tmp_spool()
    # A message larger than spool_memory can no longer be under
    # message_size_limit (the start-up check), so the share is filled by
    # two uploads at once: 1 MiB gives large messages 512 KiB.
    extra = ["-o", "spool_memory=1m", "-o", "message_size_limit=400k", "-o", "recipient_limit=10"]
    try:
        with SpoolServer(spool, extra=extra, workers=1) as srv:
            part = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300
            with srv.client() as first, srv.client() as c:
                for k in (first, c):
                    k.ehlo()
                    k.cmd("MAIL FROM:<a@sender.test>").expect(250)
                    k.cmd("RCPT TO:<u@example.test>").expect(250)
                    k.cmd("DATA").expect(354)
                first.send(part)
                # The first holds its part of the share before the second
                # starts (the sink has taken its bytes).
                wait_for(lambda: srv.stats().get("bytes_received", 0) >= len(part),
                         what="the first upload staged")
                c.send_async(part + b".\r\n")
                c.expect(451, "4.3.0")
                c.wait_sent()
                first.send(b".\r\n")
                first.expect(250)
            ids = send(srv, [("a@sender.test", body(1))])
            check_message(spool, ids[0], body(1))
            st = srv.stats()
            check(st.get("spool_memory_full", 0) >= 1, "counter")
            check_eq(st.get("spool_share_full", 0), 1, "spool_share_full")
    finally:
        shutil.rmtree(d)


@T.test("durability=none and small segments: rotation, every message kept")
def _():
    d, spool = tmp_spool()
    try:
        with SpoolServer(spool, extra=["-o", "durability=none", "-o", "segment_size=64k"],
                         workers=1) as srv:
            msgs = [("a@sender.test", body(i, 9000)) for i in range(20)]
            msgs.append(("a@sender.test", body(50, 200000)))  # larger than a segment
            ids = send(srv, msgs)
            check_eq(srv.stats().get("spool_fsyncs"), 0, "fsyncs with durability=none")
        check(len(os.listdir(os.path.join(spool, "w0"))) > 3, "no rotation")
        for qid, (_s, data) in zip(ids, msgs):
            check_message(spool, qid, data)
        tool(spool, "verify")
    finally:
        shutil.rmtree(d)


def seg_files(spool):
    w0 = os.path.join(spool, "w0")
    return sorted(f for f in os.listdir(w0) if f.endswith(".seg"))


def all_zero(path):
    with open(path, "rb") as f:
        return f.read().count(0) == os.path.getsize(path)


def send_paced(srv, msgs, pause=0.03):
    """One message per connection with a pause after each, so zero-filling
    the next segment (a few ms for 256 KiB) is done before it is needed."""
    ids = []
    for m in msgs:
        ids += send(srv, [m])
        time.sleep(pause)
    return ids


@T.test("durability=fsync: rotation onto segments zero-filled ahead, all byte-exact")
def _():
    d, spool = tmp_spool()
    try:
        # 256 KiB segments, ~20 KiB records: about 12 per segment; the next
        # segment is zero-filled from the 7th on, ~200 ms before it is needed.
        with SpoolServer(spool, extra=["-o", "segment_size=256k", "-o", "spool_io=buffered"],
                         workers=1) as srv:
            srv.wait_log(r"durability fsync \(segments pre-zeroed\)")
            msgs = [("a@sender.test", body(i, 20000)) for i in range(45)]
            ids = send_paced(srv, msgs)
            st = srv.stats()
            check(st.get("spool_segments", 0) >= 4, "no rotation: %r" % st)
            # The first segment is zero-filled at start-up, the others ahead
            # of need: none had to fall back to fallocate.
            check_eq(st.get("spool_segments_unzeroed"), 0, "segments not pre-zeroed")
            check_eq(st.get("spool_segments_prezeroed"), st.get("spool_segments"),
                     "pre-zeroed segments")
            check_eq(st.get("spool_prezero_errors"), 0, "zero-filling errors")
            used = st["spool_segments"]
            # Past the middle of the current segment, the next one is being
            # or has been zero-filled: it exists and holds only zeros.
            files = seg_files(spool)
            check(len(files) in (used, used + 1), "files %s for %d segments" % (files, used))
            if len(files) == used + 1:
                check(all_zero(os.path.join(spool, "w0", files[-1])), "prepared segment not zero")
            for qid, (_s, data) in zip(ids, msgs):
                check_message(spool, qid, data)     # while ringmxd runs
            v = tool(spool, "verify").stdout.decode()
            check("DAMAGED" not in v and "incomplete" not in v, "verify: %s" % v)
        # Stopped: the unused prepared segment is gone, every used one holds
        # records, and the messages on both sides of each rotation are intact.
        files = seg_files(spool)
        check_eq(len(files), used, "segment files after stop: %s" % files)
        for f in files:
            check(not all_zero(os.path.join(spool, "w0", f)), "empty segment %s kept" % f)
        for qid, (_s, data) in zip(ids, msgs):
            check_message(spool, qid, data)
        tool(spool, "verify")
    finally:
        shutil.rmtree(d)


@T.test("spool_io=direct: large writes get segments fallocated ahead, small ones zero-filled")
def _():
    d, spool = tmp_spool(direct=True)
    try:
        # 2 MiB segments. 300 KB records, one per write: past the middle of
        # segment 1 (zero-filled at start-up) the next one is prepared without zeros (writing them
        # would halve the disk's bandwidth for such writes). Then 2 KB
        # records: segment 3 is zero-filled ahead (small writes wait on the
        # extent conversion).
        with SpoolServer(spool, extra=["-o", "segment_size=2m", "-o", "spool_io=direct"],
                         workers=1) as srv:
            big = [("a@sender.test", body(i, 300000)) for i in range(7)]
            ids = send_paced(srv, big)
            time.sleep(0.3)
            # 500 small messages one at a time: a write each.
            r = run([load_tool(), "-c", "1", "--per-connection", "500", "-m", "500", "-s", "2k",
                     "-q", "127.0.0.1:%d" % srv.port], timeout=TIMEOUT)
            check(r.returncode == 0, "ringmx-load: %s" % r.stderr[-300:])
            time.sleep(0.3)
            st = srv.stats()
            check_eq(st.get("spool_messages"), 507, "messages")
            check(st.get("spool_segments", 0) >= 3, "segments: %r" % st)
            # Segment 1 zero-filled at start-up, 2 only fallocated, the rest
            # zero-filled.
            check_eq(st.get("spool_segments_unzeroed"), 1, "fallocated segments")
            check_eq(st.get("spool_segments_prezeroed"), st["spool_segments"] - 1,
                     "pre-zeroed segments")
            check_eq(st.get("spool_prezero_errors"), 0, "zero-filling errors")
            for qid, (_s, data) in zip(ids, big):
                check_message(spool, qid, data)
        v = tool(spool, "verify").stdout.decode()
        check("507 records" in v and v.strip().endswith(": ok"), "verify: %s" % v)
    finally:
        shutil.rmtree(d)


def prepared_renamed(mode):
    d, spool = tmp_spool(direct=mode == "direct")
    try:
        with SpoolServer(spool, extra=["-o", "segment_size=256k", "-o", "spool_io=" + mode],
                         workers=1) as srv:
            msgs = [("a@sender.test", body(i, 20000)) for i in range(8)]  # past half
            ids = send_paced(srv, msgs)
            time.sleep(0.3)  # segment 2 zero-filled and ready
            # Larger than a segment: it gets a fallocated segment of its own
            # (3), after which the prepared segment 2 must not be used under
            # its old, smaller number.
            big = [("b@sender.test", body(50, 300000)), ("c@sender.test", body(51, 20000))]
            ids += send(srv, big)
            msgs += big
            st = srv.stats()
            # Direct too: segment 1 zero-filled at start-up, and its writes
            # were small (one 20 KB record each), so segment 2 was zero-filled
            # ahead (spool_prep.c, prep_wants_zero).
            check_eq(st.get("spool_segments_unzeroed"), 1, "fallocated segments")
            check_eq(st.get("spool_segments_prezeroed"), 2, "pre-zeroed segments")
        check_eq(seg_files(spool), ["0000000000000001.seg", "0000000000000003.seg",
                                    "0000000000000004.seg"], "segments")
        for qid, (_s, data) in zip(ids, msgs):
            check_message(spool, qid, data)
        out = tool(spool, "list").stdout.decode()
        check(out.index(ids[-2]) < out.index(ids[-1]), "segments out of order:\n" + out)
        tool(spool, "verify")
    finally:
        shutil.rmtree(d)


T.test("a segment fallocated while one was prepared: the prepared one is renamed after it")(
    lambda: prepared_renamed("buffered"))
T.test("spool_io=direct: the same (small writes: segment 2 zero-filled ahead)")(
    lambda: prepared_renamed("direct"))


@T.test("crash with a segment zero-filled ahead and one cut short: both removed at start")
def _():
    d, spool = tmp_spool()
    try:
        args = ["-o", "segment_size=256k"]
        srv = SpoolServer(spool, extra=args, workers=1, check_exit=False)
        srv.start()
        try:
            msgs = [("a@sender.test", body(i, 20000)) for i in range(8)]  # past half
            ids = send_paced(srv, msgs)
            w0 = os.path.join(spool, "w0")
            prepared = os.path.join(w0, "0000000000000002.seg")
            deadline = time.monotonic() + TIMEOUT
            while not (os.path.exists(prepared) and os.path.getsize(prepared) == 256 << 10):
                check(time.monotonic() < deadline, "segment 2 never prepared: %s" % seg_files(spool))
                time.sleep(0.05)
            time.sleep(0.2)  # its zeros, fdatasync and directory fsync
            srv.proc.kill()
            srv.proc.wait()
            srv.logf.close()
            srv.stopped = True
        finally:
            if not srv.stopped:
                srv.proc.kill()
                srv.proc.wait()
            srv.tmpdir.cleanup()
        check(all_zero(prepared), "the prepared segment is not all zeros")
        # What a crash in the middle of zero-filling leaves: fallocated to
        # full size, the first part written with zeros.
        partial = os.path.join(w0, "0000000000000003.seg")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, 256 << 10)
            os.pwrite(fd, bytes(100 << 10), 0)
        finally:
            os.close(fd)
        v = tool(spool, "verify").stdout.decode()
        check("DAMAGED" not in v, "verify: %s" % v)
        with SpoolServer(spool, extra=args, workers=1) as srv:
            srv.wait_log(r"0000000000000002\.seg: no records, removed")
            srv.wait_log(r"0000000000000003\.seg: no records, removed")
            srv.wait_log(r"recovered 8 messages")
            more = [("b@sender.test", body(100 + i, 20000)) for i in range(3)]
            ids += send(srv, more)
            msgs += more
            check("DAMAGED" not in srv.log(), "recovery found damage")
        check_eq(seg_files(spool), ["0000000000000001.seg", "0000000000000004.seg"],
                 "segments after recovery")
        for qid, (_s, data) in zip(ids, msgs):
            check_message(spool, qid, data)
        tool(spool, "verify")
    finally:
        shutil.rmtree(d)


@T.test("sink=discard writes no spool; an unusable spool_dir stops start-up")
def _():
    d, spool = tmp_spool()
    try:
        with Server(args=["-o", "sink=discard", "-o", "spool_dir=" + spool]) as srv:
            send(srv, [("a@sender.test", body(1))])
        check(not os.path.exists(spool), "discard created the spool")
        blocker = os.path.join(d, "file")
        open(blocker, "w").close()
        srv = SpoolServer(os.path.join(blocker, "spool"))
        try:
            srv.start()
            fail("started with spool_dir under a regular file")
        except Exception as e:  # noqa: BLE001
            check("cannot create" in str(e) and blocker in str(e), "message: %s" % e)
        finally:
            if srv.tmpdir is not None:
                srv.tmpdir.cleanup()
    finally:
        shutil.rmtree(d)


@T.test("an envelope the record cannot hold: 452 4.5.3 at RCPT, the message stays readable")
def _():
    # recipient_limit allows 1000000 recipients of up to 256 bytes, far more
    # than a record's envelope may hold (SPOOL_ENV_MAX, 64 MiB). Recipients
    # of 255 bytes (4 more each in the envelope) under a subdomain that is
    # accepted: about 259000 fit, the next one must get 452 4.5.3 at RCPT.
    d = tempfile.mkdtemp(prefix="ringmx-envmax-")
    spool = os.path.join(d, "spool")
    dom = ".".join(["d" * 62] * 3) + ".example.test"
    args = ["-o", "sink=spool", "-o", "spool_dir=" + spool, "-o", "recipient_limit=1000000",
            "-o", "error_limit=1000000", "-o", "domains=example.test,." + "example.test",
            "-o", "durability=none"]
    env_max = 64 << 20
    try:
        with Server(args=args, workers=1) as srv:
            with srv.client() as c:
                c.ehlo()
                c.cmd("MAIL FROM:<a@sender.test>").expect(250, "2.1.0")
                n = 0
                cost = 0
                refused = None
                batch = 20000
                while refused is None and n < 400000:
                    lines = []
                    for i in range(n, n + batch):
                        local = ("r%07d" % i) + "x" * (253 - 8 - 1 - len(dom))
                        lines.append("RCPT TO:<%s@%s>\r\n" % (local, dom))
                    c.send_async("".join(lines))
                    for i in range(batch):
                        rep = c.reply()
                        if rep.code == 250:
                            cost += len(lines[i]) - len("RCPT TO:<>\r\n") + 4
                            continue
                        refused = rep
                        refused_at = n + i
                        break
                    c.wait_sent()
                    if refused is not None:
                        # the rest of this batch: refused too
                        for i in range(refused_at - n + 1, batch):
                            c.reply().expect(452, "4.5.3")
                    n += batch
                check(refused is not None, "%d recipients (%d envelope bytes) all accepted"
                      % (n, cost))
                refused.expect(452, "4.5.3")
                check(cost <= env_max, "accepted %d envelope bytes > %d" % (cost, env_max))
                check(cost > env_max - (1 << 20), "refused far too early: %d bytes" % cost)
                c.cmd("DATA").expect(354)
                c.send("Subject: many\r\n\r\nx\r\n.\r\n")
                c.expect(250, "2.0.0", "queued as")
                c.quit()
        # Read back: a valid record (before the fix its envelope was over
        # SPOOL_ENV_MAX, which readers take for damage).
        r = tool(spool, "verify")
        check("damage" not in (r.stdout + r.stderr).decode().lower(), r.stdout.decode())
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    T.main(requires=[spool_tool()])
