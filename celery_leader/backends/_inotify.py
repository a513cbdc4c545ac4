"""Linux inotify through ctypes: sleep until a file in a directory changes, without polling.

A standby on ``file://`` waits for the lease file to be replaced (the backend writes a temp
file and renames it over the lease file). Polling ``stat`` for that costs a wake-up every
few milliseconds; inotify costs nothing until something happens in the directory. Only the
standard library is used (ctypes and select); where inotify is missing (not Linux, a libc
without it, the per-user instance limit reached) :func:`available` is false and the caller
polls as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import sys
import threading

__all__ = ["DirWatch", "available"]

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000

#: what can change a lease or fence file in the watched directory
MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
#: after these the watch can no longer be trusted: the caller re-reads
_LOST = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

_libc: ctypes.CDLL | None = None
_libc_guard = threading.Lock()
_unavailable_logged = False


def _load() -> ctypes.CDLL | None:
    global _libc
    with _libc_guard:
        if _libc is None and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                libc.inotify_init1.argtypes = [ctypes.c_int]
                libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
                _libc = libc
            except (OSError, AttributeError):
                _libc = None
        return _libc


def available() -> bool:
    return _load() is not None


class DirWatch:
    """An inotify instance watching one directory for changes to a few file names."""

    def __init__(self, directory: str | os.PathLike[str], names: set[str]) -> None:
        libc = _load()
        if libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(directory), MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch({directory}) failed")
        self.fd: int | None = fd
        self.names = {os.fsencode(n) for n in names}

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` s; True if one of the names changed, or the watch was lost
        (then the caller must re-read); False on timeout or changes to other files only."""
        assert self.fd is not None
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000) + 1)):
            return False
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        offset, hit = 0, False
        while offset + _HEADER.size <= len(data):
            _, mask, _, length = _HEADER.unpack_from(data, offset)
            name = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0")
            offset += _HEADER.size + length
            if mask & _LOST or name in self.names:
                hit = True
        return hit

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch_or_none(directory: str | os.PathLike[str], names: set[str]) -> DirWatch | None:
    """A :class:`DirWatch`, or ``None`` (logged once) where inotify cannot be used."""
    global _unavailable_logged
    if not available():
        return None
    try:
        return DirWatch(directory, names)
    except OSError as exc:
        if not _unavailable_logged:
            _unavailable_logged = True
            log.info("inotify unavailable (%s); file:// standbys poll the lease file instead", exc)
        return None
