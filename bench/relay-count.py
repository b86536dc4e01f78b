#!/usr/bin/env python3
"""bench/relay-count.py - how many messages smtp-sink has received, from its -c output.

  relay-count.py read FILE                  print the count now (0 before the first)
  relay-count.py poll FILE TARGET_FILE MAX [SINK_PID]
                                            every 10 ms, print "TIME COUNT" whenever the
                                            count changes; exit 0 once TARGET_FILE exists
                                            and the count reached the number in it; exit 1
                                            after MAX seconds, when the count has not moved
                                            for 60 s once the target is known, or when
                                            SINK_PID has exited

smtp-sink -c writes "sess=N quit=N mesg=N\\r" to stdout each time a session ends, QUIT
arrives or a "." is received; bench/relay sends that to FILE. Only complete records (ended
by \\r) are read, from the last 64 bytes: a poll costs one small pread whatever the count.
"""
import os
import re
import sys
import time

RX = re.compile(rb"mesg=(\d+)\r")
STALL = 60.0


def count(path):
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 64))
            tail = f.read()
    except FileNotFoundError:
        return 0
    m = RX.findall(tail)
    return int(m[-1]) if m else 0


def alive(pid):
    """Running (not gone, not a zombie waiting for bench/relay to reap it)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def poll(path, target_file, max_s, sink_pid=None):
    end = time.time() + max_s
    last, last_change = None, time.time()
    target = None
    while True:
        now = time.time()
        n = count(path)
        if n != last:
            print("%.4f %d" % (now, n), flush=True)
            last, last_change = n, now
        if target is None and os.path.exists(target_file):
            try:
                target = int(open(target_file).read())
            except ValueError:
                pass
        if target is not None and n >= target:
            return 0
        gone = sink_pid is not None and not alive(sink_pid)
        if gone or now > end or (target is not None and now - last_change > STALL):
            print("%.4f %d" % (now, n), flush=True)
            sys.stderr.write("relay-count: %d of %s delivered, giving up\n" % (n, target))
            return 1
        time.sleep(0.01)


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "read":
        print(count(a[1]))
        return 0
    if len(a) in (4, 5) and a[0] == "poll":
        return poll(a[1], a[2], float(a[3]), int(a[4]) if len(a) == 5 else None)
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
