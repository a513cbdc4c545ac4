"""Kubernetes events in both directions.

In: the JSON lines of a Lease watch stream (:func:`watch_events`). Out: client-go's
``LeaderElection`` Events on each change of holder (:class:`LeadershipEvents`), so that
``kubectl describe lease`` and ``kubectl get events`` tell the same story for Python and
Go candidates. Posting is best effort and off the election's thread: an Event that
cannot be written never delays a renewal.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterator

from ...errors import BackendUnavailable
from ...record import LeaderRecord
from .lease import GROUP_VERSION

__all__ = ["EVENTS", "EVENT_FLUSH_SECONDS", "watch_events", "LeadershipEvents"]

log = logging.getLogger(__name__)

EVENTS = "/api/v1/namespaces/{namespace}/events"
#: how long close() waits for leadership events still being posted
EVENT_FLUSH_SECONDS = 2.0

#: posts one Event: (namespace, event, timeout) -> (HTTP status, message); may raise BackendUnavailable
PostEvent = Callable[[str, dict[str, Any], float], tuple[int, str]]


def watch_events(raw: Any) -> Iterator[dict[str, Any]]:
    """JSON lines of a watch stream, as they arrive."""
    buffer = b""
    for chunk in raw.stream(amt=None, decode_content=False):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event


class LeadershipEvents:
    """client-go's ``LeaderElection`` Events, one per holder that stops or starts leading."""

    def __init__(self, post: PostEvent, component: str) -> None:
        self._post = post
        self.component = component
        self._guard = threading.Lock()
        self._threads: list[threading.Thread] = []

    def holder_changed(
        self, namespace: str, lease: str, previous: LeaderRecord | None, record: LeaderRecord, obj: Any
    ) -> None:
        """Emit the Events for a write of ``record`` over ``previous`` (nothing if the holder is the same)."""
        before = previous.holder if previous is not None and not previous.decode_error else ""
        if record.holder == before:
            return
        messages = []
        if before:
            messages.append(f"{before} stopped leading")
        if record.holder:
            messages.append(f"{record.holder} became leader")
        meta = obj.get("metadata", {}) if isinstance(obj, dict) else {}
        involved = {
            "apiVersion": GROUP_VERSION,
            "kind": "Lease",
            "name": lease,
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        reporter = record.holder or before
        thread = threading.Thread(
            target=self._send, args=(involved, messages, reporter), name="celery-leader-k8s-event", daemon=True
        )
        with self._guard:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _send(self, involved: dict[str, Any], messages: list[str], reporter: str) -> None:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for message in messages:
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}", "namespace": involved["namespace"]},
                "involvedObject": involved,
                "reason": "LeaderElection",
                "message": message,
                "type": "Normal",
                "source": {"component": self.component},
                "reportingComponent": self.component,
                "reportingInstance": reporter[:128],
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            try:
                status, detail = self._post(involved["namespace"], event, EVENT_FLUSH_SECONDS)
                if not 200 <= status < 300:
                    log.debug("LeaderElection event not recorded: HTTP %s %s", status, detail)
            except BackendUnavailable as exc:
                log.debug("LeaderElection event not recorded: %s", exc)

    def flush(self, timeout: float = EVENT_FLUSH_SECONDS) -> None:
        """Wait (bounded) for Events still being posted: close follows a release."""
        deadline = time.monotonic() + timeout
        with self._guard:
            pending = list(self._threads)
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
