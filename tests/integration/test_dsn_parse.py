#!/usr/bin/env python3
"""tests/integration/test_dsn_parse.py - bounces (engine/relay/dsn.c) read back by
a parser we did not write: Python's email package (policy.default).

Ownership: the relay module. Runs tests/dsn_dump ($RINGMX_DSN_DUMP, else
build-d/tests/dsn_dump in the source tree), which builds the report for a
message file with a fixed envelope (sender sender@example.org, recipients
rcpt1@example.net and rcpt2@example.net or, with --utf8, δοκιμή@example.net)
and the diagnostic texts given on its command line. No ringmxd involved.

What it pins: the report is a multipart/report; report-type=delivery-status
with three parts of the right types (the RFC 6533 global types with
SMTPUTF8); the per-message and per-recipient delivery-status fields parse
and hold what was given (a multi-line remote reply unfolds into one
Diagnostic-Code); the original's header section is quoted and its body is
not; a reply trying to add a Bcc: or a MIME part, and an original whose
headers hold the report's own boundary, change nothing in the structure;
CRLF only, no line over 998 bytes.

Output: one line per check ("ok NAME" / "FAIL NAME: why"), then
"N passed, M failed"; exit 0, 1, or 77 when dsn_dump is missing.
"""
import email
import os
import re
import subprocess
import sys
import tempfile
from email import policy

from ringmx_harness import Suite, check, check_eq, fail

HERE = os.path.dirname(os.path.abspath(__file__))
DUMP = os.environ.get("RINGMX_DSN_DUMP") or os.path.join(HERE, "..", "..", "build-d", "tests",
                                                        "dsn_dump")
TMP = tempfile.TemporaryDirectory(prefix="test_dsn_parse.")

ORIGINAL = (b"Received: from client.test (client.test [192.0.2.7])\r\n"
            b"\tby mx.ringmx.test with ESMTP id 1K1AR1NF0VG00\r\n"
            b"From: Sender <sender@example.org>\r\n"
            b"To: rcpt1@example.net, rcpt2@example.net\r\n"
            b"Subject: quarterly figures\r\n"
            b"Message-ID: <orig.42@example.org>\r\n"
            b"\r\n"
            b"The body: never quoted in the bounce.\r\n")

REPLY = ("550-5.1.1 <rcpt1@example.net>: Recipient address rejected:\\r\\n"
         "550 5.1.1 User unknown in virtual mailbox table")

T = Suite(__file__)


def dump(original=ORIGINAL, diag1=REPLY, diag2="", utf8=False):
    """Run dsn_dump on original; return (raw bytes, parsed message)."""
    path = os.path.join(TMP.name, "original.eml")
    with open(path, "wb") as f:
        f.write(original)
    args = [DUMP] + (["--utf8"] if utf8 else []) + [path, diag1, diag2]
    r = subprocess.run(args, capture_output=True, timeout=30)
    if r.returncode != 0:
        fail("dsn_dump exited %d: %s" % (r.returncode, r.stderr.decode(errors="replace")))
    return r.stdout, email.message_from_bytes(r.stdout, policy=policy.default)


def check_lines(raw):
    check(re.search(rb"\r(?!\n)", raw) is None, "a bare CR in the report")
    check(re.search(rb"(?<!\r)\n", raw) is None, "a bare LF in the report")
    check(raw.endswith(b"\r\n"), "the report does not end in CRLF")
    longest = max(len(line) for line in raw.split(b"\r\n"))
    check(longest <= 998, "a line of %d bytes" % longest)


def parts(msg, utf8=False):
    """The three parts, after checking the report's envelope of types."""
    check(msg.is_multipart(), "not multipart")
    check_eq(msg.get_content_type(), "multipart/report", "content type")
    check_eq(msg.get_param("report-type"), "delivery-status", "report-type")
    p = msg.get_payload()
    check_eq(len(p), 3, "number of parts")
    want = (["text/plain", "message/global-delivery-status", "message/global-headers"] if utf8
            else ["text/plain", "message/delivery-status", "text/rfc822-headers"])
    check_eq([x.get_content_type() for x in p], want, "part types")
    check(not msg.defects, "defects: %r" % msg.defects)
    return p


def status_blocks(part):
    """message/delivery-status: the email package gives one Message per
    field group (per-message first, then one per recipient)."""
    blocks = part.get_payload()
    check(isinstance(blocks, list) and len(blocks) >= 2, "delivery-status blocks: %r" % blocks)
    return blocks[0], blocks[1:]


