"""A small client for the Serf agent's RPC protocol (msgpack over TCP).

Why our own: the maintained Python clients pin ``msgpack<1`` or ``anyio<4``. The protocol
is small: every request is a msgpack header ``{"Command": c, "Seq": n}`` optionally
followed by a msgpack body; every reply is a header ``{"Seq": n, "Error": ""}``, followed
by a body for the commands that return one. ``stream`` and ``query`` keep sending
header+body records under their request's ``Seq`` after the first, body-less reply.

One reader thread owns the socket's input and routes each reply to the call waiting for
it; stream handlers run on their own thread per stream, so a handler may call back into
the client and wait for its reply, or (``inline=True``) on the reader thread itself, one
thread hand-off less per record, for a handler that never waits for a reply of this
client (an acceptor answers a query with ``respond(..., wait=False)``).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import msgpack

__all__ = [
    "SerfError",
    "SerfConnectionError",
    "SerfRPCError",
    "Member",
    "Query",
    "QueryCall",
    "Stream",
    "SerfClient",
    "CLOSED",
    "as_query",
]

log = logging.getLogger(__name__)

_DONE = object()
#: put into a shared query record queue when the connection breaks
CLOSED = _DONE


class SerfError(Exception):
    """Base class of the errors of this client."""


class SerfConnectionError(SerfError, ConnectionError):
    """The agent could not be reached, or the connection broke, or a reply timed out."""


class SerfRPCError(SerfError):
    """The agent answered a request with an error string."""


@dataclass(frozen=True)
class Member:
    """One node as the agent sees it."""

    name: str
    addr: str
    port: int
    tags: Mapping[str, str]
    status: str
    protocol: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> "Member":
        addr = raw.get("Addr", b"")
        if isinstance(addr, (bytes, bytearray)) and len(addr) in (4, 16):
            text = str(ipaddress.ip_address(bytes(addr)))
            if text.startswith("::ffff:"):
                text = text[7:]
        else:
            text = str(addr)
        return cls(
            name=raw.get("Name", ""),
            addr=text,
            port=int(raw.get("Port", 0)),
            tags=dict(raw.get("Tags") or {}),
            status=raw.get("Status", ""),
            protocol=(raw.get("ProtocolMin", 0), raw.get("ProtocolMax", 0), raw.get("ProtocolCur", 0)),
        )


@dataclass(frozen=True)
class Query:
    """A query delivered to a ``query`` stream: answer it with :meth:`SerfClient.respond`."""

    id: int
    ltime: int
    name: str
    payload: bytes


class _Call:
    """A request waiting for its reply (and, for streams/queries, its later records)."""

    def __init__(self, seq: int, expects_body: bool, streaming: bool,
                 records: "queue.Queue[Any] | None" = None) -> None:
        self.seq = seq
        self.expects_body = expects_body
        self.streaming = streaming
        self.acked = False
        self.done = threading.Event()
        self.error: str | None = None
        self.body: Any = None
        self.records: "queue.Queue[Any]" = records if records is not None else queue.Queue()
        #: an inline stream's handler: called on the reader thread instead of queueing
        self.handler: Callable[[Mapping[str, Any]], None] | None = None

    def resolve(self, error: str | None, body: Any = None) -> None:
        self.error, self.body = error, body
        self.done.set()


class Stream:
    """A running ``stream`` subscription; :meth:`stop` ends it. Handlers run on its own thread
    (or, ``inline``, on the client's reader thread)."""

    def __init__(self, client: "SerfClient", call: _Call, handler: Callable[[Mapping[str, Any]], None],
                 inline: bool = False) -> None:  # fmt: skip
        self._client = client
        self._call = call
        self._handler = handler
        self._stopped = False
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._run, name=f"serf-stream-{call.seq}", daemon=True)
            self._thread.start()

    @property
    def seq(self) -> int:
        return self._call.seq

    @property
    def alive(self) -> bool:
        if self._thread is None:
            return not self._stopped and not self._client.closed
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            record = self._call.records.get()
            if record is _DONE:
                return
            try:
                self._handler(record)
            except Exception:  # noqa: BLE001 - a handler bug must not end the subscription
                log.exception("serf stream handler failed on %r", record.get("Event"))

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the agent to stop sending, and end the handler thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._client._request("stop", {"Stop": self._call.seq}, timeout=timeout)
        except SerfError:
            pass
        self._client._forget(self._call.seq)
        self._call.handler = None
        self._call.records.put(_DONE)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class QueryCall:
    """The responses to one query, as they arrive: iterate :meth:`responses`."""

    def __init__(self, client: "SerfClient", call: _Call, deadline: float) -> None:
        self._client = client
        self._call = call
        self.deadline = deadline
        self.acks: list[str] = []
        self.finished = False

    def responses(self, deadline: float | None = None) -> Iterator[tuple[str, bytes]]:
        """Yield ``(node, payload)`` until the query is done or ``deadline`` (monotonic) passes."""
        end = min(self.deadline, deadline) if deadline is not None else self.deadline
        while not self.finished:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            try:
                record = self._call.records.get(timeout=remaining)
            except queue.Empty:
                return
            if record is _DONE:
                self.finished = True
                return
            kind = record.get("Type")
            if kind == "ack":
                self.acks.append(record.get("From", ""))
            elif kind == "response":
                yield record.get("From", ""), bytes(record.get("Payload") or b"")
            elif kind == "done":
                self.finished = True
                self._client._forget(self._call.seq)
                return


