#!/usr/bin/python3
"""seccomp_exec - run a command under a Docker/Podman (OCI) seccomp profile, the way runc
applies it, so a test can see what ringmxd does inside such a container without a
container runtime.

    /usr/bin/python3 seccomp_exec.py [--user NAME [--bind-cap]] PROFILE.json COMMAND [ARG...]

--user NAME switches to that account first (no supplementary groups), as systemd's User= does
before it loads a unit's filter; --bind-cap keeps CAP_NET_BIND_SERVICE through the switch as
the only capability, bounding set included, and raises it as ambient, as
AmbientCapabilities= and CapabilityBoundingSet= do, so the command can bind a port below 1024.

Needs Debian's python3-seccomp (libseccomp's bindings), so it runs under /usr/bin/python3;
without the module, or where seccomp cannot be loaded, it exits 77 (skip).

How the JSON becomes a filter (runc's libcontainer/seccomp, which Docker and Podman use):
  - defaultAction (with defaultErrnoRet) for every call no rule names;
  - a rule applies only if the native architecture is in includes.arches (when given) and not
    in excludes.arches, and if every capability of includes.caps and none of excludes.caps is
    in CAPS: the container's capabilities, none here (`--cap-drop=ALL`), which only decides
    the caps-gated rules and nothing io_uring needs;
  - a name this libseccomp does not know is skipped, as runc skips it;
  - args on different indices are one rule (ANDed); when an index repeats, each condition is
    a rule of its own (runc's fallback; libseccomp refuses two conditions on one index);
  - a rule whose action equals the default is left out (libseccomp refuses it, runc skips it).
Only the native architecture is filtered: the subArchitectures of archMap (x86, x32 on
x86_64) get libseccomp's bad-architecture action instead of the profile's rules, which a
native ringmxd never reaches.
"""

import ctypes
import errno
import json
import os
import platform
import pwd
import sys

SKIP = 77
CAPS = frozenset()

# OCI (Go) architecture names of the machines ringmx runs on.
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}

OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
       "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")


def applies(rule, arch, caps=CAPS):
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if arch in (exc.get("arches") or ()):
        return False
    if not set(inc.get("caps") or ()) <= caps:
        return False
    if set(exc.get("caps") or ()) & caps:
        return False
    return True


def action(sc, name, errno_ret):
    if name == "SCMP_ACT_ALLOW":
        return sc.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return sc.ERRNO(errno.EPERM if errno_ret is None else errno_ret)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return sc.KILL
    if name == "SCMP_ACT_KILL_PROCESS":
        return sc.KILL_PROCESS
    if name == "SCMP_ACT_TRAP":
        return sc.TRAP
    if name == "SCMP_ACT_LOG":
        return sc.LOG
    raise ValueError("unsupported seccomp action %s" % name)


def arg_sets(sc, args):
    """The argument conditions of one JSON rule as a list of libseccomp rules."""
    conds = []
    for a in args or ():
        if a["op"] not in OPS:
            raise ValueError("unsupported seccomp op %s" % a["op"])
        op = getattr(sc, a["op"][len("SCMP_CMP_"):])
        conds.append(sc.Arg(a["index"], op, a["value"], a.get("valueTwo", 0)))
    indices = [a["index"] for a in args or ()]
    if len(set(indices)) == len(indices):
        return [conds]
    return [[c] for c in conds]


def build(sc, profile, caps=CAPS):
    """A libseccomp SyscallFilter for profile (a parsed JSON dict), and how many rules
    were added (a profile reduced to nothing by a bug here would otherwise pass)."""
    arch = GO_ARCH.get(platform.machine())
    if arch is None:
        raise ValueError("no OCI name for architecture %s" % platform.machine())
    default = action(sc, profile["defaultAction"], profile.get("defaultErrnoRet"))
    f = sc.SyscallFilter(defaction=default)
    added = 0
    for rule in profile.get("syscalls") or ():
        if not applies(rule, arch, caps):
            continue
        act = action(sc, rule["action"], rule.get("errnoRet"))
        if act == default:
            continue
        for name in rule.get("names") or ():
            if sc.resolve_syscall(sc.Arch.NATIVE, name) == -1:
                continue
            for conds in arg_sets(sc, rule.get("args")):
                f.add_rule(act, name, *conds)
                added += 1
    return f, added


PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 8, 24, 47, 2
CAP_NET_BIND_SERVICE = 10
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _libc_call(name, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (name, os.strerror(e)))


def become(user, bind_cap):
    """Switch to user; with bind_cap keep CAP_NET_BIND_SERVICE alone, ambient."""
    pw = pwd.getpwnam(user)
    if bind_cap:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            if cap != CAP_NET_BIND_SERVICE:
                _libc_call("prctl", PR_CAPBSET_DROP, cap, 0, 0, 0)
        _libc_call("prctl", PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if bind_cap:
        header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
        bit = 1 << CAP_NET_BIND_SERVICE
        # {effective, permitted, inheritable} for capabilities 0-31, then 32-63.
        data = (ctypes.c_uint32 * 6)(bit, bit, bit, 0, 0, 0)
        _libc_call("capset", header, data)
        _libc_call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)


# python3-seccomp is a Debian package: only Debian's interpreter has it.
SYSTEM_PYTHON = "/usr/bin/python3"


def confined_server(profile, wrapper_args=(), **kw):
    """A ringmx_harness.Server whose ringmxd is started through this script: the filter is
    loaded here, then ringmxd is exec'd, so the process the harness signals and waits for is
    the filtered daemon itself. wrapper_args: --user NAME, --bind-cap."""
    from ringmx_harness import Server

    class Confined(Server):
        def _spawn(self, cmd):
            super()._spawn([SYSTEM_PYTHON, os.path.abspath(__file__)] + list(wrapper_args) +
                           [profile] + cmd)
    return Confined(**kw)


def seccomp_mode(pid):
    """Seccomp: of /proc/PID/status (0 none, 2 filter)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return None


def main(argv):
    user, bind_cap = None, False
    argv = list(argv)
    while len(argv) > 1 and argv[1] in ("--user", "--bind-cap"):
        if argv[1] == "--user" and len(argv) > 2:
            user = argv[2]
            del argv[1:3]
        elif argv[1] == "--bind-cap":
            bind_cap = True
            del argv[1]
        else:
            break
    if len(argv) < 3 or (bind_cap and user is None):
        print("usage: seccomp_exec.py [--user NAME [--bind-cap]] PROFILE.json COMMAND [ARG...]",
              file=sys.stderr)
        return 2
    try:
        import seccomp as sc
    except ImportError:
        print("seccomp_exec: python3-seccomp is not installed", file=sys.stderr)
        return SKIP
    with open(argv[1]) as fh:
        profile = json.load(fh)
    f, added = build(sc, profile)
    if added == 0:
        print("seccomp_exec: %s gave no rules" % argv[1], file=sys.stderr)
        return 2
    if user is not None:
        become(user, bind_cap)
    try:
        f.load()
    except (OSError, RuntimeError) as e:
        print("seccomp_exec: cannot load the filter: %s" % e, file=sys.stderr)
        return SKIP
    os.execvp(argv[2], argv[2:])
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
