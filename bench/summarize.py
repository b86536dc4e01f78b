#!/usr/bin/env python3
"""bench/summarize.py RESULTS_DIR [--markdown]

Reads runs.jsonl, parser.jsonl and meta.json written by bench/run, writes summary.json
(median and min-max per cell, ratios to smtp-sink and to Postfix, the issue-4 target
checks) and prints the tables; --markdown prints them as Markdown for docs/benchmarks.md.
"""
import json
import os
import statistics
import sys

TARGETS = [
    # (what, server, baseline, workload, metric, minimum ratio)
    ("ringmxd sink=discard >= 3x smtp-sink msgs/s, 1 KiB pipelined",
     "ringmxd-discard", "smtp-sink", "1k-persist", 3.0),
    ("ringmxd durable spool (fsync) >= 10x Postfix smtpd+queue msgs/s, 1 KiB pipelined",
     "ringmxd-spool-fsync", "postfix", "1k-persist", 10.0),
]


def stat(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def load(path):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]


def main():
    out = sys.argv[1]
    md = "--markdown" in sys.argv[2:]
    runs = load(os.path.join(out, "runs.jsonl"))
    parser = load(os.path.join(out, "parser.jsonl"))
    meta = json.load(open(os.path.join(out, "meta.json"))) if os.path.exists(
        os.path.join(out, "meta.json")) else {}

    cells, order = {}, []
    for r in runs:
        if "workload" in r and "msgs_per_s" in r:
            key = (r["server"], r["workload"])
            if key not in cells:
                order.append(key)
            cells.setdefault(key, []).append(r)
    summary = []
    for key in order:
        rs = cells[key]
        server, wl = key
        summary.append({
            "server": server, "workload": wl, "runs": len(rs),
            "all_ok": all(r["rc"] == 0 and r["accepted"] == r["messages"] and r["accepted"] > 0 for r in rs),
            "msgs_per_s": stat([r["msgs_per_s"] for r in rs]),
            "server_cpu_s_per_1000": stat([r["server_cpu_s_per_1000"] for r in rs]),
            "load_cpu_us_per_msg": stat([r["load_cpu_us_per_msg"] for r in rs]),
            "p99_us": stat([r["p99_us"] for r in rs]),
            "loadavg_1m": stat([r.get("loadavg_1m_before") for r in rs]),
            # CPUs that other user-space processes on the box used during the runs
            "others_cpu": stat([r.get("others_cpu") for r in rs]),
            "kthreads_cpu_s_per_1000": stat([r["kthreads_cpu_s"] * 1000 / r["accepted"]
                                             if r.get("accepted") and "kthreads_cpu_s" in r else None
                                             for r in rs]),
        })
    by = {(s["server"], s["workload"]): s for s in summary}

    def ratio(s, base, metric):
        b = by.get((base, s["workload"]))
        if not b or not s[metric] or not b[metric] or not b[metric]["median"]:
            return None
        return s[metric]["median"] / b[metric]["median"]

    for s in summary:
        s["ratio_msgs_per_s_vs_sink"] = ratio(s, "smtp-sink", "msgs_per_s")
        s["ratio_cpu_vs_sink"] = ratio(s, "smtp-sink", "server_cpu_s_per_1000")
        s["ratio_msgs_per_s_vs_postfix"] = ratio(s, "postfix", "msgs_per_s")
        s["ratio_cpu_vs_postfix"] = ratio(s, "postfix", "server_cpu_s_per_1000")

    targets = []
    for what, server, base, wl, need in TARGETS:
        s, b = by.get((server, wl)), by.get((base, wl))
        if not s or not b or not s["msgs_per_s"] or not b["msgs_per_s"]:
            targets.append({"target": what, "status": "not measured"})
            continue
        r = s["msgs_per_s"]["median"] / b["msgs_per_s"]["median"]
        # Server CPU per message ratio: what msgs/s would be with both servers saturating
        # their core, and much less sensitive to other jobs than msgs/s.
        cr = None
        if s["server_cpu_s_per_1000"] and b["server_cpu_s_per_1000"] and s["server_cpu_s_per_1000"]["median"]:
            cr = b["server_cpu_s_per_1000"]["median"] / s["server_cpu_s_per_1000"]["median"]
        noisy = any(c["others_cpu"] and c["others_cpu"]["max"] > 0.15 for c in (s, b))
        targets.append({"target": what, "ratio": r, "cpu_ratio": cr, "need": need,
                        "server_msgs_per_s": s["msgs_per_s"]["median"],
                        "baseline_msgs_per_s": b["msgs_per_s"]["median"], "noisy": noisy,
                        "status": ("met" if r >= need else "missed") + (" (noisy: check)" if noisy else "")})

    pcells = {}
    for p in parser:
        pcells.setdefault((p["size"], p["chunk"]), []).append(p)
    psum = [{"size": k[0], "chunk": k[1], "runs": len(v),
             "mb_per_s": stat([p["mb_per_s"] for p in v]),
             "msgs_per_s": stat([p["msgs_per_s"] for p in v]),
             "ns_per_msg": stat([p["ns_per_msg"] for p in v])} for k, v in pcells.items()]

    json.dump({"meta": meta, "cells": summary, "parser": psum, "targets": targets, "runs": runs},
              open(os.path.join(out, "summary.json"), "w"), indent=1)

    def f(st, fmt):
        if not st:
            return "-"
        return f"{fmt.format(st['median'])} [{fmt.format(st['min'])}-{fmt.format(st['max'])}]"

    def noise(s):
        # the worst run of the cell: % of a CPU that other processes used
        a = s["others_cpu"]
        return "-" if not a else f"{100 * a['max']:.0f}"

    def x(v, cpu=False):
        return "-" if v is None else f"{v:.2f}x"

    if md:
        print("| server | workload | msgs/s median [min–max] | server CPU s / 1000 msgs | "
              "vs smtp-sink msgs/s | vs smtp-sink CPU | vs Postfix msgs/s | load µs/msg | p99 ms | others % | ok |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    else:
        print(f"{'server':20} {'workload':12} {'msgs/s median [min-max]':26} {'srv CPU s/1000 [min-max]':26}"
              f" {'/sink':>7} {'cpu/sink':>8} {'/postfix':>8} {'load us/msg':>11} {'p99 ms':>8} {'others%':>7} ok")
    for s in summary:
        lc = f"{s['load_cpu_us_per_msg']['median']:.1f}" if s["load_cpu_us_per_msg"] else "-"
        p99 = f"{s['p99_us']['median'] / 1000:.2f}" if s["p99_us"] else "-"
        cols = [s["server"], s["workload"], f(s["msgs_per_s"], "{:,.0f}"),
                f(s["server_cpu_s_per_1000"], "{:.3f}"), x(s["ratio_msgs_per_s_vs_sink"]),
                x(s["ratio_cpu_vs_sink"]), x(s["ratio_msgs_per_s_vs_postfix"]), lc, p99, noise(s),
                "yes" if s["all_ok"] else "NO"]
        if md:
            print("| " + " | ".join(cols) + " |")
        else:
            print(f"{cols[0]:20} {cols[1]:12} {cols[2]:26} {cols[3]:26} {cols[4]:>7} {cols[5]:>8}"
                  f" {cols[6]:>8} {cols[7]:>11} {cols[8]:>8} {cols[9]:>7} {cols[10]}")
    if psum:
        print()
        if md:
            print("| parser input | chunk | MB/s median [min–max] | messages/s | ns/message |")
            print("|---|---:|---:|---:|---:|")
        else:
            print(f"{'parser: message size':22} {'chunk':>6} {'MB/s median [min-max]':26} {'msgs/s':>10} {'ns/msg':>8}")
        for p in psum:
            cols = [f"{p['size']} B messages", str(p["chunk"]), f(p["mb_per_s"], "{:,.0f}"),
                    f"{p['msgs_per_s']['median']:,.0f}", f"{p['ns_per_msg']['median']:,.0f}"]
            if md:
                print("| " + " | ".join(cols) + " |")
            else:
                print(f"{cols[0]:22} {cols[1]:>6} {cols[2]:26} {cols[3]:>10} {cols[4]:>8}")
    print()
    for t in targets:
        if "ratio" in t:
            cpu = f", {t['cpu_ratio']:.2f}x less server CPU per message" if t.get("cpu_ratio") else ""
            print(f"target {t['status'].upper()} {t['target']}: {t['ratio']:.2f}x "
                  f"({t['server_msgs_per_s']:,.0f} vs {t['baseline_msgs_per_s']:,.0f} msgs/s{cpu})")
        else:
            print(f"target ------ {t['target']}: not measured")


if __name__ == "__main__":
    main()
