"""``file:///abs/dir``: the embedded default backend, for candidates on one host.

One lease file per election, ``DIR/NAME.lease.json``, holding the Go seed's JSON plus a
private random nonce. Compare-and-swap across processes is a ``fcntl.flock`` on a separate
``DIR/NAME.lock`` that is never replaced (locking the lease file itself would not work: it
is replaced on every write, and a lock on a replaced inode excludes nobody). Writes go to a
temporary file in DIR, are fsynced, renamed over the lease file and the directory is
fsynced, so a crash mid-write leaves either the old record or the new one, never a torn one.

``NAME.lock`` also keeps the fence: the highest fencing token ever written
(``{"leaderTransitions": N}``), raised under the exclusive flock before the lease file is
written. It survives a deleted or garbled lease file: a vanished lease file reads as held by
an unknown holder with the fence's token (version ``absent:N``), so candidates wait one
lease and then take it with a higher token, while the old holder's next renewal fails its
compare-and-swap and ends its term first; a token below the fence is never written.

The version is the SHA-256 of the file's bytes. Every write carries a fresh 128-bit nonce,
so no two writes share a version, even after the file was deleted and created again (no
ABA), and bytes that are not ours (garbage, a hand edit) still get a version to
compare-and-swap against.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

from ..lock import Backend, BackendUnavailable, Capabilities, ConfigurationError, Conflict, Lock, Versioned
from ..record import MAX_RECORD_BYTES, LeaderRecord, decode_or_placeholder, encode_record
from ..registry import default_state_dir
from ..urls import UrlOptions, redact
from . import _inotify

__all__ = ["FileBackend", "FileLock", "NONCE_KEY", "VANISHED_HOLDER", "validate_name"]

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True)

#: backend-private key holding the per-write nonce; stripped on read, never in ``extra``
NONCE_KEY = "celeryLeaderFileNonce"
#: the holder a vanished lease file reads as (its lease is waited out, then taken above the fence)
VANISHED_HOLDER = "(lease file vanished)"
#: version prefix of a vanished lease file: ``absent:<fence>``
ABSENT = "absent:"
#: the fence in NAME.lock is one short JSON line
_FENCE_MAX = 256
LEASE_SUFFIX = ".lease.json"
LOCK_SUFFIX = ".lock"
TMP_SUFFIX = ".tmp"
#: how often ``wait_for_change`` looks at the lease file's inode, mtime and size
POLL_INTERVAL = 0.02
#: a full read every so often, in case an inode number was reused within one mtime tick
FULL_READ_INTERVAL = 0.5

_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_NAME = 200
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_warned_dirs: set[tuple[str, int, int]] = set()
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "ceph", "glusterfs", "afs"}


def validate_name(name: str) -> str:
    """Election names become file names: only ``[A-Za-z0-9._-]``, no leading dot."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > _MAX_NAME:
        raise ConfigurationError(
            f"election name {name!r} cannot be used by the file:// backend: use 1-{_MAX_NAME} characters "
            "from A-Z a-z 0-9 . _ - (no '/', no spaces, not starting with '.'), e.g. 'celery-beat'"
        )
    return name


def _version_of(raw: bytes) -> str:
    if isinstance(raw, _Oversized):  # only its start was read: its inode, mtime and size too
        return hashlib.sha256(bytes(raw) + raw.stamp.encode()).hexdigest()[:32]
    return hashlib.sha256(raw).hexdigest()[:32]


