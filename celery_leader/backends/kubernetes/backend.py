"""``kubernetes://NAMESPACE``: a ``coordination.k8s.io/v1`` Lease, written exactly as client-go writes it.

Python candidates and Go (client-go) candidates can share one Lease: the spec carries
``holderIdentity``, ``leaseDurationSeconds`` (whole seconds, rounded *up*),
``acquireTime``/``renewTime`` (MicroTime: UTC, six fraction digits) and ``leaseTransitions``.
Compare-and-swap is the API server's ``resourceVersion`` check (409 on a stale PUT).

Requests go through the official ``kubernetes`` client (its configuration loading, auth,
TLS and connection pool), but bodies are plain dicts sent with
:meth:`ApiClient.param_serialize`/:meth:`ApiClient.call_api`: the typed models reject
or drop fields they do not know, and we must write back every field we read
(``strategy``, labels, annotations, fields of newer servers).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

# the extra is optional: the registry turns an ImportError here into the "pip install" to run
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from ...errors import BackendUnavailable, ConfigurationError, Conflict
from ...lock import Backend, Capabilities, Lock, Versioned
from ...record import LeaderRecord
from ...urls import UrlOptions, redact
from .events import EVENT_FLUSH_SECONDS, EVENTS, LeadershipEvents, watch_events
from .lease import lease_body, lease_to_record, resource_version

__all__ = ["KubernetesBackend", "KubernetesLock", "RBAC_VERBS"]

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(linearizable=True, watch=True, partition_safe=True)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
LEASE = LEASES + "/{name}"
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
RBAC_VERBS = ("get", "create", "update", "watch")

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_URL_OPTIONS = {"kubeconfig", "context", "events", "request_timeout", "field_manager"}


# --- HTTP plumbing ---


class _Response:
    """Status, decoded JSON body and the raw stream of one API call."""

    def __init__(self, status: int, data: Any, raw: Any = None) -> None:
        self.status = status
        self.data = data
        self.raw = raw

    @property
    def message(self) -> str:
        if isinstance(self.data, dict):
            return str(self.data.get("message") or self.data.get("reason") or "")[:300]
        return ""


def _rbac_error(namespace: str, verb: str, detail: str) -> ConfigurationError:
    return ConfigurationError(
        f"the Kubernetes API refused to {verb} Leases in namespace {namespace!r} ({detail}). "
        f"The service account needs a Role with verbs {', '.join(RBAC_VERBS)} on resource 'leases' "
        f"in apiGroup 'coordination.k8s.io' (and 'create' on 'events' if events are enabled), bound "
        f"with a RoleBinding in that namespace; see docs/kubernetes.md"
    )


#: seconds of watch a kept stream asks for (a real API server may end it sooner: its
#: --min-request-timeout, 1800 s by default, randomized); the next wait then opens another
KEPT_WATCH_SECONDS = 300.0


class _Stream:
    """One watch stream: its response, its events as read, the versions it showed."""

    __slots__ = ("raw", "events", "seen", "resume", "pid", "changed_to")

    def __init__(self, raw: Any, start: str | None) -> None:
        self.raw = raw
        self.events = watch_events(raw)
        #: resourceVersions of the Lease this stream delivered, oldest first: every change
        #: after them comes on this stream, in order
        self.seen: collections.deque[str] = collections.deque(maxlen=8)
        #: where a new watch would resume (the last event's or bookmark's version)
        self.resume = start
        self.pid = os.getpid()
        #: the version the last change on this stream showed (``None`` after a deletion):
        #: the record a hinted wait hands back
        self.changed_to: str | None = None


def _bound_reads(stream: _Stream, deadline: float) -> bool:
    """Make the stream's next socket read time out at ``deadline`` (urllib3 sets one read
    timeout per request, which a kept stream's later waits and every event would extend)."""
    conn = getattr(stream.raw, "connection", None) or getattr(stream.raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:
        return False
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    return True


class KubernetesLock(Lock):
    """One Lease. Thread-safe; many locks share their backend's connection pool."""

    capabilities = CAPABILITIES

    def __init__(self, backend: KubernetesBackend, name: str) -> None:
        self._backend = backend
        self.name = name
        self.namespace = backend.namespace
        self._guard = threading.Lock()
        #: resourceVersion -> the Lease as last read or written, so that an update sends
        #: back every field (labels, annotations, strategy, managedFields) it came with
        self._seen: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._watches: set[Any] = set()
        #: the stream the last wait ended on, for the next wait (read by one thread at a time)
        self._kept: _Stream | None = None
        self._watch_guard = threading.Lock()
        #: counted for tests and benchmarks: watch requests made, waits served by a kept stream
        self.watches_opened = 0
        self.kept_watch_waits = 0
        self._closed = False

    # --- cache ---

    def _remember(self, obj: dict[str, Any]) -> str:
        version = resource_version(obj)
        if not version:
            raise BackendUnavailable(f"the API server returned Lease {self.name!r} without a resourceVersion")
        with self._guard:
            self._seen[version] = obj
            self._seen.move_to_end(version)
            while len(self._seen) > 16:
                self._seen.popitem(last=False)
        return version

    def _cached(self, version: str) -> dict[str, Any] | None:
        with self._guard:
            return self._seen.get(version)

    # --- the contract ---

    def get(self, timeout: float) -> Versioned | None:
        resp = self._backend._call("GET", LEASE, self.namespace, self.name, timeout=timeout)
        if resp.status == 404:
            return None
        self._check(resp, "get")
        obj = resp.data
        if not isinstance(obj, dict):
            raise BackendUnavailable(f"the API server returned a non-object for Lease {self.name!r}")
        version = self._remember(obj)
        record = lease_to_record(obj)
        if record.decode_error:
            log.debug("Lease %s/%s is not a leader record: %s", self.namespace, self.name, record.decode_error)
        return Versioned(record, version)

    def create(self, record: LeaderRecord, timeout: float) -> str:
        body = lease_body(self.namespace, self.name, record, None, None)
        resp = self._backend._call("POST", LEASES, self.namespace, None, timeout=timeout, body=body)
        if resp.status == 409:
            raise Conflict(f"Lease {self.namespace}/{self.name} already exists")
        if resp.status == 404:
            raise ConfigurationError(
                f"cannot create Lease {self.name!r}: namespace {self.namespace!r} does not exist "
                f"({resp.message}); create it or use kubernetes://<existing-namespace>"
            )
        self._check(resp, "create")
        version = self._remember(resp.data)
        self._backend._leadership_event(self, None, record, resp.data)
        self._drop_kept()
        return version

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        base = self._cached(expected_version)
        if base is None:
            # a version this object never saw (another Lock read it): send back the
            # stored object only if it is still at that version
            current = self.get(timeout)
            if current is None or current.version != expected_version:
                raise Conflict(f"Lease {self.namespace}/{self.name} changed since version {expected_version}")
            base = self._cached(expected_version)
            if base is None:  # pragma: no cover - evicted by 16 concurrent writes
                raise Conflict(f"Lease {self.namespace}/{self.name} is changing fast; read it again")
        previous = lease_to_record(base)
        body = lease_body(self.namespace, self.name, record, base, expected_version)
        resp = self._backend._call(
            "PUT", LEASE, self.namespace, self.name, timeout=max(0.001, deadline - time.monotonic()), body=body
        )
        if resp.status in (404, 409):
            raise Conflict(f"Lease {self.namespace}/{self.name}: {resp.message or resp.status}")
        self._check(resp, "update")
        version = self._remember(resp.data)
        self._backend._leadership_event(self, previous, record, resp.data)
        self._drop_kept()
        return version

    def _check(self, resp: _Response, verb: str) -> None:
        self._backend._check(resp, verb, self.name)
        if not isinstance(resp.data, dict):
            raise BackendUnavailable(f"the API server answered {verb} of Lease {self.name!r} without an object")

    # --- watch ---

    def wait_for_change(self, version: str | None, timeout: float) -> None:
        self._wait_changed(version, timeout)

    def wait_for_change_hinted(self, version: str | None, timeout: float) -> Versioned | None:
        """The watch event carries the whole Lease: it is the hint (a standby that follows
        a renewing leader need not read the Lease again after every renewal)."""
        changed_to = self._wait_changed(version, timeout)
        if changed_to is None:
            return None
        obj = self._cached(changed_to)
        return Versioned(lease_to_record(obj), changed_to) if obj is not None else None

    def _wait_changed(self, version: str | None, timeout: float) -> str | None:
        """Watch this one Lease (field selector on its name) from ``version``.

        Returns on the first event that is not ``version``; reconnects when the stream
        ends or breaks. On 410 Gone (``version`` is older than the API server's watch
        cache) it reads the Lease again and, if unchanged, watches on from "now", whose
        initial ADDED event shows the current state. Only the ``get`` and ``watch`` verbs
        are needed (no ``list``).

        The stream a wait ended on is kept open for the next wait (a standby used to open
        one watch request per renewal of its leader, beside its read). A kept stream has
        delivered, in order, every change after the versions it showed, so a wait for one
        of those versions reads on from it without a new request.

        Returns the version the Lease changed to when the change showed it (it is then in
        the cache, :meth:`_cached`), else ``None`` (no change, a deletion, or unknown).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if self._closed:
            return None
        if not self._watch_guard.acquire(blocking=False):
            return self._wait(version, deadline, keep=False)  # another thread reads the kept stream
        try:
            kept, self._kept = self._kept, None
            if kept is not None:
                if version is not None and version in kept.seen and kept.pid == os.getpid():
                    self.kept_watch_waits += 1
                    if kept.seen[-1] != version:
                        self._kept = kept  # a change after ``version`` came on it already
                        return kept.changed_to
                    try:
                        outcome = self._read(kept, version, deadline)
                    except BackendUnavailable as exc:  # (dropped) watch anew below
                        log.debug("kept watch of Lease %s/%s broke: %s", self.namespace, self.name, exc)
                        outcome = "broke"
                    if outcome == "changed":
                        if self._closed:
                            self._drop(kept)
                        else:
                            self._kept = kept
                        return kept.changed_to
                    if outcome == "deadline":
                        return None  # no change in the whole wait (its stream timed out: dropped)
                else:
                    self._drop(kept)  # a version it never showed (another lock wrote, or it is old)
            return self._wait(version, deadline, keep=True)
        finally:
            self._watch_guard.release()

    def _wait(self, version: str | None, deadline: float, keep: bool) -> str | None:
        # no version yet: watch from "now"; a Lease created since the caller's read shows
        # up as the stream's initial ADDED event
        start: str | None = version
        while not self._closed:
            if deadline - time.monotonic() <= 0.0:
                return None
            try:
                outcome, start, changed_to = self._watch_once(version, start, deadline, keep)
                if outcome == "changed":
                    return changed_to
                if outcome == "deadline":
                    return None
                if outcome == "gone":
                    resp = self._backend._call(
                        "GET", LEASE, self.namespace, self.name, timeout=max(0.001, deadline - time.monotonic())
                    )
                    if resp.status == 404:
                        return None
                    self._backend._check(resp, "get", self.name)
                    current = resource_version(resp.data) if isinstance(resp.data, dict) else None
                    if current != version:
                        # changed: the read is the hint (unless it came without a version)
                        return self._remember(resp.data) if current else None
                    start = None
            except BackendUnavailable as exc:
                log.debug("watch of Lease %s/%s broke: %s", self.namespace, self.name, exc)
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        return None

    def _watch_once(
        self, version: str | None, start: str | None, deadline: float, keep: bool
    ) -> tuple[str, str | None, str | None]:
        """One watch request. Returns ("changed"|"gone"|"ended"|"deadline", resourceVersion
        to resume from, the version the Lease changed to if the change showed it).

        With ``keep``, a stream that showed a change is left open in ``_kept``.
        """
        remaining = max(0.001, deadline - time.monotonic())
        # a stream that may be kept asks the server for a long watch; each wait bounds its
        # own reads (a read that times out ends the stream: the next wait opens another)
        seconds = max(remaining, KEPT_WATCH_SECONDS) if keep else remaining
        query: list[tuple[str, str]] = [
            ("watch", "true"),
            ("fieldSelector", f"metadata.name={self.name}"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(max(1, int(math.ceil(seconds))))),
        ]
        if start:
            query.append(("resourceVersion", start))
        resp = self._backend._call(
            "GET", LEASES, self.namespace, None, timeout=remaining, query=query, stream=True, read_timeout=remaining
        )
        if resp.status == 410:
            return "gone", start, None
        self._backend._check(resp, "watch", self.name)
        stream = _Stream(resp.raw, start)
        self.watches_opened += 1
        with self._guard:
            self._watches.add(stream.raw)
        kept = False
        try:
            if self._closed:
                # close() ran while this request waited for its answer: it had no stream to
                # shut down then (it sets the flag before it looks at the registered streams)
                return "ended", start, None
            outcome = self._read(stream, version, deadline, own=True)
            if outcome == "changed" and keep and not self._closed:
                self._kept, kept = stream, True
            return outcome, stream.resume or start, stream.changed_to if outcome == "changed" else None
        finally:
            if not kept:
                self._drop(stream)

    def _read(self, stream: _Stream, version: str | None, deadline: float, own: bool = False) -> str:
        """Read ``stream`` until an event that is not ``version``: "changed", "gone", "ended"
        (the server closed it) or "deadline" (nothing before ``deadline``; the stream is then
        dropped). A kept stream (not ``own``) is dropped on anything but "changed"."""
        outcome = "ended"
        try:
            if not _bound_reads(stream, deadline) and not own:
                return outcome
            for event in stream.events:
                kind = event.get("type")
                raw_obj = event.get("object")
                obj: dict[str, Any] = raw_obj if isinstance(raw_obj, dict) else {}
                rv = resource_version(obj)
                if kind in ("ADDED", "MODIFIED"):
                    if rv is not None:
                        stream.seen.append(rv)
                        stream.resume = rv
                        if rv != version:
                            self._remember(obj)
                            stream.changed_to = rv
                            outcome = "changed"
                            return outcome
                elif kind == "DELETED":
                    stream.changed_to = None
                    outcome = "changed"
                    return outcome
                elif kind == "BOOKMARK":
                    stream.resume = rv or stream.resume
                elif kind == "ERROR":
                    if obj.get("code") == 410:
                        outcome = "gone"
                        return outcome
                    raise BackendUnavailable(f"watch error: {str(obj.get('message'))[:200]}")
                _bound_reads(stream, deadline)  # the next read still ends by this wait's deadline
            return outcome
        except urllib3.exceptions.ReadTimeoutError:
            outcome = "deadline" if time.monotonic() >= deadline - 0.01 else "ended"
            return outcome
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self._closed:
                return outcome
            raise BackendUnavailable(f"watch stream broke: {exc}") from exc
        finally:
            if not own and outcome != "changed":
                self._drop(stream)

    def _drop_kept(self) -> None:
        """A writer leads and does not wait: a kept stream would only fill up with its own writes."""
        if self._kept is not None:
            with self._guard:
                kept, self._kept = self._kept, None
            if kept is not None:
                self._drop(kept)

    def _drop(self, stream: _Stream) -> None:
        with self._guard:
            self._watches.discard(stream.raw)
        if stream.pid == os.getpid():
            # never hand a half-read stream back to the pool
            stream.raw.close()

    def close(self) -> None:
        self._closed = True
        with self._guard:
            watches = list(self._watches)
            self._seen.clear()
            self._kept = None
        for raw in watches:
            try:
                raw.shutdown()
            except Exception:  # noqa: BLE001 - best effort on a stream being torn down
                pass

    def describe(self) -> str:
        return f"Kubernetes Lease {self.namespace}/{self.name}"


class KubernetesBackend(Backend):
    """Leases in one namespace, through one official-client ``ApiClient``.

    Configuration: ``api_client`` if given; else ``kubeconfig``/``context`` if given; else
    in-cluster (service account), then the usual kubeconfig (``KUBECONFIG``, ``~/.kube/config``).
    """

    schemes = ("kubernetes", "k8s")
    capabilities = CAPABILITIES

    def __init__(
        self,
        namespace: str | None = None,
        *,
        api_client: Any = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        events: bool = False,
        request_timeout: float | None = None,
        field_manager: str = "celery-leader",
    ) -> None:
        self._own_client = api_client is None
        context_namespace = None
        if api_client is None:
            api_client, context_namespace, self._source = _load_client(kubeconfig, context)
        else:
            self._source = "given ApiClient"
        self.api_client = api_client
        if not namespace:
            namespace = _pod_namespace() or context_namespace or "default"
        if not _NAMESPACE_RE.match(namespace) or len(namespace) > 63:
            raise ConfigurationError(
                f"{namespace!r} is not a Kubernetes namespace name (lowercase letters, digits and '-', "
                "at most 63 characters); write kubernetes://my-namespace"
            )
        self.namespace = namespace
        self.events = events
        if request_timeout is not None and request_timeout <= 0:
            raise ConfigurationError("request_timeout must be > 0 seconds")
        self.request_timeout = request_timeout
        self.field_manager = field_manager
        self._closed = False
        self._leadership_events = LeadershipEvents(self._post_event, field_manager) if events else None

    @classmethod
    def from_url(cls, url: str) -> KubernetesBackend:
        """``kubernetes://[NAMESPACE][?kubeconfig=PATH&context=NAME&events=true&request_timeout=S]``."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in cls.schemes:
            raise ConfigurationError(f"not a kubernetes:// URL: {redact(url)!r}")
        if parts.path.strip("/"):
            raise ConfigurationError(
                f"{redact(url)!r}: a kubernetes:// URL names only the namespace (kubernetes://NAMESPACE); "
                "the election name becomes the Lease name"
            )
        options = UrlOptions(parts.query, scheme=parts.scheme.lower(), known=_URL_OPTIONS)
        return cls(
            parts.netloc or None,
            kubeconfig=options.text("kubeconfig"),
            context=options.text("context"),
            events=options.flag("events", False),
            request_timeout=options.seconds("request_timeout", None, positive=True),
            field_manager=options.text("field_manager", "celery-leader"),
        )

    def lock(self, name: str) -> KubernetesLock:
        if not name or len(name) > 253 or not _NAME_RE.match(name):
            raise ConfigurationError(
                f"election name {name!r} cannot be a Lease name: use lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit (e.g. 'celery-beat')"
            )
        return KubernetesLock(self, name)

    # --- requests ---

    def _call(
        self,
        method: str,
        path: str,
        namespace: str,
        name: str | None,
        *,
        timeout: float,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> _Response:
        """One request through the official client, never outliving ``timeout``."""
        if self._closed:
            raise BackendUnavailable("the Kubernetes backend is closed")
        limit = timeout if self.request_timeout is None else min(timeout, self.request_timeout)
        limit = max(0.001, limit)
        headers = {"Accept": "application/json"}
        query = list(query or [])
        if body is not None:
            headers["Content-Type"] = "application/json"
            if method in ("POST", "PUT") and path.startswith("/apis/coordination"):
                query.append(("fieldManager", self.field_manager))
        params = {"namespace": namespace}
        if name is not None:
            params["name"] = name
        try:
            request = self.api_client.param_serialize(
                method=method,
                resource_path=path,
                path_params=params,
                query_params=query,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            request_timeout: Any = (limit, read_timeout) if stream and read_timeout else limit
            resp = self.api_client.call_api(*request, _request_timeout=request_timeout)
        except k8s_client.ApiException as exc:  # TLS problems come back this way
            raise BackendUnavailable(f"Kubernetes API {method} failed: {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            where = path.replace("{namespace}", namespace).replace("{name}", name or "")
            raise BackendUnavailable(f"Kubernetes API {method} {where} failed: {exc}") from exc
        if stream and 200 <= resp.status < 300:
            return _Response(resp.status, None, resp.response)
        try:
            raw = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendUnavailable(f"Kubernetes API {method}: reading the answer failed: {exc}") from exc
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # not JSON, or nested beyond reason: no data
            data = None
        return _Response(resp.status, data)

    def _check(self, resp: _Response, verb: str, name: str | None) -> None:
        """Map an API status to the lock contract's errors."""
        status = resp.status
        if 200 <= status < 300:
            return
        detail = f"HTTP {status}: {resp.message}" if resp.message else f"HTTP {status}"
        if status == 401:
            raise ConfigurationError(
                f"the Kubernetes API rejected our credentials ({detail}); check the kubeconfig user or the "
                "pod's service-account token (automountServiceAccountToken must not be false)"
            )
        if status == 403:
            raise _rbac_error(self.namespace, verb, detail)
        if status in (400, 422):
            raise ConfigurationError(f"the Kubernetes API refused to {verb} Lease {name!r}: {detail}")
        if status in (404, 409):
            raise Conflict(f"Lease {name!r}: {detail}")
        raise BackendUnavailable(f"Kubernetes API {verb} of Lease {name!r}: {detail}")

    def check(self, timeout: float = 5.0) -> None:
        """Ask the API server whether we may get, create, update and watch Leases here.

        Uses a SelfSubjectAccessReview per verb (always allowed); a server without that
        API falls back to reading a Lease (404 is fine, 403 is not).
        """
        deadline = time.monotonic() + timeout
        verbs = list(RBAC_VERBS)
        missing: list[str] = []
        for verb in verbs:
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "namespace": self.namespace,
                        "verb": verb,
                        "group": "coordination.k8s.io",
                        "resource": "leases",
                    }
                },
            }
            resp = self._call("POST", SSAR, self.namespace, None, timeout=max(0.001, deadline - time.monotonic()), body=review)
            if resp.status == 404:
                probe = self._call(
                    "GET", LEASE, self.namespace, "celery-leader-check", timeout=max(0.001, deadline - time.monotonic())
                )
                if probe.status != 404:
                    self._check(probe, "get", "celery-leader-check")
                return
            self._check(resp, "review access to", None)
            if not ((resp.data or {}).get("status") or {}).get("allowed"):
                missing.append(verb)
        if missing:
            raise ConfigurationError(
                f"the service account may not {', '.join(missing)} Leases in namespace {self.namespace!r}. "
                f"Grant a Role with verbs {', '.join(RBAC_VERBS)} on resource 'leases' in apiGroup "
                "'coordination.k8s.io' and a RoleBinding to the service account; see docs/kubernetes.md"
            )

    # --- events ---

    def _leadership_event(
        self, lock: KubernetesLock, previous: LeaderRecord | None, record: LeaderRecord, obj: Any
    ) -> None:
        """client-go's ``LeaderElection`` Event on a change of holder, when ``events=true``."""
        if self._leadership_events is not None:
            self._leadership_events.holder_changed(lock.namespace, lock.name, previous, record, obj)

    def _post_event(self, namespace: str, event: dict[str, Any], timeout: float) -> tuple[int, str]:
        resp = self._call("POST", EVENTS, namespace, None, timeout=timeout, body=event)
        return resp.status, resp.message

    def close(self) -> None:
        if self._closed:
            return
        if self._leadership_events is not None:
            # let a pending "stopped leading" event go out (bounded): close follows a release
            self._leadership_events.flush(EVENT_FLUSH_SECONDS)
        self._closed = True
        if self._own_client:
            try:
                self.api_client.close()
            except Exception:  # noqa: BLE001 - closing a pool must not raise
                pass

    def describe(self) -> str:
        return f"kubernetes://{self.namespace} ({self._source})"


def _pod_namespace() -> str | None:
    try:
        with open(SA_NAMESPACE_FILE, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _load_client(kubeconfig: str | None, context: str | None) -> tuple[Any, str | None, str]:
    """(ApiClient, kubeconfig context namespace, description): explicit kubeconfig, in-cluster, default kubeconfig."""
    cfg = k8s_client.Configuration()
    namespace = None
    if kubeconfig or context:
        if kubeconfig and not os.path.exists(kubeconfig):
            raise ConfigurationError(f"kubeconfig {kubeconfig!r} does not exist; fix ?kubeconfig=PATH")
        source = f"kubeconfig {kubeconfig or '(default)'}" + (f" context {context}" if context else "")
        try:
            k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
            namespace = _context_namespace(kubeconfig, context)
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot use {source}: {exc}") from exc
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
            source = "in-cluster service account"
        except ConfigException as incluster_error:
            try:
                k8s_config.load_kube_config(client_configuration=cfg)
                namespace = _context_namespace(None, None)
                source = "default kubeconfig"
            except (ConfigException, OSError, ValueError, TypeError) as exc:
                raise ConfigurationError(
                    "no Kubernetes configuration: not in a pod "
                    f"({incluster_error}) and no usable kubeconfig ({exc}); run in a pod with a service account, "
                    "set KUBECONFIG, or write kubernetes://NAMESPACE?kubeconfig=/path/to/kubeconfig"
                ) from exc
    # The loaders' refresh hook assigns ``host`` again before every request, and while the
    # proxy comes from the environment each such assignment scans os.environ (getproxies()):
    # about a sixth of an idle standby's CPU per read. The REST client's pool is built below
    # with the proxy found now and never looks again, so pinning it changes nothing else.
    cfg.proxy = cfg.proxy
    # the engine retries; urllib3's own retries would multiply the caller's timeout
    cfg.retries = False
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, 16)
    api_client = k8s_client.ApiClient(cfg)
    api_client.user_agent = "celery-leader (kubernetes python client)"
    return api_client, namespace, source


def _context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:  # noqa: BLE001 - only a hint for the default namespace
        return None
    chosen = active
    if context:
        chosen = next((c for c in contexts or [] if c.get("name") == context), active)
    return ((chosen or {}).get("context") or {}).get("namespace") or None