def global_status_blocks(part):
    """message/global-delivery-status is an opaque message/* type to the
    email package: parse its field groups ourselves, each group with the
    email parser."""
    body = part.as_bytes(policy=policy.default.clone(linesep="\r\n"))
    body = body.split(b"\r\n\r\n", 1)[1]  # the part's own MIME headers
    groups = [g for g in body.split(b"\r\n\r\n") if g.strip()]
    msgs = [email.message_from_bytes(g + b"\r\n", policy=policy.default) for g in groups]
    return msgs[0], msgs[1:]


@T.test("multipart/report with three parts of the right types, CRLF, <= 998")
def _():
    raw, msg = dump()
    check_lines(raw)
    parts(msg)


@T.test("report headers: From, To, Subject, Date, Message-ID, Auto-Submitted")
def _():
    _, msg = dump()
    check_eq(msg["From"].addresses[0].addr_spec, "MAILER-DAEMON@mx.ringmx.test", "From")
    check_eq(msg["From"].addresses[0].display_name, "Mail Delivery System", "display name")
    check_eq(msg["To"].addresses[0].addr_spec, "sender@example.org", "To")
    check_eq(str(msg["Subject"]), "Undelivered Mail Returned to Sender", "Subject")
    d = msg["Date"].datetime
    check_eq((d.year, d.month, d.day, d.hour, d.minute, d.second), (2026, 11, 28, 12, 53, 5),
             "Date")
    check_eq(d.utcoffset().total_seconds(), 0, "Date offset")
    check_eq(str(msg["Message-ID"]), "<1K1AR1NF0VG00.1795870385@mx.ringmx.test>", "Message-ID")
    check_eq(str(msg["Auto-Submitted"]), "auto-replied", "Auto-Submitted")
    check_eq(str(msg["MIME-Version"]), "1.0", "MIME-Version")


@T.test("delivery-status: per-message and per-recipient fields")
def _():
    _, msg = dump(diag2="552 5.2.2 mailbox full")
    per_msg, rcpts = status_blocks(parts(msg)[1])
    check_eq(str(per_msg["Reporting-MTA"]), "dns; mx.ringmx.test", "Reporting-MTA")
    check_eq(str(per_msg["X-Ringmx-Queue-ID"]), "1K1AR1NF0VG00", "queue id")
    check_eq(str(per_msg["Arrival-Date"]), "Sat, 28 Nov 2026 11:53:05 +0000", "Arrival-Date")
    check_eq(len(rcpts), 2, "recipient groups")
    r1, r2 = rcpts
    check_eq(str(r1["Final-Recipient"]), "rfc822; rcpt1@example.net", "Final-Recipient 1")
    check_eq(str(r1["Action"]), "failed", "Action")
    check_eq(str(r1["Status"]), "5.1.1", "Status 1")
    check_eq(str(r1["Remote-MTA"]), "dns; mx.example.net", "Remote-MTA")
    check_eq(str(r1["Diagnostic-Code"]),
             "smtp; 550-5.1.1 <rcpt1@example.net>: Recipient address rejected: "
             "550 5.1.1 User unknown in virtual mailbox table", "Diagnostic-Code (unfolded)")
    check_eq(str(r1["Last-Attempt-Date"]), "Sat, 28 Nov 2026 12:52:05 +0000", "Last-Attempt")
    check_eq(str(r2["Final-Recipient"]), "rfc822; rcpt2@example.net", "Final-Recipient 2")
    check_eq(str(r2["Status"]), "5.2.2", "Status 2")
    check_eq(str(r2["Diagnostic-Code"]), "smtp; 552 5.2.2 mailbox full", "Diagnostic-Code 2")


@T.test("text part names the recipients and the replies")
def _():
    _, msg = dump()
    text = parts(msg)[0].get_content()
    check("mx.ringmx.test" in text, "no reporting host in the text")
    check("<rcpt1@example.net>: host mx.example.net said:" in text, "no rcpt1 paragraph")
    check("User unknown in virtual mailbox table" in text, "no reply text")
    check("<rcpt2@example.net>: delivery failed, status 5.2.2" in text, "no rcpt2 paragraph")