def _filesystem_type(path: Path) -> str | None:
    """The mount type holding ``path`` (from /proc/self/mounts), or None when unknown."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, fstype = "", None
    target = str(path.resolve())
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, fstype = mount, fields[2]
    return fstype


def inspect_directory(directory: Path) -> None:
    """Raise :class:`ConfigurationError` naming the fix unless ``directory`` is a directory
    that only trusted users can write to. Creates nothing (``status`` works on a read-only one).

    Refused: a directory every user may write to without the sticky bit (anyone could
    delete or replace the lock files). Warned about: world-writable with the sticky bit
    (others can still create ``NAME.lock`` first and so block the election), and a directory
    owned by another user who is not root (that user can replace the files).
    """
    try:
        st = directory.stat()
    except FileNotFoundError:
        raise ConfigurationError(
            f"lock directory {directory} does not exist; create it (mkdir -p {directory}) "
            "or point the file:// URL at an existing directory"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"lock directory {directory} cannot be used: {exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        kind = "a regular file" if stat.S_ISREG(st.st_mode) else f"not a directory (mode {oct(st.st_mode)})"
        raise ConfigurationError(
            f"{directory} is {kind}; the file:// URL must name a directory, e.g. file:///var/lib/celery-leader"
        )
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise ConfigurationError(
            f"lock directory {directory} is writable by every user and has no sticky bit: anyone could delete or "
            f"replace the lock files and take leadership; use a directory of its own (mkdir -m 700), "
            f"or chmod o-w {directory} (or chmod +t {directory})"
        )
    key = (str(directory), st.st_mode, st.st_uid)
    if key in _warned_dirs:
        return
    if st.st_mode & stat.S_IWOTH:
        _warned_dirs.add(key)
        log.warning(
            "lock directory %s is writable by every user (sticky bit set): another user can create the lock "
            "files first and block the election; use a directory only the candidates' user can write "
            "(e.g. mkdir -m 700 /var/lib/celery-leader)",
            directory,
        )
    elif hasattr(os, "geteuid") and st.st_uid not in (0, os.geteuid()):
        _warned_dirs.add(key)
        log.warning(
            "lock directory %s is owned by another user (uid %d), who can replace the lock files; use a "
            "directory owned by this user or root",
            directory,
            st.st_uid,
        )


def check_directory(directory: Path) -> None:
    """:func:`inspect_directory`, and writable: for candidates (start-up check), not for ``status``.

    Writability is probed by creating and removing a file, because permission bits say
    nothing for root, and a read-only mount or an immutable directory only shows on write.
    """
    inspect_directory(directory)
    probe = directory / f".celery-leader-probe-{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigurationError(
            f"lock directory {directory} is not writable ({exc.strerror or exc}); make it writable for this "
            "user (chown/chmod, remount read-write, chattr -i) or choose another directory in the file:// URL"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _open_regular(path: Path, flags: int, mode: int = 0o664) -> int:
    """``os.open`` that never follows a symlink and accepts only a regular file.

    ``O_NONBLOCK`` makes opening a planted FIFO return at once instead of hanging; the
    ``fstat`` then refuses it. Raises ``FileNotFoundError`` as ``os.open`` does, and
    :class:`_NotRegular` for anything that is not a regular file (symlink, FIFO, device).
    """
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | _NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _NotRegular(f"{path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _NotRegular(f"{path} is not a regular file (mode {oct(st.st_mode)})")
    return fd


class _NotRegular(OSError):
    """A lock or lease path that is a symlink, a FIFO or a device: planted, never used."""


class _Oversized(bytes):
    """The first bytes of a lease file larger than any record; ``stamp`` identifies all of it."""

    stamp: str

    def __new__(cls, start: bytes, *, stamp: str) -> "_Oversized":
        obj = super().__new__(cls, start)
        obj.stamp = stamp
        return obj


class FileLock(Lock):
    """One lease file guarded by a flock on its sibling ``.lock`` file. Thread- and fork-safe."""

    capabilities = CAPABILITIES

    def __init__(self, directory: Path, name: str, *, poll_interval: float = POLL_INTERVAL) -> None:
        if fcntl is None:  # pragma: no cover
            raise ConfigurationError("the file:// backend needs POSIX fcntl.flock (Linux, macOS, BSD)")
        self.name = validate_name(name)
        self.directory = directory
        self.lease_path = directory / (name + LEASE_SUFFIX)
        self.lock_path = directory / (name + LOCK_SUFFIX)
        self.poll_interval = poll_interval
        self._inotify: bool | None = None  # decided on the first wait
        # flock belongs to an open file description: two threads sharing our fd would both
        # "hold" it, so threads of this process serialise on a mutex first.
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._closed = False
        self._swept = False
        #: whether ``_fd`` was opened for writing (a reader of a read-only directory opens it read-only)
        self._writable = False
        for path in (self.lock_path, self.lease_path):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ConfigurationError(f"cannot use {path}: {exc.strerror or exc}") from None
            if not stat.S_ISREG(st.st_mode) and path == self.lock_path:
                raise ConfigurationError(
                    f"{path} is not a regular file (mode {oct(st.st_mode)}: a symlink, FIFO or device, planted or "
                    "left by mistake); remove it, and keep the lock directory writable only by the candidates' user"
                )

    # --- the flock ---

    def _open_fd(self, create: bool = True) -> int | None:
        """Open ``NAME.lock`` (never through a symlink, only a regular file).

        ``create=False`` (readers): no file is created; ``None`` when there is none yet, and
        a read-only descriptor where the directory or the file is read-only (flock works on it).
        """
        if self._fd is not None and (self._writable or not create):
            return self._fd
        if self._fd is not None:  # read-only so far, and now a write needs it
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        try:
            fd = _open_regular(self.lock_path, os.O_RDWR | (os.O_CREAT if create else 0))
            writable = True
        except FileNotFoundError:
            if create:
                raise
            return None
        except _NotRegular:
            raise
        except OSError as exc:
            if create or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            fd = _open_regular(self.lock_path, os.O_RDONLY)
            writable = False
        self._fd, self._writable = fd, writable
        return fd

    def _after_fork(self) -> None:
        """A forked child shares the parent's open file description: use its own."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._mutex = threading.Lock()
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)  # closes only the child's descriptor; the parent keeps its lock
            self._fd = None

    @contextlib.contextmanager
    def _locked(self, exclusive: bool, timeout: float) -> Iterator[float]:
        """Hold the flock (bounded by ``timeout``); yields the deadline."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._closed:
            raise BackendUnavailable(f"{self.describe()} is closed")
        self._after_fork()
        if not self._mutex.acquire(timeout=min(max(0.0, timeout), threading.TIMEOUT_MAX)):
            raise BackendUnavailable(f"{self.describe()}: another thread held it for over {timeout:.3g}s")
        try:
            fd = self._acquire_flock(exclusive, deadline, timeout)
            if fd is None:  # a reader, and no NAME.lock: nobody ever wrote here, nothing to lock
                yield deadline
                return
            try:
                yield deadline
            finally:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _acquire_flock(self, exclusive: bool, deadline: float, timeout: float) -> int | None:
        kind = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        pause = 0.0005
        while True:
            try:
                fd = self._open_fd(create=exclusive)
            except _NotRegular as exc:
                raise BackendUnavailable(f"refusing {exc}: remove it (planted, or left by mistake)") from None
            except OSError as exc:
                raise BackendUnavailable(f"cannot open {self.lock_path}: {exc}") from None
            if fd is None:
                return None
            try:
                fcntl.flock(fd, kind)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise BackendUnavailable(f"flock on {self.lock_path} failed: {exc}") from None
            else:
                # someone deleted or replaced NAME.lock: our lock is on an orphaned inode
                try:
                    same = os.fstat(fd).st_ino == os.lstat(self.lock_path).st_ino
                except OSError:
                    same = False
                if same:
                    return fd
                log.warning("%s was deleted or replaced while in use; reopening it", self.lock_path)
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                with contextlib.suppress(OSError):
                    os.close(fd)
                self._fd = None
                if time.monotonic() < deadline:
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendUnavailable(
                    f"{self.lock_path} was held by another process for over {timeout:.3g}s "
                    "(a stopped or hung candidate on this host?)"
                )
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.01)

    # --- reading and writing the lease file ---

    def _read_raw(self) -> bytes | None:
        """The lease file's bytes; at most ``MAX_RECORD_BYTES + 1`` of them (an
        :class:`_Oversized` start beyond that). Never follows a symlink, never opens a FIFO
        or device for reading: such a plant reads as an unreadable record (b"" with a stamp),
        which the engine waits out for one lease and then replaces by rename."""
        try:
            fd = _open_regular(self.lease_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except _NotRegular as exc:
            try:
                st = os.lstat(self.lease_path)
            except FileNotFoundError:
                return None
            except OSError:
                raise BackendUnavailable(f"cannot read {self.lease_path}: {exc}") from None
            if stat.S_ISDIR(st.st_mode):
                raise BackendUnavailable(f"{self.lease_path} is a directory; remove it") from None
            return _Oversized(b"", stamp=f"special:{st.st_mode}:{st.st_ino}:{st.st_mtime_ns}")
        except IsADirectoryError:
            raise BackendUnavailable(f"{self.lease_path} is a directory; remove it") from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot read {self.lease_path}: {exc}") from None
        try:
            chunks, size = [], 0
            while size <= MAX_RECORD_BYTES:
                chunk = os.read(fd, MAX_RECORD_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            raw = b"".join(chunks)
            if size > MAX_RECORD_BYTES:
                st = os.fstat(fd)
                return _Oversized(raw, stamp=f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
            return raw
        except OSError as exc:
            raise BackendUnavailable(f"cannot read {self.lease_path}: {exc}") from None
        finally:
            os.close(fd)

    def _decode(self, raw: bytes) -> Versioned:
        if isinstance(raw, _Oversized):
            reason = "not a regular file" if raw.stamp.startswith("special:") else f"larger than {MAX_RECORD_BYTES} bytes"
            return Versioned(LeaderRecord.undecodable(len(raw), reason), _version_of(raw))
        return Versioned(decode_or_placeholder(raw, strip=(NONCE_KEY,)), _version_of(raw))

    def _write(self, raw: bytes) -> None:
        """Temp file + fsync + rename + fsync(dir): the lease file is always whole."""
        self._sweep_temp_files()
        tmp = self.directory / f".{self.name}{LEASE_SUFFIX}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _NOFOLLOW, 0o664)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.lease_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise BackendUnavailable(
                f"cannot write {self.lease_path}: {exc.strerror or exc} (is {self.directory} still a writable local directory?)"
            ) from None
        try:
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:  # the rename happened; only its durability across power loss is in doubt
            log.warning("fsync of directory %s failed: %s", self.directory, exc)

    def _sweep_temp_files(self) -> None:
        """Remove temp files that a writer killed mid-write left behind (once per lock, under flock)."""
        if self._swept:
            return
        self._swept = True
        prefix = f".{self.name}{LEASE_SUFFIX}."
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        log.debug("removed leftover temp file %s", entry.path)

    def _encode(self, record: LeaderRecord) -> bytes:
        return encode_record(record, **{NONCE_KEY: secrets.token_hex(16)})

    # --- the Lock contract ---

    # --- the fence (highest token ever written), kept in NAME.lock ---

    @staticmethod
    def _parse_fence(data: bytes) -> int | None:
        text = data.strip()
        if not text:
            return None  # a NAME.lock from before the fence, or a fresh one
        try:
            value = json.loads(text)["leaderTransitions"]
        except (ValueError, TypeError, KeyError):
            value = None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
            return value
        log.warning("%s does not hold a readable fencing token; tokens continue from the lease file", "NAME.lock")
        return None

    def _read_fence(self) -> int:
        """The fence, read through the flocked descriptor (0 when there is none yet)."""
        fd = self._fd
        if fd is None:  # pragma: no cover - always set while the flock is held
            return 0
        try:
            return self._parse_fence(os.pread(fd, _FENCE_MAX, 0)) or 0
        except OSError as exc:
            raise BackendUnavailable(f"cannot read {self.lock_path}: {exc}") from None

    def _peek_fence(self) -> int:
        """The fence without the flock (for watches: a torn read only costs one early wake-up)."""
        try:
            fd = _open_regular(self.lock_path, os.O_RDONLY)
        except OSError:
            return 0
        try:
            return self._parse_fence(os.read(fd, _FENCE_MAX)) or 0
        except OSError:
            return 0
        finally:
            os.close(fd)

    def _raise_fence(self, token: int, fence: int) -> None:
        """Store ``token`` as the fence if it is higher (under the exclusive flock, before the lease write)."""
        if token <= fence:
            return
        fd = self._fd
        assert fd is not None
        data = (json.dumps({"leaderTransitions": int(token)}) + "\n").encode()
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        except OSError as exc:
            raise BackendUnavailable(f"cannot write the fencing token to {self.lock_path}: {exc}") from None

    @staticmethod
    def _vanished(fence: int) -> Versioned:
        return Versioned(LeaderRecord(holder=VANISHED_HOLDER, transitions=fence), f"{ABSENT}{fence}")

    def _refuse(self, record: LeaderRecord, fence: int) -> BackendUnavailable:
        # not Conflict: the engine would retry at once, for ever; a candidate that has read
        # the fence (get() lifts every token to it) writes a higher one
        return BackendUnavailable(
            f"{self.lease_path}: refused to write fencing token {record.transitions}: tokens up to {fence} "
            f"were handed out already ({self.lock_path}) and tokens never go backwards"
        )

    # --- the Lock contract ---

    def get(self, timeout: float) -> Versioned | None:
        with self._locked(False, timeout):
            raw = self._read_raw()
            fence = self._read_fence()
        if raw is None:
            # deleted by hand, or never written: if a token was ever handed out, whoever holds
            # it may still lead, so it reads as held (waited out for a lease, then taken above it)
            return self._vanished(fence) if fence else None
        got = self._decode(raw)
        if fence > got.record.transitions:
            # garbled, or rewritten with a lower token: never let the next term go below the fence
            got = Versioned(got.record.evolve(transitions=fence), got.version)
        return got

    def create(self, record: LeaderRecord, timeout: float) -> str:
        raw = self._encode(record)
        with self._locked(True, timeout):
            if os.path.lexists(self.lease_path):
                raise Conflict(f"{self.lease_path} exists")
            fence = self._read_fence()
            if fence:
                raise Conflict(f"{self.lease_path} vanished after token {fence} was handed out")
            self._raise_fence(record.transitions, fence)
            self._write(raw)
        return _version_of(raw)

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        raw = self._encode(record)
        with self._locked(True, timeout):
            current = self._read_raw()
            fence = self._read_fence()
            if expected_version.startswith(ABSENT):
                # taking over a vanished lease file: strictly above the fence
                if current is not None or expected_version != f"{ABSENT}{fence}":
                    raise Conflict(f"{self.lease_path} changed")
                if record.transitions <= fence:
                    raise self._refuse(record, fence)
            else:
                if current is None:
                    raise Conflict(f"{self.lease_path} does not exist")
                if _version_of(current) != expected_version:
                    raise Conflict(f"{self.lease_path} changed")
                if record.transitions < fence:
                    raise self._refuse(record, fence)
            self._raise_fence(record.transitions, fence)
            self._write(raw)
        return _version_of(raw)

    def _stat_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.lstat(self.lease_path)
        except FileNotFoundError:
            return None
        except OSError:
            return (-1, -1, -1)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _peek_version(self) -> str | None:
        """The current version without the flock: renames are atomic, reads see whole files."""
        try:
            raw = self._read_raw()
        except BackendUnavailable:
            return "unreadable"
        if raw is None:
            fence = self._peek_fence()
            return f"{ABSENT}{fence}" if fence else None
        return _version_of(raw)

    def _use_inotify(self) -> bool:
        """inotify sees only this machine's writes: never trust it on a network filesystem."""
        if self._inotify is None:
            self._inotify = _inotify.available() and _filesystem_type(self.directory) not in _NETWORK_FS
        return self._inotify

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        """Sleep on inotify until the lease or fence file changes (Linux, local filesystems);
        elsewhere poll ``stat`` (cheap, no flock) and read only when inode, mtime or size moved."""
        deadline = time.monotonic() + max(0.0, timeout)
        watch = _inotify.watch_or_none(self.directory, {self.lease_path.name, self.lock_path.name}) if self._use_inotify() else None
        if watch is not None:
            with watch:
                # watching before reading: a change between the two is not lost
                if self._peek_version() != version:
                    return
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    if watch.wait(remaining) and self._peek_version() != version:
                        return
        seen = self._stat_key()
        if self._peek_version() != version:
            return
        next_full = time.monotonic() + FULL_READ_INTERVAL
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(self.poll_interval, remaining))
            now_key = self._stat_key()
            if now_key != seen or time.monotonic() >= next_full:
                seen = now_key
                next_full = time.monotonic() + FULL_READ_INTERVAL
                if self._peek_version() != version:
                    return

    def write_raw(self, raw: bytes) -> None:
        """Store bytes as they are, atomically and under the flock (tests, repair tools)."""
        with self._locked(True, 5.0):
            self._write(raw)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._after_fork()
        with self._mutex:
            if self._fd is not None and self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = None

    def describe(self) -> str:
        return f"file lock {self.lease_path}"


