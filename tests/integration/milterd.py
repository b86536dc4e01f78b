#!/usr/bin/python3
"""milterd - a scripted milter for the integration tests (tests/integration/test_milter.py),
on python3-milter (Debian's binding of Sendmail's libmilter: the real protocol, version 6).
Run with Debian's /usr/bin/python3 (the module is not on other interpreters).

Every callback appends one JSON line to --log: the stage, its arguments and the macros the
MTA sent, so a test can check what ringmxd showed the milter.

  milterd.py --port N --log FILE [--act STAGE=ACTION ...] [changes at end of message ...]

STAGE: connect helo mail rcpt data header eoh body eom
ACTION: continue accept reject tempfail discard skip | reply:CODE:ENH:TEXT[|TEXT...] |
        sleep:SECONDS (then continue) | exit (the process dies inside the callback)
--rcpt-reject ADDR   reject that recipient only (550 5.1.1 from the milter's own reply)
End-of-message changes: --add-header 'Name: value', --ins-header 'IDX:Name: value',
--chg-header 'Name:IDX:value' (empty value deletes), --repl-body TEXT (\\n for line ends),
--chg-from ADDR, --add-rcpt ADDR, --del-rcpt ADDR, --quarantine REASON, --progress N
(N progress calls, 1 s apart).

--raw MODE skips libmilter and speaks bytes by hand, for the failures libmilter never
makes: garbage (answers the option negotiation with junk), silent (never answers),
bad-optneg (asks for protocol steps ringmxd did not offer).
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time

MACROS = ["j", "{daemon_name}", "v", "_", "{client_addr}", "{client_name}", "{client_port}",
          "{tls_version}", "{cipher}", "i", "{mail_addr}", "{rcpt_addr}"]


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--act", action="append", default=[])
    ap.add_argument("--rcpt-reject", action="append", default=[])
    ap.add_argument("--add-header", action="append", default=[])
    ap.add_argument("--ins-header", action="append", default=[])
    ap.add_argument("--chg-header", action="append", default=[])
    ap.add_argument("--repl-body")
    ap.add_argument("--chg-from")
    ap.add_argument("--add-rcpt", action="append", default=[])
    ap.add_argument("--del-rcpt", action="append", default=[])
    ap.add_argument("--quarantine")
    ap.add_argument("--progress", type=int, default=0)
    ap.add_argument("--raw")
    return ap.parse_args()


ARGS = parse()
LOCK = threading.Lock()


def log(ev, **kw):
    kw["ev"] = ev
    kw["t"] = round(time.time(), 4)
    with LOCK, open(ARGS.log, "a") as f:
        f.write(json.dumps(kw) + "\n")


def raw_main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", ARGS.port))
    srv.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=raw_conn, args=(c,), daemon=True).start()


def raw_conn(c):
    data = b""
    while len(data) < 5:
        d = c.recv(4096)
        if not d:
            return
        data += d
    log("raw", first=data[4:5].decode("latin-1"))
    if ARGS.raw == "garbage":
        c.sendall(b"\x00\x00\x00\x02Zjunk and more junk\r\n")
    elif ARGS.raw == "bad-optneg":
        # version 6, every action, and RCPT_REJ (0x800), which ringmxd never offers
        c.sendall(struct.pack(">IcIII", 13, b"O", 6, 0x1ff, 0x800))
    # silent: nothing
    try:
        while c.recv(4096):
            pass
    except OSError:
        pass


if ARGS.raw:
    raw_main()
    sys.exit(0)

import Milter  # noqa: E402  (only for the libmilter modes)

ACTS = {}
for a in ARGS.act:
    st, _, act = a.partition("=")
    ACTS[st] = act

RESULT = {"continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
          "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD, "skip": Milter.SKIP}


class Scripted(Milter.Base):
    def __init__(self):
        self.body_len = 0

    def macros(self):
        out = {}
        for m in MACROS:
            v = self.getsymval(m)
            if v is not None:
                out[m] = v
        return out

    def act(self, stage):
        a = ACTS.get(stage, "continue")
        if a.startswith("sleep:"):
            time.sleep(float(a[6:]))
            return Milter.CONTINUE
        if a == "exit":
            os._exit(3)
        if a.startswith("reply:"):
            _, code, enh, text = a.split(":", 3)
            lines = text.split("|")
            self.setreply(code, enh, *lines)
            return Milter.REJECT if code[0] == "5" else Milter.TEMPFAIL
        return RESULT[a]

    def connect(self, hostname, family, hostaddr):
        log("connect", host=hostname, addr=list(hostaddr) if hostaddr else None,
            macros=self.macros())
        return self.act("connect")

    def hello(self, hostname):
        log("helo", name=hostname, macros=self.macros())
        return self.act("helo")

    def envfrom(self, f, *s):
        log("mail", addr=f, params=list(s), macros=self.macros())
        return self.act("mail")

    def envrcpt(self, to, *s):
        log("rcpt", addr=to, macros=self.macros())
        if to.strip("<>") in ARGS.rcpt_reject:
            self.setreply("550", "5.1.1", "milter: no such user here")
            return Milter.REJECT
        return self.act("rcpt")

    def data(self):
        log("data", macros=self.macros())
        return self.act("data")

    def header(self, name, value):
        log("header", name=name, value=value)
        return self.act("header")

    def eoh(self):
        log("eoh")
        return self.act("eoh")

    def body(self, blk):
        self.body_len += len(blk)
        log("body", len=len(blk), text=blk.decode("latin-1")[:200])
        return self.act("body")

    def eom(self):
        log("eom", body_len=self.body_len, macros=self.macros())
        for _ in range(ARGS.progress):
            time.sleep(1)
            self.progress()
        for h in ARGS.add_header:
            n, _, v = h.partition(":")
            self.addheader(n, v.strip())
        for h in ARGS.ins_header:
            idx, _, rest = h.partition(":")
            n, _, v = rest.partition(":")
            self.addheader(n, v.strip(), int(idx))
        for h in ARGS.chg_header:
            n, idx, v = h.split(":", 2)
            self.chgheader(n, int(idx), v)
        if ARGS.repl_body is not None:
            self.replacebody(ARGS.repl_body.replace("\\n", "\r\n").encode())
        if ARGS.chg_from:
            self.chgfrom(ARGS.chg_from)
        for r in ARGS.add_rcpt:
            self.addrcpt(r)
        for r in ARGS.del_rcpt:
            self.delrcpt(r)
        if ARGS.quarantine:
            self.quarantine(ARGS.quarantine)
        return self.act("eom")

    def abort(self):
        log("abort")
        return Milter.CONTINUE

    def close(self):
        log("close")
        return Milter.CONTINUE


def main():
    Milter.factory = Scripted
    print("ready", flush=True)
    Milter.runmilter("ringmx-test", "inet:%d@127.0.0.1" % ARGS.port, timeout=60)


if __name__ == "__main__":
    main()
