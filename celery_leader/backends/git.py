"""``git://``, ``git+file://``, ``git+ssh://``, ``git+http(s)://``: a lock kept in a git repository.

For teams whose only shared infrastructure is a git server. Built on dulwich (pure
Python): no ``git`` binary and no git user configuration are needed on the host.

How it stays safe and small:

* Each write is a **parentless commit** whose tree holds one file (``NAME.lock.json``,
  the Go seed's JSON). The ref therefore always reaches exactly one commit, one tree and
  one blob: history is bounded, whatever the renewal rate. Old commits become
  unreachable garbage that ``git gc`` prunes.
* **Compare-and-swap** on the ref: remote writes are pushes whose old value is the
  commit the caller read (the server re-checks it under its own ref lock and rejects a
  moved ref); local writes (``git+file://``) check the ref under the repository's
  ``<ref>.lock`` file, as git does. A lock file left by a crashed writer is removed once
  it is older than a bound derived from the call timeout.
* The default ref ``refs/celery-leader/NAME`` is outside ``refs/heads/``: it does not
  show up as a branch, is not cloned, does not trigger CI, is not covered by
  ``receive.denyNonFastForwards`` and is not reflogged.

The version is the commit id. A nonce in the commit message makes every write a new
commit, even for identical records.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, TypeVar
from urllib.parse import unquote, urlsplit

from dulwich.client import (
    GitClient,
    HTTPUnauthorized,
    SSHGitClient,
    SubprocessSSHVendor,
    TCPGitClient,
    Urllib3HttpGitClient,
    default_urllib3_manager,
)
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.file import FileLocked
from dulwich.objects import Blob, Commit, ShaFile, Tree
from dulwich.pack import pack_objects_to_data
from dulwich.protocol import ZERO_SHA, Protocol
from dulwich.refs import check_ref_format
from dulwich.repo import MemoryRepo, Repo

from ..lock import Backend, BackendUnavailable, Capabilities, ConfigurationError, Conflict, Lock, LockError, Versioned
from ..record import LeaderRecord, decode_or_placeholder, encode_record
from ..urls import UrlOptions, redact

__all__ = ["GitBackend", "GitLock"]

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(linearizable=True, watch=False, partition_safe=True)

DEFAULT_REF = "refs/celery-leader/{name}"
DEFAULT_PATH = "{name}.lock.json"
DEFAULT_AUTHOR = "celery-leader <celery-leader@localhost>"
#: a ref lock file is judged abandoned when older than max(STALE_MIN, STALE_FACTOR * timeout)
STALE_MIN = 5.0
STALE_FACTOR = 4.0
#: budget for deleting the start-up probe ref, even after check()'s own timeout ran out
PROBE_CLEANUP_TIMEOUT = 10.0
#: a probe ref older than this was left behind (its creation landed after its check gave up):
#: the next check deletes it; far longer than any check's own probe lives, clock skew included
PROBE_STALE_AFTER = 600.0
PROBE_MESSAGE = b"celery-leader start-up probe"
#: a lock ref's tree may hold this many entries before we stop listing them
MAX_TREE_ENTRIES = 64

OPTIONS = ("ref", "path", "token_env", "username", "key", "stale_lock", "author", "probe")
SCHEMES = ("git", "git+file", "git+ssh", "git+http", "git+https")

_HEX40 = re.compile(r"^[0-9a-f]{40}\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

T = TypeVar("T")


def _refs(repo: Repo) -> Any:
    """``repo.refs``, indexed with plain bytes (dulwich's stubs want its Ref NewType)."""
    return repo.refs


class _Refused(Exception):
    """The server or repository refuses us for a reason a person must fix.

    Becomes :class:`ConfigurationError` in :meth:`GitBackend.check` (start-up) and
    :class:`BackendUnavailable` during an election, so that a transient 404 or 401 from a
    proxy does not kill a standby.
    """


class _Reader:
    """A worker thread kept for reads: a standby reads every ``retry_period``, and starting a
    thread per read cost more CPU than handing the read to one that waits.

    Idle readers wait in :data:`_IDLE_READERS`; a read takes one (or starts one) and it goes
    back when the read is done. A read that hangs keeps its reader (the caller gives up
    and the next read takes another), and a reader idle for :data:`READER_IDLE_EXIT`
    seconds ends. Daemon threads: a hung read never holds up the interpreter's exit.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="celery-leader-git-reader", daemon=True).start()

    def run(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=READER_IDLE_EXIT)
            except queue.Empty:
                with _IDLE_GUARD:
                    if self in _IDLE_READERS:
                        _IDLE_READERS.remove(self)
                        return
                continue  # a read took this reader just now: its job is on the way
            job()
            with _IDLE_GUARD:
                _IDLE_READERS.append(self)


#: seconds an idle :class:`_Reader` waits for another read before it ends
READER_IDLE_EXIT = 60.0
_IDLE_READERS: list[_Reader] = []
_IDLE_GUARD = threading.Lock()


def _forget_readers() -> None:
    """In a forked child: the parent's readers are not running here (threads do not fork)."""
    global _IDLE_GUARD
    _IDLE_GUARD = threading.Lock()
    _IDLE_READERS.clear()


os.register_at_fork(after_in_child=_forget_readers)


def _call(what: str, timeout: float, fn: Callable[[float], T]) -> T:
    """Run ``fn(timeout)`` in a worker thread; raise :class:`BackendUnavailable` after ``timeout``.

    Sockets also get the timeout, so an abandoned worker ends soon after. A write that
    timed out may still land: the caller treats it as failed, and the next
    compare-and-swap sorts it out. Reads (``what == "get"``) run in a kept
    :class:`_Reader`; anything else in a thread of its own, named after ``what``.
    """
    timeout = max(0.0, float(timeout))
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn(timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            done.set()

    if what == "get":
        with _IDLE_GUARD:
            reader = _IDLE_READERS.pop() if _IDLE_READERS else None
        (reader or _Reader()).run(run)
    else:
        threading.Thread(target=run, name=f"celery-leader-git-{what}", daemon=True).start()
    if not done.wait(timeout):
        raise BackendUnavailable(f"git {what} did not finish within {timeout:.2f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _hex(version: str) -> bytes | None:
    return version.encode() if isinstance(version, str) and _HEX40.match(version) else None


def _build(raw: bytes, path: str, author: bytes, message: bytes) -> tuple[Commit, list[ShaFile]]:
    """A parentless commit whose tree holds ``raw`` at ``path`` (objects innermost first)."""
    blob = Blob.from_string(raw)
    objects: list[ShaFile] = [blob]
    sha, mode = blob.id, 0o100644
    for part in reversed(path.split("/")):
        tree = Tree()
        tree.add(part.encode(), mode, sha)
        objects.append(tree)
        sha, mode = tree.id, 0o040000
    now = int(time.time())
    commit = Commit()
    commit.tree = sha
    commit.parents = []
    commit.author = commit.committer = author
    commit.author_time = commit.commit_time = now
    commit.author_timezone = commit.commit_timezone = 0
    commit.encoding = b"UTF-8"
    commit.message = message
    objects.append(commit)
    return commit, objects


def _files(lookup: Callable[[bytes], ShaFile], tree_sha: bytes, prefix: str = "", out: list[str] | None = None) -> list[str]:
    """Paths of the files in a tree (stops after MAX_TREE_ENTRIES)."""
    out = [] if out is None else out
    tree = lookup(tree_sha)
    if not isinstance(tree, Tree):
        return out
    for entry in tree.iteritems():
        if len(out) > MAX_TREE_ENTRIES:
            break
        name = prefix + entry.path.decode("utf-8", "replace")
        if entry.mode & 0o170000 == 0o040000:
            _files(lookup, entry.sha, name + "/", out)
        else:
            out.append(name)
    return out


@dataclass(frozen=True)
class _Target:
    ref: str
    path: str


class GitLock(Lock):
    """One election's lock: a ref and a file path in one repository."""

    capabilities = CAPABILITIES

    def __init__(self, backend: GitBackend, name: str, target: _Target) -> None:
        self._backend = backend
        self.name = name
        self.ref = target.ref
        self.path = target.path
        self._ref_b = target.ref.encode()
        #: (commit id, record) last read or written: saves fetching objects we already know
        self._cache: tuple[bytes, LeaderRecord] | None = None
        self._closed = False

    # --- the contract ---

    def get(self, timeout: float) -> Versioned | None:
        return self._guard("get", timeout, self._backend._transport.get, self)

    def create(self, record: LeaderRecord, timeout: float) -> str:
        return self._write(record, None, timeout)

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        expected = _hex(expected_version)
        if expected is None:
            raise Conflict(f"{self.describe()}: {expected_version!r} is not a commit id, so it is not the stored version")
        return self._write(record, expected, timeout)

    def close(self) -> None:
        self._closed = True
        self._cache = None

    def describe(self) -> str:
        return f"git lock {self.name!r} ({self.ref}:{self.path} in {self._backend.describe()})"

    # --- shared machinery ---

    def _write(self, record: LeaderRecord, expected: bytes | None, timeout: float) -> str:
        holder = record.holder or "(free)"
        message = f"celery-leader: {holder} term {record.transitions}\n\nnonce {uuid.uuid4().hex}\n".encode()
        commit, objects = _build(encode_record(record), self.path, self._backend.author, message)
        self._guard("push", timeout, self._backend._transport.cas, self, expected, commit, objects)
        self._cache = (commit.id, record)
        return commit.id.decode()

    def _guard(self, what: str, timeout: float, fn: Callable[..., T], *args: Any) -> T:
        try:
            return _call(what, timeout, lambda t: fn(*args, t))
        except _Refused as exc:
            raise BackendUnavailable(f"{self.describe()}: {exc}") from None

    def _decode(self, sha: bytes, lookup: Callable[[Any], ShaFile]) -> Versioned:
        """The record stored in commit ``sha``; garbage is a placeholder, a foreign ref an error."""
        cached = self._cache
        if cached is not None and cached[0] == sha:
            return Versioned(cached[1], sha.decode())
        fetch = lookup
        seen: dict[Any, ShaFile] = {}

        def read_once(key: Any) -> ShaFile:  # (the tree is walked twice below)
            obj = seen.get(key)
            if obj is None:
                obj = seen[key] = fetch(key)
            return obj

        lookup = read_once
        obj = lookup(sha)
        if not isinstance(obj, Commit):
            rec = LeaderRecord.undecodable(len(obj.as_raw_string()), f"{self.ref} points at a {obj.type_name.decode()}, not a commit")
            return Versioned(rec, sha.decode())
        files = _files(lookup, obj.tree)
        others = [f for f in files if f != self.path]
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise ConfigurationError(
                f"{self.ref} in {self._backend.describe()} holds other files ({shown}); it is not a lock ref and "
                f"celery-leader will not overwrite it. Use a ref of its own, e.g. ?ref=refs/celery-leader/{{name}} (the default)"
            )
        if self.path not in files:
            rec = LeaderRecord.undecodable(0, f"commit {sha.decode()[:12]} has no {self.path}")
            return Versioned(rec, sha.decode())
        entry = _entry_at(lookup, obj.tree, self.path)
        if entry is None:
            rec = LeaderRecord.undecodable(0, f"{self.path} in commit {sha.decode()[:12]} is not a regular file")
            return Versioned(rec, sha.decode())
        record = decode_or_placeholder(lookup(entry).as_raw_string())
        if record.decode_error is None:
            self._cache = (sha, record)
        return Versioned(record, sha.decode())


def _entry_at(lookup: Callable[[bytes], ShaFile], tree_sha: bytes, path: str) -> bytes | None:
    """The blob id at ``path``, or None if it is a link, a submodule or a directory."""
    sha, mode = tree_sha, 0o040000
    for part in path.split("/"):
        tree = lookup(sha)
        if not isinstance(tree, Tree) or mode != 0o040000:
            return None
        mode, sha = tree[part.encode()]
    return sha if mode & 0o170000 == 0o100000 else None


# --- transports ---


class _Transport:
    def get(self, lock: GitLock, timeout: float) -> Versioned | None:
        raise NotImplementedError

    def cas(self, lock: GitLock, expected: bytes | None, commit: Commit, objects: list[ShaFile], timeout: float) -> None:
        raise NotImplementedError

    def check(self, backend: GitBackend, timeout: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _LocalTransport(_Transport):
    """A repository on a local (or mounted) file system: CAS under the ref's lock file."""

    def __init__(self, path: str, stale_lock: float | None) -> None:
        self.path = path
        self.stale_lock = stale_lock
        self._mutex = threading.Lock()
        #: the repository reads use, kept open between them (see :meth:`_reading`), and the
        #: process that opened it
        self._reader: tuple[Repo, int] | None = None
        self._closed = False

    def _open(self) -> Repo:
        try:
            return Repo(self.path)
        except (NotGitRepository, FileNotFoundError, NotADirectoryError):
            raise _Refused(f"{self.path} is not a git repository; create it with: git init --bare {self.path}") from None

    def _locked(self, timeout: float, fn: Callable[[Repo], T]) -> T:
        """Run ``fn`` on a freshly opened repository (no stale pack caches after a ``git gc``).

        One call at a time per backend: a call stuck in a hung file system makes the next
        ones time out instead of piling up threads.
        """
        if not self._mutex.acquire(timeout=max(0.0, timeout)):
            raise BackendUnavailable(f"{self.path}: an earlier call is still blocked in the file system")
        try:
            repo = self._open()
            try:
                return fn(repo)
            finally:
                repo.close()
        finally:
            self._mutex.release()

    def _reading(self, timeout: float, fn: Callable[[Repo], T]) -> T:
        """Run ``fn`` on the repository kept open for reads (opened on first use).

        Opening a repository (its config parsed, its object store set up) cost more than
        the read itself, and a standby polls every ``retry_period``. Kept open is still
        fresh: dulwich reads loose refs and objects from disk on every lookup, reloads
        ``packed-refs`` when the file changed, and rescans the pack directory for an
        object its cached packs lack or for a pack that vanished (``git gc``). A read that
        fails closes it, so the next one opens a new one; so does a fork (the child must
        not share the parent's pack file offsets). Writes open their own (:meth:`_locked`).
        """
        if not self._mutex.acquire(timeout=max(0.0, timeout)):
            raise BackendUnavailable(f"{self.path}: an earlier call is still blocked in the file system")
        try:
            kept, self._reader = self._reader, None
            repo = kept[0] if kept is not None and kept[1] == os.getpid() else self._open()
            try:
                result = fn(repo)
            except BaseException:
                repo.close()
                raise
            if self._closed:
                repo.close()
            else:
                self._reader = (repo, os.getpid())
            return result
        finally:
            self._mutex.release()

    def close(self) -> None:
        # (not under the mutex: a read stuck in the file system holds it; that read closes
        # its repository itself when it ends)
        self._closed = True
        kept, self._reader = self._reader, None
        if kept is not None and kept[1] == os.getpid():
            kept[0].close()

    def get(self, lock: GitLock, timeout: float) -> Versioned | None:
        def read(repo: Repo) -> Versioned | None:
            try:
                sha = _refs(repo)[lock._ref_b]
            except KeyError:
                return None
            try:
                return lock._decode(sha, repo.object_store.__getitem__)
            except KeyError as exc:
                raise BackendUnavailable(f"{self.path}: object {exc} named by {lock.ref} is missing") from None

        return self._reading(timeout, read)

    def cas(self, lock: GitLock, expected: bytes | None, commit: Commit, objects: list[ShaFile], timeout: float) -> None:
        def write(repo: Repo) -> None:
            for obj in objects:
                repo.object_store.add_object(obj)
            for attempt in (1, 2):
                try:
                    if expected is None:
                        ok = _refs(repo).add_if_new(lock._ref_b, commit.id)
                    else:
                        ok = _refs(repo).set_if_equals(lock._ref_b, expected, commit.id)
                except FileLocked as exc:
                    if attempt == 2 or not self._remove_stale(exc.lockfilename, lock, timeout):
                        raise Conflict(f"{lock.describe()}: the ref is being written by another candidate") from None
                    continue
                if not ok:
                    what = "exists" if expected is None else "moved on"
                    raise Conflict(f"{lock.describe()}: the ref {what}")
                return

        try:
            self._locked(timeout, write)
        except OSError as exc:
            raise BackendUnavailable(f"{lock.describe()}: {exc}") from None

    def _remove_stale(self, lockfile: str | bytes, lock: GitLock, timeout: float) -> bool:
        """Remove ``lockfile`` if it is older than the bound; True if the write may be retried.

        Safe against a live writer: the file is first renamed away atomically and removed
        only if it is still the same file (inode and mtime) we judged stale; otherwise it
        is put back.
        """
        path = os.fsdecode(lockfile)
        bound = self.stale_lock if self.stale_lock is not None else max(STALE_MIN, STALE_FACTOR * timeout)
        try:
            before = os.stat(path)
        except FileNotFoundError:
            return True  # released meanwhile
        age = time.time() - before.st_mtime
        if age < bound:
            return False
        aside = f"{path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True
        after = os.stat(aside)
        if (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
            # a live writer took the lock between our stat and rename: give it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        log.warning(
            "removed a stale ref lock %s (%.1f s old, bound %.1f s): a writer crashed while updating %s",
            path,
            age,
            bound,
            lock.ref,
        )
        return True

    def check(self, backend: GitBackend, timeout: float) -> None:
        def probe(repo: Repo) -> None:
            for sub in ("objects", "refs"):
                where = os.path.join(repo.controldir(), sub)
                if not os.access(where, os.W_OK):
                    raise _Refused(f"{where} is not writable by this user; fix its permissions (chown/chmod)")

        self._locked(timeout, probe)



class _TimeoutTCPGitClient(TCPGitClient):
    """``git://`` client whose socket has a timeout (dulwich's has none)."""

    def __init__(self, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port, quiet=True)
        self._io_timeout = max(0.05, timeout)
        self._sockets: list[socket.socket] = []

    def close(self) -> None:
        """Close every connection this client opened (dulwich leaves some open on errors)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def _connect(self, cmd: bytes, path: str | bytes, protocol_version: int | None = None):  # type: ignore[override]
        if not isinstance(path, bytes):
            path = path.encode("utf-8")
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self._io_timeout)
        except OSError as exc:
            raise _Unreachable(f"cannot connect to {self._host}:{self._port}: {exc}") from None
        self._sockets.append(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb", -1)
        wfile = sock.makefile("wb", 0)

        def close() -> None:
            rfile.close()
            wfile.close()
            sock.close()

        proto = Protocol(rfile.read, wfile.write, close, report_activity=self._report_activity)
        if path.startswith(b"/~"):
            path = path[1:]
        self.protocol_version = 0  # v0 everywhere: one ref advertisement, as receive-pack uses
        proto.send_cmd(b"git-" + cmd, path, b"host=" + self._host.encode("ascii"))
        def can_read() -> bool:
            return bool(select.select([sock], [], [], 0)[0])

        return proto, can_read, None


class _Unreachable(OSError):
    pass


class _RemoteTransport(_Transport):
    """A git server: reads are shallow fetches, writes are pushes with the expected old value."""

    def __init__(self, scheme: str, host: str, port: int | None, path: str, *, username: str | None,
                 token_env: str | None, key: str | None) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
        self.username = username
        self.token_env = token_env
        self.key = key
        self._pool: Any = None
        self._pool_guard = threading.Lock()

    # clients are cheap and not thread-safe: one per call (HTTP shares one pool of connections)
    def _client(self, timeout: float) -> Any:  # GitClient; dulwich's stubs want Ref/ObjectID NewTypes
        if self.scheme == "git":
            return _TimeoutTCPGitClient(self.host, self.port, timeout)
        if self.scheme == "git+ssh":
            secs = max(1, int(timeout + 0.999))
            command = f"ssh -o BatchMode=yes -o ConnectTimeout={secs} -o ServerAliveInterval={secs} -o ServerAliveCountMax=1"
            return SSHGitClient(self.host, port=self.port, username=self.username, vendor=SubprocessSSHVendor(),
                                key_filename=self.key, ssh_command=command, quiet=True)
        http = self.scheme.removeprefix("git+")
        netloc = self.host if self.port is None else f"{self.host}:{self.port}"
        if ":" in self.host:
            netloc = f"[{self.host}]" + ("" if self.port is None else f":{self.port}")
        base = f"{http}://{netloc}{self.path}"
        with self._pool_guard:
            if self._pool is None:
                self._pool = default_urllib3_manager(None, base_url=base)
        password = None
        if self.token_env:
            password = os.environ.get(self.token_env)
            if not password:
                raise _Refused(f"the environment variable {self.token_env} named by ?token_env= is not set or empty")
        username = self.username if (self.username or password) else None
        if password and not username:
            username = "git"
        return Urllib3HttpGitClient(base, pool_manager=self._pool, username=username, password=password,
                                    timeout=timeout, quiet=True, dumb=False)

    def _remote_path(self) -> str:
        return "" if self.scheme.startswith("git+http") else self.path

    def _translate(self, exc: BaseException) -> BaseException:
        """dulwich and socket errors -> our errors (never with credentials in them)."""
        if isinstance(exc, (LockError, _Refused)):
            return exc
        where = self.describe()
        if isinstance(exc, HTTPUnauthorized):
            hint = (f"the token in ${self.token_env} was refused; check it has write access to the repository"
                    if self.token_env else "add ?token_env=VAR naming an environment variable that holds an access token")
            return _Refused(f"{where}: authentication failed (HTTP 401): {hint}")
        if isinstance(exc, NotGitRepository):
            return _Refused(f"{where}: no git repository there (HTTP 404); check the URL path, and that the token may see it")
        if isinstance(exc, (_Unreachable, TimeoutError, ConnectionError)):
            return BackendUnavailable(f"{where}: {exc}")
        if isinstance(exc, HangupException):
            text = str(exc)
            if any(s in text for s in ("Permission denied", "not found", "does not appear to be a git repository",
                                       "Host key verification failed", "Could not resolve hostname",
                                       "not exported", "access denied")):
                return _Refused(f"{where}: {text.strip()}")
            return BackendUnavailable(f"{where}: the server hung up ({text.strip() or 'no message'})")
        if isinstance(exc, GitProtocolError):
            text = str(exc)
            if "access denied" in text or "not exported" in text:
                return _Refused(
                    f"{where}: {text}: the repository does not exist or is not exported (git daemon needs "
                    "--export-all or a git-daemon-export-ok file, and --enable=receive-pack for writes)"
                )
            if re.search(r"\b403\b", text):
                return _Refused(f"{where}: permission denied (HTTP 403); the credential may read but not push")
            return BackendUnavailable(f"{where}: {text}")
        if isinstance(exc, OSError):
            return BackendUnavailable(f"{where}: {exc}")
        if isinstance(exc, Exception):
            # a server answer dulwich could not parse (a proxy's HTML page, a truncated pack)
            log.debug("unexpected error talking to %s", where, exc_info=exc)
            return BackendUnavailable(f"{where}: unexpected answer ({type(exc).__name__}: {exc})")
        return exc

    def _run(self, client: GitClient, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - translated and re-raised
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from None
        finally:
            if isinstance(client, _TimeoutTCPGitClient):
                client.close()  # HTTP clients share the backend's pool: never closed here

    def get(self, lock: GitLock, timeout: float) -> Versioned | None:
        client = self._client(timeout)
        target = MemoryRepo()
        seen: dict[str, bytes | None] = {}

        def wants(refs: dict[bytes, bytes], depth: int | None = None) -> list[bytes]:
            sha = refs.get(lock._ref_b)
            seen["sha"] = sha
            cached = lock._cache
            if sha is None or (cached is not None and cached[0] == sha):
                return []
            return [sha]

        self._run(client, lambda: client.fetch(self._remote_path(), target, wants, depth=1, ref_prefix=[lock._ref_b],
                                       protocol_version=0))
        sha = seen.get("sha")
        if sha is None:
            return None
        try:
            return lock._decode(sha, target.object_store.__getitem__)
        except KeyError as exc:
            raise BackendUnavailable(f"{self.describe()}: the server did not send object {exc}") from None

    def _push(self, ref: bytes, expected: bytes | None, new: bytes, objects: list[ShaFile], timeout: float,
              describe: str) -> None:
        client = self._client(timeout)

        def update_refs(refs: dict[bytes, bytes]) -> dict[bytes, bytes]:
            current = refs.get(ref)
            if expected is None and current is not None:
                raise Conflict(f"{describe}: the ref exists")
            if expected is not None and current != expected:
                raise Conflict(f"{describe}: the ref moved on")
            return {ref: new}

        def pack_data(have: Any, want: Any, ofs_delta: bool = False, progress: Any = None) -> Any:
            return pack_objects_to_data([(obj, None) for obj in objects])

        result = self._run(client, lambda: client.send_pack(self._remote_path(), update_refs, pack_data))
        status = (result.ref_status or {}).get(ref)
        if status is None:
            return
        raise self._refusal(ref, str(status), describe)

    def _refusal(self, ref: bytes, status: str, describe: str) -> LockError | _Refused:
        name = ref.decode()
        if "non-fast-forward" in status or "fast-forward" in status:
            return ConfigurationError(
                f"{describe}: the server refused a non-fast-forward update of {name} ({status}). Every write of this "
                "backend is a new parentless commit (that keeps history bounded), so the ref must accept it: use a ref "
                "outside refs/heads/ (the default refs/celery-leader/NAME, which receive.denyNonFastForwards does not "
                f"cover), or run `git config receive.denyNonFastForwards false` in the server repository, or allow force "
                f"pushes to {name} in the hosting service's branch protection"
            )
        if any(s in status for s in ("failed to update", "failed to lock", "cannot lock", "stale info",
                                     "fetch first", "already exists", "expected")):
            return Conflict(f"{describe}: lost the race ({status})")
        if "hidden" in status or "funny refname" in status:
            return ConfigurationError(f"{describe}: the server refuses the ref {name} ({status}); choose another ?ref=")
        if "hook declined" in status or "protected" in status:
            return ConfigurationError(
                f"{describe}: the server's hooks or branch protection refuse updates of {name} ({status}); "
                "exempt the ref, or choose one outside protected branches with ?ref="
            )
        return BackendUnavailable(f"{describe}: the server rejected the push of {name}: {status}")

    def cas(self, lock: GitLock, expected: bytes | None, commit: Commit, objects: list[ShaFile], timeout: float) -> None:
        self._push(lock._ref_b, expected, commit.id, objects, timeout, lock.describe())

    def check(self, backend: GitBackend, timeout: float) -> None:
        """Read the refs, then (``probe``) create, rewrite and delete a temporary ref.

        The rewrite is a non-fast-forward update, so a server that would refuse our
        renewals is found at start-up, not after the first term began.
        """
        deadline = time.monotonic() + timeout

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendUnavailable(f"{self.describe()}: start-up check did not finish within {timeout:.1f} s")
            return remaining

        client = self._client(left())
        refs = self._run(client, lambda: client.get_refs(self._remote_path()))
        if not backend.probe:
            return
        self._sweep_probes(backend, dict(getattr(refs, "refs", refs)), left)
        probe_name = f"probe-{uuid.uuid4().hex[:12]}"
        target = backend._target(probe_name)
        if "{name}" not in backend.ref_template:
            target = _Target(target.ref + "-" + probe_name, target.path)
        ref = target.ref.encode()
        where = f"start-up probe {target.ref} in {self.describe()}"
        first, objs1 = _build(b"{}", target.path, backend.author, PROBE_MESSAGE + b"\n")
        second, objs2 = _build(b"{ }", target.path, backend.author, PROBE_MESSAGE + b" (rewrite)\n")
        try:
            self._push(ref, None, first.id, objs1, left(), where)
            self._push(ref, first.id, second.id, objs2, left(), where)
        finally:
            # also when the budget ran out: check() has then returned already, and this runs
            # on in its abandoned worker thread with a budget of its own
            self._delete_probe(ref, (first.id, second.id), where)

    def _sweep_probes(self, backend: GitBackend, refs: dict[bytes, bytes], left: Callable[[], float]) -> None:
        """Delete probe refs that earlier checks left behind.

        A probe's creation can land after its check gave up on it (the server was slow and
        our socket timed out first): that check's cleanup read the refs before the write
        landed and found nothing to delete. Only refs named like a probe whose commit is a
        probe commit older than :data:`PROBE_STALE_AFTER` are deleted, so another process's
        check in progress and an election that happens to be called ``probe-...`` are left alone.
        """
        pattern = backend._probe_ref_pattern()
        for ref, sha in sorted(refs.items()):
            if sha is None or not pattern.match(ref):
                continue
            commit = self._fetch_commit(ref, sha, left())
            if commit is None or commit.parents or not commit.message.startswith(PROBE_MESSAGE):
                continue
            age = time.time() - commit.commit_time
            if age < PROBE_STALE_AFTER:
                continue
            try:
                self._push(ref, sha, ZERO_SHA, [], left(), f"stale start-up probe {ref.decode()} in {self.describe()}")
            except Conflict:
                continue  # gone or moved meanwhile: not ours to judge any more
            log.warning("deleted the start-up probe ref %s (%.0f s old) that an earlier check left behind",
                        ref.decode(), age)

    def _fetch_commit(self, ref: bytes, sha: bytes, timeout: float) -> Commit | None:
        client = self._client(timeout)
        target = MemoryRepo()

        def wants(refs: dict[bytes, bytes], depth: int | None = None) -> list[bytes]:
            return [sha] if refs.get(ref) == sha else []

        self._run(client, lambda: client.fetch(self._remote_path(), target, wants, depth=1, ref_prefix=[ref],
                                               protocol_version=0))
        lookup: Callable[[Any], ShaFile] = target.object_store.__getitem__
        try:
            found = lookup(sha)
        except KeyError:
            return None
        return found if isinstance(found, Commit) else None

    def _delete_probe(self, ref: bytes, ours: tuple[bytes, ...], where: str) -> None:
        try:
            current = _exists(self, ref, PROBE_CLEANUP_TIMEOUT)
            if current in ours:
                self._push(ref, current, ZERO_SHA, [], PROBE_CLEANUP_TIMEOUT, where)
        except (LockError, _Refused) as exc:
            log.warning("could not delete the start-up probe ref %s (%s); delete it by hand", ref.decode(), exc)

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if self.port is None else f"{host}:{self.port}"
        if self.username and self.scheme in ("git+ssh",):
            netloc = f"{self.username}@{netloc}"
        suffix = f" (token from ${self.token_env})" if self.token_env else ""
        return f"{self.scheme}://{netloc}{self.path}{suffix}"

    def close(self) -> None:
        with self._pool_guard:
            if self._pool is not None:
                self._pool.clear()
                self._pool = None


def _exists(transport: _RemoteTransport, ref: bytes, timeout: float) -> bytes | None:
    client = transport._client(timeout)
    refs = transport._run(client, lambda: client.get_refs(transport._remote_path()))
    found: Any = getattr(refs, "refs", refs)
    return dict(found).get(ref)


# --- the backend ---


class GitBackend(Backend):
    """Locks as refs in one git repository (see the module docstring)."""

    schemes = SCHEMES
    capabilities = CAPABILITIES

    def __init__(self, transport: _Transport, *, ref_template: str = DEFAULT_REF, path_template: str = DEFAULT_PATH,
                 author: str = DEFAULT_AUTHOR, probe: bool = True, url_for_logs: str = "") -> None:
        self._transport = transport
        self.ref_template = ref_template
        self.path_template = path_template
        self.author = author.encode()
        self.probe = probe
        self._url = url_for_logs
        self._target("example")  # validate the templates now, with a clear error

    @classmethod
    def from_url(cls, url: str) -> GitBackend:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ConfigurationError(f"not a git lock URL: {scheme}://; use one of {', '.join(s + '://' for s in SCHEMES)}")
        options = UrlOptions(parts.query, scheme=scheme, known=OPTIONS)
        if parts.password is not None:
            raise ConfigurationError(
                "do not put a password or token in the git lock URL (URLs end up in logs and process lists); put it in "
                "an environment variable and name that variable with ?token_env=VAR"
            )
        token_env = options.text("token_env")
        if token_env is not None:
            if not _ENV_NAME.match(token_env):
                raise ConfigurationError(f"?token_env= must name an environment variable, got {token_env!r}")
            if scheme not in ("git+http", "git+https"):
                raise ConfigurationError("?token_env= is for git+https:// and git+http:// URLs; git+ssh:// uses ssh keys (?key=)")
            if not os.environ.get(token_env):
                raise ConfigurationError(f"the environment variable {token_env} named by ?token_env= is not set or empty")
        stale = options.seconds("stale_lock", None, positive=True)
        common: dict[str, Any] = dict(
            ref_template=options.text("ref", DEFAULT_REF),
            path_template=options.text("path", DEFAULT_PATH),
            author=options.text("author", DEFAULT_AUTHOR),
            probe=options.flag("probe", True),
        )
        if not re.match(r"^[^<>\n]+ <[^<>\n]*>$", common["author"]):
            raise ConfigurationError(f"?author= must look like 'Name <email>', got {common['author']!r}")
        path = unquote(parts.path)
        if scheme == "git+file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigurationError(f"git+file:// URLs name a local path: git+file:///srv/locks.git, not host {redact(parts.netloc)!r}")
            if not path.startswith("/"):
                raise ConfigurationError("git+file:// needs an absolute path: git+file:///srv/locks.git")
            for opt in ("token_env", "username", "key"):
                if opt in options:
                    raise ConfigurationError(f"?{opt}= does not apply to git+file:// URLs")
            transport: _Transport = _LocalTransport(path, stale)
            shown = f"git+file://{path}"
        else:
            if "stale_lock" in options:
                raise ConfigurationError("?stale_lock= applies to git+file:// only: a git server handles its own ref locks")
            if not parts.hostname:
                raise ConfigurationError(f"the git lock URL needs a host: {scheme}://HOST[:PORT]/path/to/repo.git")
            try:
                port = parts.port
            except ValueError:
                raise ConfigurationError(
                    f"bad port in {scheme}:// URL; for ssh write git+ssh://git@host/org/repo.git (not the scp form host:org/repo)"
                ) from None
            if not path or path == "/":
                raise ConfigurationError(f"the git lock URL needs the repository path: {scheme}://{parts.hostname}/path/to/repo.git")
            if "key" in options and scheme != "git+ssh":
                raise ConfigurationError("?key= (an ssh private key file) applies to git+ssh:// only")
            key = options.text("key")
            if key is not None and not os.path.isfile(key):
                raise ConfigurationError(f"?key={key} is not a readable file")
            transport = _RemoteTransport(scheme, parts.hostname, port, path,
                                         username=options.text("username") or parts.username,
                                         token_env=token_env, key=key)
            shown = transport.describe()
        return cls(transport, url_for_logs=shown, **common)

    def _target(self, name: str) -> _Target:
        if not name:
            raise ConfigurationError("an election name must not be empty")
        ref = self.ref_template.replace("{name}", name)
        path = self.path_template.replace("{name}", name)
        if not ref.startswith("refs/") or not check_ref_format(ref.encode()):  # type: ignore[arg-type]
            raise ConfigurationError(
                f"{ref!r} is not a valid git ref name (from ?ref={self.ref_template!r} and the election name {name!r}); "
                "refs start with refs/ and may not contain spaces, '..', ':', '~', '^', '?', '*', '[' or '\\'"
            )
        parts = path.split("/")
        if any(p in ("", ".", "..", ".git") for p in parts):
            raise ConfigurationError(f"{path!r} is not a valid file path inside the repository (from ?path=)")
        return _Target(ref, path)

    def lock(self, name: str) -> GitLock:
        return GitLock(self, name, self._target(name))

    def _probe_ref_pattern(self) -> re.Pattern[bytes]:
        """Names of the start-up probes' refs (see ``_RemoteTransport.check``)."""
        probe = "probe-[0-9a-f]{12}"
        if "{name}" in self.ref_template:
            body = probe.join(re.escape(part) for part in self.ref_template.split("{name}"))
        else:
            body = re.escape(self.ref_template) + "-" + probe
        return re.compile((body + r"\Z").encode())

    def check(self, timeout: float = 10.0) -> None:
        try:
            _call("check", timeout, lambda t: self._transport.check(self, t))
        except _Refused as exc:
            raise ConfigurationError(str(exc)) from None

    def close(self) -> None:
        self._transport.close()

    def describe(self) -> str:
        return self._url