class SerfClient:
    """One RPC connection to a Serf agent. Thread-safe.

    ``timeout`` bounds every request's reply (and connecting, unless ``connect_timeout``
    is given); the connection is closed on any protocol or socket error (make a new
    client to reconnect).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7373,
        *,
        auth_key: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        connect = timeout if connect_timeout is None else connect_timeout
        self._seq = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._guard = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._close_reason = ""
        try:
            self._sock = socket.create_connection((host, port), timeout=connect)
        except OSError as exc:
            raise SerfConnectionError(f"cannot connect to the serf agent's RPC at {host}:{port}: {exc}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name=f"serf-rpc-{host}:{port}", daemon=True)
        self._reader.start()
        try:
            self._request("handshake", {"Version": 1}, timeout=connect)
            if auth_key:
                self._request("auth", {"AuthKey": auth_key}, timeout=connect)
        except BaseException:
            self.close()
            raise

    # --- plumbing ---

    def _read_loop(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        last: _Call | None = None  # the call whose body comes next
        reason = "connection closed by the agent"
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                unpacker.feed(data)
                for obj in unpacker:
                    if isinstance(obj, dict) and set(obj) == {"Seq", "Error"}:
                        last = self._on_header(int(obj["Seq"]), obj["Error"] or None)
                    elif last is not None:
                        if last.streaming:
                            handler = last.handler
                            if handler is not None:
                                try:
                                    handler(obj)
                                except Exception:  # noqa: BLE001 - a handler bug must not end the connection
                                    log.exception("serf stream handler failed on %r",
                                                  obj.get("Event") if isinstance(obj, dict) else obj)
                            else:
                                last.records.put(obj)
                            if isinstance(obj, dict) and obj.get("Type") == "done":
                                self._forget(last.seq)
                        else:
                            self._forget(last.seq)
                            last.resolve(None, obj)
                        last = None
        except OSError as exc:
            reason = f"connection error: {exc}"
        except Exception as exc:  # noqa: BLE001 - a garbled stream ends the connection
            reason = f"protocol error: {exc!r}"
        self._shutdown(reason)

    def _on_header(self, seq: int, error: str | None) -> _Call | None:
        with self._guard:
            call = self._calls.get(seq)
        if call is None:
            if error:  # a request nobody waits for (respond(wait=False)), or one given up on
                log.debug("serf agent %s:%s: request %d: %s", self.host, self.port, seq, error)
            return None
        if call.streaming:
            if not call.acked:
                call.acked = True
                call.resolve(error)
                if error:
                    self._forget(seq)
                    # for a caller that did not wait for this first reply (query(wait=False))
                    call.records.put({"Type": "error", "Error": error})
                return None
            return call
        if error or not call.expects_body:
            self._forget(seq)
            call.resolve(error)
            return None
        return call

    def _forget(self, seq: int) -> None:
        with self._guard:
            self._calls.pop(seq, None)

    def _shutdown(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._close_reason = reason
        self._closed.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._guard:
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            call.resolve(f"serf RPC {reason}")
            call.records.put(_DONE)

    def _send(self, command: str, body: Mapping[str, Any] | None, *, expects_body: bool, streaming: bool,
              records: "queue.Queue[Any] | None" = None, register: bool = True,
              handler: Callable[[Mapping[str, Any]], None] | None = None) -> _Call:  # fmt: skip
        if self._closed.is_set():
            raise SerfConnectionError(f"serf RPC {self.host}:{self.port} is closed ({self._close_reason})")
        seq = next(self._seq)
        call = _Call(seq, expects_body, streaming, records)
        call.handler = handler
        data = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=True)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=True)
        if register:  # else its reply is read and dropped (an error is logged)
            with self._guard:
                self._calls[seq] = call
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self._shutdown(f"send failed: {exc}")
            raise SerfConnectionError(f"serf RPC {self.host}:{self.port}: {exc}") from exc
        return call

    def _wait(self, call: _Call, command: str, timeout: float | None) -> Any:
        if not call.done.wait(self.timeout if timeout is None else max(0.0, timeout)):
            self._forget(call.seq)
            raise SerfConnectionError(f"serf agent {self.host}:{self.port} did not answer {command!r} in time")
        if call.error:
            if self._closed.is_set() and call.error.startswith("serf RPC"):
                raise SerfConnectionError(call.error)
            raise SerfRPCError(f"serf {command}: {call.error}")
        return call.body

    def _request(self, command: str, body: Mapping[str, Any] | None = None, *, expects_body: bool = False,
                 timeout: float | None = None) -> Any:
        call = self._send(command, body, expects_body=expects_body, streaming=False)
        return self._wait(call, command, timeout)

    # --- commands ---

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection is closed (by either side) or ``timeout``; True if closed."""
        return self._closed.wait(timeout)

    def members(self, timeout: float | None = None) -> list[Member]:
        body = self._request("members", None, expects_body=True, timeout=timeout)
        return [Member.from_wire(m) for m in (body or {}).get("Members") or []]

    def stats(self, timeout: float | None = None) -> dict[str, Any]:
        """The agent's stats; ``stats()["agent"]["name"]`` is its node name."""
        return dict(self._request("stats", None, expects_body=True, timeout=timeout) or {})

    def local_name(self, timeout: float | None = None) -> str:
        return str(self.stats(timeout)["agent"]["name"])

    def join(self, addresses: Sequence[str], replay: bool = False, timeout: float | None = None) -> int:
        body = self._request("join", {"Existing": list(addresses), "Replay": replay}, expects_body=True,
                             timeout=timeout)
        return int((body or {}).get("Num", 0))

    def event(self, name: str, payload: bytes = b"", coalesce: bool = True, timeout: float | None = None) -> None:
        """Fire a user event (best effort gossip: no delivery guarantee)."""
        self._request("event", {"Name": name, "Payload": payload, "Coalesce": coalesce}, timeout=timeout)

    def tags(self, set_tags: Mapping[str, str] | None = None, delete: Sequence[str] = (),
             timeout: float | None = None) -> None:
        self._request("tags", {"Tags": dict(set_tags or {}), "DeleteTags": list(delete)}, timeout=timeout)

    def respond(self, query_id: int, payload: bytes, timeout: float | None = None, wait: bool = True) -> None:
        """Answer a query received on a ``query`` stream (once per query and agent).

        ``wait=False``: send the answer and return without waiting for the agent's reply
        (an error in it is only logged at debug level); the only way to answer from an
        ``inline`` stream handler, which runs on the thread that reads the replies.
        """
        body = {"ID": query_id, "Payload": payload}
        if wait:
            self._request("respond", body, timeout=timeout)
        else:
            self._send("respond", body, expects_body=False, streaming=False, register=False)

    def query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        filter_nodes: Sequence[str] = (),
        filter_tags: Mapping[str, str] | None = None,
        timeout: float = 1.0,
        request_ack: bool = False,
        records: "queue.Queue[Any] | None" = None,
        wait: bool = True,
    ) -> QueryCall:
        """Start a query; iterate the result's :meth:`QueryCall.responses`.

        ``timeout`` is the query's own lifetime at the agents (how long they accept answers).
        ``records``: deliver the raw records (``{"Type": "ack"|"response"|"done", "From",
        "Payload"}``, or :data:`CLOSED` when the connection breaks) into this queue instead,
        so that one consumer can follow several queries (resends of one message).
        ``wait=False`` (with ``records``): return without waiting for the agent's first
        reply (a wake-up less); if the agent refuses the query, a record
        ``{"Type": "error", "Error": text}`` arrives in ``records`` instead of an exception.
        """
        body = {
            "FilterNodes": list(filter_nodes),
            "FilterTags": dict(filter_tags or {}),
            "RequestAck": request_ack,
            "Timeout": int(max(timeout, 0.001) * 1e9),
            "Name": name,
            "Payload": payload,
        }
        call = self._send("query", body, expects_body=False, streaming=True, records=records)
        if wait or records is None:
            self._wait(call, "query", min(self.timeout, max(timeout, 0.05)))
        return QueryCall(self, call, time.monotonic() + timeout)

    def stream(self, types: str | Sequence[str], handler: Callable[[Mapping[str, Any]], None],
               timeout: float | None = None, inline: bool = False) -> Stream:
        """Subscribe to events (``"member-join,user:x,query"``); ``handler(record)`` runs on the stream's thread.

        ``inline=True``: it runs on this client's reader thread instead (no hand-off per
        record), so it must never wait for a reply of this client (no ``_request``, no
        ``respond`` without ``wait=False``), and whatever it blocks on delays every reply
        of this client.

        A ``query`` record can be turned into a :class:`Query` with :func:`as_query`.
        """
        kinds = types if isinstance(types, str) else ",".join(types)
        call = self._send("stream", {"Type": kinds}, expects_body=False, streaming=True,
                          handler=handler if inline else None)
        self._wait(call, "stream", timeout)
        return Stream(self, call, handler, inline=inline)

    def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._closed.is_set():
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._shutdown("closed by the client")
        if threading.current_thread() is not self._reader:
            self._reader.join(2.0)

    def __enter__(self) -> "SerfClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_query(record: Mapping[str, Any]) -> Query | None:
    """The :class:`Query` in a stream record, or ``None`` for other events."""
    if record.get("Event") != "query":
        return None
    return Query(
        id=int(record.get("ID", 0)),
        ltime=int(record.get("LTime", 0)),
        name=str(record.get("Name", "")),
        payload=bytes(record.get("Payload") or b""),
    )

