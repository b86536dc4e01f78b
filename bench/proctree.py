#!/usr/bin/env python3
"""bench/proctree.py - CPU time of a process tree, for bench/run (no cgroups, no pidstat).

  proctree.py snapshot PID [HARNESS_PID [AUX_PID...]]
                                    print a JSON snapshot of every process, marking PID's
                                    tree (the server), HARNESS_PID's tree (the harness
                                    and the load generator) and the AUX_PIDs' trees
                                    (processes the server needs but that are not the
                                    server: the milter of bench/milter, the nats-server
                                    nodes of bench/jetstream; counted apart, not as
                                    noise, even when the harness started them)
  proctree.py delta BEFORE AFTER    print the CPU seconds spent between two snapshots:
                                    the server's, in total and by command name; the other
                                    user-space processes' on the box (noise); kernel threads'

Each process contributes utime+stime (all its threads, io_uring io-wq workers included)
plus cutime+cstime (children it has already reaped). Children that start and exit between
the snapshots are therefore counted through their parent's cutime/cstime: for Postfix,
every smtpd/cleanup/discard that ends during a run is reaped by master and lands in
master's cutime. A child that is still a zombie at the AFTER snapshot is read from its own
/proc entry, so nothing is lost either way.

The snapshot also holds every other process's counters and /proc/stat's per-CPU counters,
so delta reports how much CPU the rest of the box used over the interval: user-space
processes outside the server's and the harness's trees ("others", what makes a run noisy
on a shared machine), kernel threads separately (jbd2 and writeback kworkers are mostly the
spool's or Postfix's own fsyncs and writeback), and each CPU's task, interrupt and steal
time.

Kernel work done in other contexts (the ext4 journal thread jbd2, writeback kworkers,
softirq time the scheduler charges to whoever was running) is not in any of these counters,
for any server.
"""
import json
import os
import sys
import time


def read_stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    lp, rp = data.index("("), data.rindex(")")
    comm = data[lp + 1:rp]
    f = data[rp + 2:].split()
    # fields after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return {"comm": comm, "ppid": int(f[1]), "self": int(f[11]) + int(f[12]),
            "children": int(f[13]) + int(f[14]), "kthread": bool(int(f[6]) & 0x00200000)}


def subtree(procs, kids, root):
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in tree:
            tree.add(pid)
            todo.extend(kids.get(pid, []))
    return tree


def snapshot(root, harness=None, aux=()):
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st:
                procs[int(name)] = st
    kids = {}
    for pid, st in procs.items():
        kids.setdefault(st["ppid"], []).append(pid)
    server = subtree(procs, kids, root)
    side = set()
    for a in aux:
        side |= subtree(procs, kids, a)
    side -= server
    # bench/jetstream's nodes are the harness's children: without taking them out here
    # their CPU would vanish into the harness's share, which is counted nowhere.
    ours = (subtree(procs, kids, harness) - side) if harness else set()
    tree = {pid: procs[pid] for pid in server}
    # Everything else, for the noise figure: user space and kernel threads.
    rest = {str(pid): {k: st[k] for k in ("self", "children", "kthread", "comm")}
            for pid, st in procs.items() if pid not in server and pid not in ours and pid not in side}
    cpus = {}
    for line in open("/proc/stat"):
        f = line.split()
        if f[0].startswith("cpu") and f[0] != "cpu":
            cpus[f[0]] = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
    return {"root": root, "hz": os.sysconf("SC_CLK_TCK"), "t": time.time(), "cpus": cpus,
            "procs": {str(k): v for k, v in tree.items()}, "rest": rest,
            "aux": {str(pid): procs[pid] for pid in side}}


def total(snap):
    return sum(p["self"] + p["children"] for p in snap["procs"].values())


def group_delta(b, a):
    """CPU ticks a set of processes used between two snapshots: the growth of self+children
    of those alive at both, all of those that appeared, minus what the ones that vanished
    had at BEFORE (their parents' children counters now hold all of it)."""
    d = 0
    for pid, p in a.items():
        prev = b.get(pid)
        d += p["self"] + p["children"] - ((prev["self"] + prev["children"]) if prev else 0)
    d -= sum(p["self"] + p["children"] for pid, p in b.items() if pid not in a)
    return d


def delta(before, after):
    hz = after["hz"]
    b, a = before["procs"], after["procs"]
    rb, ra = before.get("rest", {}), after.get("rest", {})
    user_b = {k: v for k, v in rb.items() if not v["kthread"]}
    user_a = {k: v for k, v in ra.items() if not v["kthread"]}
    kth_b = {k: v for k, v in rb.items() if v["kthread"]}
    kth_a = {k: v for k, v in ra.items() if v["kthread"]}
    others = max(0, group_delta(user_b, user_a)) / hz
    kthreads = max(0, group_delta(kth_b, kth_a)) / hz
    top = {}
    for pid, p in user_a.items():
        prev = user_b.get(pid)
        dd = p["self"] + p["children"] - ((prev["self"] + prev["children"]) if prev else 0)
        if dd > 0:
            top[p["comm"]] = top.get(p["comm"], 0) + dd / hz
    by = {}
    for pid, p in a.items():
        prev = b.get(pid)
        d = p["self"] - (prev["self"] if prev else 0)
        if d:
            by[p["comm"]] = by.get(p["comm"], 0) + d
    # Reaped children: the growth of every parent's cutime/cstime, minus what the
    # gone processes had already used at BEFORE (counted then as "self").
    reaped = sum(p["children"] - (b[pid]["children"] if pid in b else 0) for pid, p in a.items())
    reaped -= sum(p["self"] + p["children"] for pid, p in b.items() if pid not in a)
    if reaped:
        by["(exited children)"] = reaped
    cpu = (total(after) - total(before)) / hz
    aux_b, aux_a = before.get("aux", {}), after.get("aux", {})
    aux_by, aux_pid = {}, {}
    for pid, p in aux_a.items():
        prev = aux_b.get(pid)
        dd = p["self"] - (prev["self"] if prev else 0)
        if dd:
            aux_by[p["comm"]] = aux_by.get(p["comm"], 0) + dd / hz
            aux_pid[pid] = dd / hz
    # Per CPU: task time (user+nice+system), interrupt time (irq+softirq: on loopback
    # much of TCP receive runs there and is charged to no process) and steal.
    cpus = {}
    for c, v in after.get("cpus", {}).items():
        w = before["cpus"].get(c)
        if w:
            d = [x - y for x, y in zip(v, w)]
            cpus[c] = {"task_s": (d[0] + d[1] + d[2]) / hz, "irq_s": (d[5] + d[6]) / hz,
                       "steal_s": d[7] / hz, "idle_s": (d[3] + d[4]) / hz}
    return {"cpu_s": cpu, "by_comm_s": {k: v / hz for k, v in sorted(by.items(), key=lambda kv: -kv[1])},
            "processes": len(a), "wall_s": after["t"] - before["t"], "cpus": cpus,
            "others_cpu_s": others, "kthreads_cpu_s": kthreads,
            "aux_cpu_s": max(0, group_delta(aux_b, aux_a)) / hz if aux_a or aux_b else None,
            "aux_by_comm_s": aux_by, "aux_by_pid_s": aux_pid,
            "others_top_s": dict(sorted(top.items(), key=lambda kv: -kv[1])[:5])}


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "snapshot":
        pids = [int(a) for a in sys.argv[2:]]
        json.dump(snapshot(pids[0], pids[1] if len(pids) > 1 else None, pids[2:]), sys.stdout)
    elif len(sys.argv) == 4 and sys.argv[1] == "delta":
        json.dump(delta(json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))), sys.stdout)
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