class FileBackend(Backend):
    """Lease files in one local directory; every candidate must run on this host."""

    schemes = ("file",)
    capabilities = CAPABILITIES

    def __init__(self, directory: str | os.PathLike[str], *, create: bool = False) -> None:
        path = Path(directory)
        if not path.is_absolute():
            raise ConfigurationError(
                f"the file:// backend needs an absolute directory, got {str(directory)!r}; "
                "write file:///absolute/path (three slashes)"
            )
        self.directory = path
        self._locks: weakref.WeakSet[FileLock] = weakref.WeakSet()
        #: the default directory is created by the start-up check (never by ``status``)
        self._create = create
        if not (create and not os.path.lexists(path)):
            inspect_directory(path)

    def _ensure_directory(self) -> None:
        if self._create and not os.path.lexists(self.directory):
            try:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(f"cannot create the default lock directory {self.directory}: {exc}") from None
            log.info("created the default lock directory %s", self.directory)

    @classmethod
    def from_url(cls, url: str) -> FileBackend:
        """``file:///abs/dir`` (or ``file://localhost/abs/dir``); relative paths are refused."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "file":
            raise ConfigurationError(f"not a file:// URL: {redact(url)!r}")
        if parts.fragment:
            raise ConfigurationError(f"the file:// backend takes no options, got {redact(url)!r}; write file:///absolute/dir")
        UrlOptions(parts.query, scheme="file", known=())  # refuses any option, naming it
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(
                f"file:// URL {redact(url)!r} names host {redact(parts.netloc)!r}: the path must be absolute, "
                f"write file:///{parts.netloc}{parts.path} (three slashes) for an absolute path, "
                "and only local directories are supported"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigurationError(
                f"file:// URL {redact(url)!r} has a relative path; a lock directory must not depend on the working "
                "directory: write file:///absolute/path (three slashes)"
            )
        if path != "/":
            path = path.rstrip("/")
        directory = Path(os.path.normpath(path))
        return cls(directory, create=(directory == Path(os.path.normpath(default_state_dir()))))

    def lock(self, name: str) -> FileLock:
        validate_name(name)
        if not (self._create and not os.path.lexists(self.directory)):
            inspect_directory(self.directory)  # creates nothing: status works on a read-only directory
        lock = FileLock(self.directory, name)
        self._locks.add(lock)
        return lock

    def close(self) -> None:
        """Close every lock opened through this backend (their flocks go with them)."""
        for lock in list(self._locks):
            lock.close()

    def check(self, timeout: float = 5.0) -> None:
        """Start-up: the directory exists (the default one is created), is safe and writable."""
        self._ensure_directory()
        check_directory(self.directory)
        if fcntl is None:  # pragma: no cover
            raise ConfigurationError("the file:// backend needs POSIX fcntl.flock (Linux, macOS, BSD)")
        fstype = _filesystem_type(self.directory)
        if fstype in _NETWORK_FS:
            log.warning(
                "lock directory %s is on a %s file system: flock and rename are only trustworthy on a local "
                "file system; use a server backend (redis://, kubernetes://, s3://) for candidates on several hosts",
                self.directory,
                fstype,
            )

    def describe(self) -> str:
        return f"file://{self.directory}"
