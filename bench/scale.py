#!/usr/bin/env python3
"""bench/scale.py - the measuring half of bench/scale (which builds and starts ringmxd).

  scale.py PID PORT TOTAL PER_CLIENT LOAD_CPU OUTDIR [REV]

Baseline after one warm-up connection, then one client process (idle_clients.py, pinned
to LOAD_CPU) at a time, PER_CLIENT connections each, until TOTAL are held; after each
step: ringmxd's VmRSS/RssAnon (/proc/PID/status), its open descriptors, the kernel's
TCP socket count and buffer pages (/proc/net/sockstat) and slab (/proc/meminfo).
"""
import json
import os
import platform
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def kv(path):
    out = {}
    for line in open(path):
        k, _, v = line.partition(":")
        out[k.strip()] = v.split()
    return out


def metrics(pid):
    st = kv(f"/proc/{pid}/status")
    mi = kv("/proc/meminfo")
    tcp = open("/proc/net/sockstat").read().split("TCP:")[1].split("\n")[0].split()
    tcp = dict(zip(tcp[0::2], map(int, tcp[1::2])))
    return {
        "t": time.time(),
        "vmrss_kib": int(st["VmRSS"][0]), "rssanon_kib": int(st["RssAnon"][0]),
        "rssfile_kib": int(st["RssFile"][0]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "tcp_inuse": tcp["inuse"], "tcp_mem_pages": tcp["mem"], "tcp_tw": tcp.get("tw", 0),
        "slab_kib": int(mi["Slab"][0]), "sunreclaim_kib": int(mi["SUnreclaim"][0]),
    }


def greet(port):
    end = time.time() + 10
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def main():
    pid, port, total, per, lcpu, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                        int(sys.argv[4]), sys.argv[5], sys.argv[6])
    rev = sys.argv[7] if len(sys.argv) > 7 else ""
    if not greet(port):
        sys.exit("bench/scale: ringmxd did not greet; see " + out + "/ringmxd.log")
    time.sleep(0.5)
    steps = [dict(metrics(pid), connections=0)]
    clients = []
    held = 0
    try:
        while held < total:
            n = min(per, total - held)
            p = subprocess.Popen(["taskset", "-c", lcpu, sys.executable, os.path.join(HERE, "idle_clients.py"),
                                  "127.0.0.1", str(port), str(n)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            clients.append(p)
            line = p.stdout.readline().split()
            if len(line) < 4 or line[0] != "ready":
                sys.exit("bench/scale: a client failed: %r" % line)
            if int(line[3]):
                print(f"bench/scale: {line[3]} of {n} connections failed", file=sys.stderr)
            held += int(line[1])
            time.sleep(1)  # let the server settle (every greeting sent, buffers returned)
            m = dict(metrics(pid), connections=held)
            steps.append(m)
            print(f"bench/scale: {held} idle connections, ringmxd VmRSS {m['vmrss_kib']} KiB, "
                  f"{m['fds']} fds", file=sys.stderr)
    finally:
        for p in clients:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in clients:
            p.wait(timeout=60)
    time.sleep(1)
    after = dict(metrics(pid), connections=0)

    base = steps[0]
    rows = []
    for prev, m in zip(steps, steps[1:]):
        n = m["connections"]
        rows.append({
            "connections": n,
            "server_fds": m["fds"],
            "vmrss_kib": m["vmrss_kib"],
            "rss_bytes_per_conn": (m["vmrss_kib"] - base["vmrss_kib"]) * 1024 / n,
            "rssanon_bytes_per_conn": (m["rssanon_kib"] - base["rssanon_kib"]) * 1024 / n,
            "rss_bytes_per_conn_this_step": (m["vmrss_kib"] - prev["vmrss_kib"]) * 1024 / (n - prev["connections"]),
            "tcp_mem_bytes_per_conn": (m["tcp_mem_pages"] - base["tcp_mem_pages"]) * 4096 / n,
            "slab_bytes_per_conn_both_ends": (m["slab_kib"] - base["slab_kib"]) * 1024 / n,
            "tcp_sockets": m["tcp_inuse"] - base["tcp_inuse"],
        })
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kernel": platform.release(), "rev": rev or "working tree",
            "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                               if l.startswith("model name")), "?"),
            "loadavg": open("/proc/loadavg").read().split()[:3],
            "nofile_hard": int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout)}
    json.dump({"meta": meta, "baseline": base, "steps": steps, "after_close": after, "rows": rows},
              open(os.path.join(out, "scale.json"), "w"), indent=1)

    print(f"ringmxd idle plaintext connections (1 worker), baseline VmRSS {base['vmrss_kib']} KiB "
          f"(RssAnon {base['rssanon_kib']} KiB)")
    print(f"{'connections':>11} {'srv fds':>8} {'VmRSS KiB':>10} {'RSS B/conn':>11} {'anon B/conn':>12}"
          f" {'step B/conn':>12} {'sock buf B/conn':>15} {'slab B/conn (both ends)':>24}")
    for r in rows:
        print(f"{r['connections']:>11} {r['server_fds']:>8} {r['vmrss_kib']:>10} {r['rss_bytes_per_conn']:>11.0f}"
              f" {r['rssanon_bytes_per_conn']:>12.0f} {r['rss_bytes_per_conn_this_step']:>12.0f}"
              f" {r['tcp_mem_bytes_per_conn']:>15.0f} {r['slab_bytes_per_conn_both_ends']:>24.0f}")
    print(f"after the clients closed: VmRSS {after['vmrss_kib']} KiB, {after['fds']} fds")
    last = rows[-1] if rows else None
    if last:
        ok = last["rss_bytes_per_conn"] < 4096
        print(f"target {'MET' if ok else 'MISSED'} < 4 KiB resident per idle plaintext connection: "
              f"{last['rss_bytes_per_conn']:.0f} B at {last['connections']} connections")
    print(f"results in {out}/scale.json")


if __name__ == "__main__":
    main()
