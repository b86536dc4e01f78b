#!/usr/bin/python3
"""natsjwt.py OUTDIR - mint what a nats-server in operator mode needs and a
user .creds file for it: an operator, one account with JetStream enabled,
one user (NATS JWT v2, Ed25519 nkeys), for test_jetstream's jetstream_creds
check. Debian ships no nsc; this follows the formats nsc writes (nkeys:
base32 of prefix, key and CRC-16/XMODEM; JWT: header.claims signed with
the issuer's nkey, alg ed25519-nkey). Needs python3-cryptography (run with
/usr/bin/python3).

Writes OUTDIR/server.conf.inc (operator, resolver MEMORY, resolver_preload)
and OUTDIR/user.creds."""

import base64
import hashlib
import json
import os
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

PREFIX_SEED = 18 << 3
PREFIX = {"operator": 14 << 3, "account": 0, "user": 20 << 3}


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def b32(raw):
    return base64.b32encode(raw).decode().rstrip("=")


def with_crc(raw):
    return raw + crc16(raw).to_bytes(2, "little")


class Key:
    def __init__(self, kind):
        self.kind = kind
        self.priv = Ed25519PrivateKey.generate()
        seed = self.priv.private_bytes(serialization.Encoding.Raw,
                                       serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())
        pub = self.priv.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
        p = PREFIX[kind]
        self.public = b32(with_crc(bytes([p]) + pub))
        self.seed = b32(with_crc(bytes([PREFIX_SEED | (p >> 5), (p & 31) << 3]) + seed))


def b64url(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def jwt(issuer, subject, name, nats):
    claims = {"iat": int(time.time()), "iss": issuer.public, "name": name,
              "sub": subject.public, "nats": nats}
    jti = hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims = dict(jti=b32(jti), **claims)
    head = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = issuer.priv.sign(("%s.%s" % (head, body)).encode())
    return "%s.%s.%s" % (head, body, b64url(sig))


def main():
    out = sys.argv[1]
    op, acc, user, sys_acc = Key("operator"), Key("account"), Key("user"), Key("account")
    op_jwt = jwt(op, op, "ringmx-test", {"type": "operator", "version": 2})
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                 "wildcards": True, "conn": -1, "leaf": -1, "mem_storage": -1,
                 "disk_storage": -1, "streams": -1, "consumer": -1}
    acc_jwt = jwt(op, acc, "MAIL", {"limits": unlimited,
                                    "default_permissions": {"pub": {}, "sub": {}},
                                    "type": "account", "version": 2})
    # JetStream needs a system account to start in operator mode.
    sys_jwt = jwt(op, sys_acc, "SYS", {"limits": {"subs": -1, "data": -1, "payload": -1,
                                                   "imports": -1, "exports": -1,
                                                   "wildcards": True, "conn": -1, "leaf": -1},
                                        "default_permissions": {"pub": {}, "sub": {}},
                                        "type": "account", "version": 2})
    user_jwt = jwt(acc, user, "ringmxd", {"pub": {}, "sub": {}, "subs": -1, "data": -1,
                                          "payload": -1, "type": "user", "version": 2})
    with open(os.path.join(out, "server.conf.inc"), "w") as f:
        f.write("operator: %s\nsystem_account: %s\nresolver: MEMORY\n"
                "resolver_preload: { %s: %s, %s: %s }\n"
                % (op_jwt, sys_acc.public, acc.public, acc_jwt, sys_acc.public, sys_jwt))
    with open(os.path.join(out, "user.creds"), "w") as f:
        f.write("-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
                "************************* IMPORTANT *************************\n"
                "NKEY Seed printed below can be used to sign and prove identity.\n"
                "NKEYs are sensitive and should be treated as secrets.\n\n"
                "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n\n"
                "*************************************************************\n"
                % (user_jwt, user.seed))
    os.chmod(os.path.join(out, "user.creds"), 0o600)


if __name__ == "__main__":
    main()
