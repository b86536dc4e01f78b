"""dio_util - where the spool tests can put a spool that ringmxd writes with
spool_io = direct: a directory on a file system that reports a direct I/O
alignment (statx STATX_DIOALIGN) dividing 4 KiB, as ringmxd's own probe
(engine/spool/spool_direct.c) wants. /tmp is tmpfs on some machines (in
tools/fresh-check's chroot, say), which has none; the build directory is on
the disk of the tree.

Owner: the spool module. dio_tmpdir() -> a directory, or None."""

import ctypes
import os
import tempfile

_STATX_DIOALIGN = 0x2000
_AT_FDCWD = -100


def _dio_ok(d):
    """Does the file system of directory d report a usable direct I/O alignment?"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd, path = tempfile.mkstemp(dir=d)
    except OSError:
        return False
    try:
        buf = ctypes.create_string_buffer(256)  # struct statx
        if libc.statx(_AT_FDCWD, path.encode(), 0, _STATX_DIOALIGN, buf) != 0:
            return False
        raw = buf.raw
        mask = int.from_bytes(raw[0:4], "little")
        mem = int.from_bytes(raw[152:156], "little")
        off = int.from_bytes(raw[156:160], "little")
        return bool(mask & _STATX_DIOALIGN) and off and mem and 4096 % off == 0 \
            and 4096 % mem == 0
    except (AttributeError, OSError):
        return False
    finally:
        os.close(fd)
        os.unlink(path)


_cache = []


def dio_tmpdir():
    """A directory for temporary spools written with direct I/O, or None."""
    if not _cache:
        cands = [tempfile.gettempdir()]
        exe = os.environ.get("RINGMXD")
        if exe:
            cands.append(os.path.dirname(os.path.abspath(exe)))
        _cache.append(next((d for d in cands if os.path.isdir(d) and _dio_ok(d)), None))
    return _cache[0]
