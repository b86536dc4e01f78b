#!/usr/bin/env python3
"""test_relay_journal - the relay's delivery journal and segment removal go
through the ring: a worker never blocks its loop on a write, fsync or
unlink (issue 11), and the journal copes with failing writes.

With the test daemon tests/ringmxd_faults ($RINGMXD_FAULTS) and
RINGMX_FAULT_LOOP_IO set, every worker, once its loop runs, traps the
blocking file system calls (tests/fault_loop_guard.c): one made by the
loop aborts the daemon naming it. Before the journal went through the ring
the first delivery killed it (pwrite64 of the journal).

RINGMX_FAULT_JOURNAL fails every journal write while its file exists: an
operator command waiting for its record is answered with an error, the
records stay buffered and are written once the disk works again, so the
hold survives a restart.

Owner: the relay module (issue 11). Standalone: exit 0 / 1 / 77, last line
"N passed, M failed". Loopback only.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile

from ringmx_harness import Suite, check, check_eq, wait_for
from nexthop import FakeMX
from relay_util import (RelayServer, hop, message, queue_json, send_message, spool_cmd,
                        wait_queue_empty, qid_in, load_tool, use_fault_daemon)

T = Suite(__file__)
RCPTS = ("u@example.test",)
SLOW = ("retry_min=30s", "retry_max=60s", "relay_idle_timeout=1s")


@contextlib.contextmanager
def env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update(kv)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def tmpdir():
    d = tempfile.mkdtemp(prefix="ringmx-journal-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ctl(spool, *args):
    r = spool_cmd(spool, *args, timeout=20)
    return r.returncode, (r.stdout + r.stderr).strip()


@T.test("the loop makes no blocking write, fsync or unlink: 600 messages relayed across "
        "segments that are removed, with journal records and operator commands")
def _():
    use_fault_daemon()
    with tmpdir() as d, env(RINGMX_FAULT_LOOP_IO="1"), FakeMX() as mx:
        spool = os.path.join(d, "spool")
        busy = {"on": True}
        with RelayServer(spool, hop(mx), extra=("segment_size=256k",) + SLOW, fast=False,
                         workers=2, check_exit=False) as srv:
            # The guard is on in every worker thread (seccomp mode 2, filter).
            tasks = os.listdir("/proc/%d/task" % srv.proc.pid)
            filtered = [t for t in tasks
                        if "Seccomp:\t2" in open("/proc/%d/task/%s/status"
                                                   % (srv.proc.pid, t)).read()]
            check(len(filtered) >= 2, "worker threads under the guard: %d of %d"
                  % (len(filtered), len(tasks)))
            # Operator commands: their answers wait for an fdatasync of the journal
            # and an fsync of its directory, through the ring.
            mx.rcpt_reply = lambda a: (451, "4.2.0 busy") if busy["on"] else None
            a = send_message(srv, "a@sender.test", RCPTS, message("journal hold"))
            srv.wait_log(r"%s: .*status=deferred" % a)
            check_eq(ctl(spool, "hold", a), (0, "ok hold " + a), "hold")
            check_eq(queue_json(spool)[a]["state"], "held", "held")
            check_eq(ctl(spool, "release", a), (0, "ok release " + a), "release")
            busy["on"] = False
            check_eq(ctl(spool, "flush"), (0, "ok flush"), "flush")
            wait_for(lambda: any(qid_in(m.data_bytes) == a for m in mx.messages), timeout=10,
                     what="the released message delivered")
            # Volume: many journal writes, and segments (256 KiB) filled, closed and
            # removed with their journals once every message in them is delivered.
            man = os.path.join(d, "manifest")
            r = subprocess.run([load_tool(), "-q", "-c", "8", "-m", "600", "-s", "2k",
                                "--verify", man, "127.0.0.1:%d" % srv.port],
                               capture_output=True, text=True, timeout=120)
            check_eq(r.returncode, 0, "ringmx-load: %s" % r.stderr[-500:])
            mx.wait_for(601, timeout=60)
            wait_queue_empty(spool)
            st = srv.stats()
            check(st.get("relay_journal_writes", 0) > 0, "journal writes: %r" % st)
            wait_for(lambda: srv.stats().get("relay_segments_removed", 0) >= 4, timeout=10,
                     what="segments removed")
            check_eq(srv.stats().get("relay_journal_dropped", 0), 0, "journal records dropped")
            # Messages live in pooled blocks (relay_msg.c): each worker starts with
            # one slab per block size, and this backlog (at most 600 messages of
            # ~2 KiB) needs at most one more per size and worker.
            st = srv.stats()
            check(4 <= st.get("relay_msg_slabs", 0) <= 8, "message slabs: %r"
                  % st.get("relay_msg_slabs"))
            check_eq(st.get("relay_msg_large", 0), 0, "messages allocated alone")
            check(srv.alive(), "ringmxd alive (a blocking call on a loop aborts it): %s"
                  % srv.log()[-2000:])
            # The guard stays on after the loop, where closing the spool may block (it
            # runs once, at exit): so no SIGTERM here.
            srv.proc.kill()
            srv.proc.wait()
            srv.check_log()


@T.test("journal writes fail: the operator's hold is answered with an error, the record "
        "is written once the disk works again, and the hold survives a restart")
def _():
    use_fault_daemon()
    with tmpdir() as d, FakeMX() as mx:
        spool = os.path.join(d, "spool")
        fault = os.path.join(d, "fault-journal")
        mx.rcpt_reply = (451, "4.2.0 busy")
        with env(RINGMX_FAULT_JOURNAL=fault):
            with RelayServer(spool, hop(mx), extra=SLOW, fast=False, workers=1) as srv:
                a = send_message(srv, "a@sender.test", RCPTS, message("journal fault"))
                srv.wait_log(r"%s: .*status=deferred" % a)
                open(fault, "w").close()
                rc, out = ctl(spool, "hold", a)
                check(rc != 0 and "error hold %s: the journal could not be written" % a in out,
                      "hold while journal writes fail: %d %r" % (rc, out))
                srv.wait_log(r"relay: journal write .*: Input/output error; retrying")
                os.unlink(fault)
                srv.wait_log(r"relay: journal w0/[0-9a-f]+\.jnl written again")
                check_eq(srv.stats().get("relay_journal_dropped", 0), 0, "records dropped")
            # Stopped: the HOLD record (kept in memory meanwhile, and written by the
            # retry) must be in the journal now.
            check_eq(queue_json(spool)[a]["state"], "held", "held in the journal on disk")
            with RelayServer(spool, hop(mx), extra=SLOW, fast=False, workers=1) as srv:
                srv.wait_log(r"relay: 1 messages .* 1 on hold")
                check_eq(queue_json(spool)[a]["state"], "held", "held after the restart")


if __name__ == "__main__":
    T.main()