@T.test("the original's header section is quoted, its body is not")
def _():
    raw, msg = dump()
    quoted = parts(msg)[2].get_content()
    hdrs = email.message_from_string(quoted, policy=policy.default)
    check_eq(str(hdrs["Subject"]), "quarterly figures", "quoted Subject")
    check_eq(str(hdrs["Message-ID"]), "<orig.42@example.org>", "quoted Message-ID")
    check("by mx.ringmx.test with ESMTP" in str(hdrs["Received"]), "quoted Received")
    check(b"never quoted" not in raw, "the body was quoted")


@T.test("no header/body separator: the whole original is quoted")
def _():
    original = b"Subject: no body\r\nX-Last: here\r\n"
    _, msg = dump(original=original)
    quoted = parts(msg)[2].get_content()
    check("Subject: no body" in quoted and "X-Last: here" in quoted, "quoted: %r" % quoted)


@T.test("a reply cannot add a header field or a MIME part")
def _():
    evil = ("550 no\\r\\nBcc: victim@example.org\\r\\n\\r\\n--x\\r\\n"
            "Content-Type: text/html\\r\\n\\r\\n<b>hi</b>")
    raw, msg = dump(diag1=evil, diag2=evil)
    check_lines(raw)
    check(msg["Bcc"] is None, "Bcc: in the report's headers")
    p = parts(msg)
    per_msg, rcpts = status_blocks(p[1])
    for r in rcpts:
        check(r["Bcc"] is None and r["Content-Type"] is None, "a field was added")
        check(str(r["Diagnostic-Code"]).startswith("smtp; 550 no Bcc: victim@example.org --x"),
              "Diagnostic-Code: %s" % r["Diagnostic-Code"])


@T.test("the report's boundary inside the original's headers")
def _():
    _, first = dump()
    b = first.get_boundary()
    original = (b"Subject: tricky\r\n--" + b.encode() + b"\r\nContent-Type: text/html\r\n--" +
                b.encode() + b"--\r\n\r\nbody\r\n")
    raw, msg = dump(original=original)
    check_lines(raw)
    check(msg.get_boundary() != b, "the boundary was reused")
    quoted = parts(msg)[2].get_content()
    check(("--" + b + "--") in quoted, "the original's lines were not quoted")


@T.test("a huge multi-line reply: folded, cut, lines <= 998")
def _():
    huge = "\\r\\n".join("550-5.7.1 part %d %s" % (i, "x" * 1500) for i in range(20))
    raw, msg = dump(diag1=huge, diag2="y" * 5000)
    check_lines(raw)
    _, rcpts = status_blocks(parts(msg)[1])
    d = str(rcpts[0]["Diagnostic-Code"])
    check(d.startswith("smtp; 550-5.7.1 part 0 xxx"), "Diagnostic-Code: %s" % d[:80])
    check(len(d) <= 600, "Diagnostic-Code not cut: %d" % len(d))


@T.test("SMTPUTF8: utf-8 address type, global types, 8bit")
def _():
    raw, msg = dump(diag2="550 5.1.1 χρήστης άγνωστος", utf8=True)
    check_lines(raw)
    p = parts(msg, utf8=True)
    check_eq(str(msg["Content-Transfer-Encoding"]), "8bit", "top-level CTE")
    per_msg, rcpts = global_status_blocks(p[1])
    check_eq(str(per_msg["Reporting-MTA"]), "dns; mx.ringmx.test", "Reporting-MTA")
    check_eq(str(rcpts[0]["Final-Recipient"]), "rfc822; rcpt1@example.net", "ASCII recipient")
    check_eq(str(rcpts[1]["Final-Recipient"]), "utf-8; δοκιμή@example.net", "UTF-8 recipient")
    check_eq(str(rcpts[1]["Diagnostic-Code"]), "smtp; 550 5.1.1 χρήστης άγνωστος", "UTF-8 reply")
    check("δοκιμή@example.net" in p[0].get_content(), "UTF-8 recipient in the text part")
    quoted = p[2].get_payload()
    quoted = quoted[0] if isinstance(quoted, list) else quoted
    check_eq(str(quoted["Subject"]), "quarterly figures", "quoted Subject (global-headers)")


if __name__ == "__main__":
    if not (os.path.isfile(DUMP) and os.access(DUMP, os.X_OK)):
        print("skip %s: %s not built (set RINGMX_DSN_DUMP)" % (T.name, DUMP))
        print("0 passed, 0 failed")
        sys.exit(77)
    T.main(needs_ringmxd=False)
