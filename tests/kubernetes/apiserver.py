"""A small Lease API server for the tests: the official client talks to it over a real socket.

There is no Kubernetes API server on the test machines, so this one implements the part
of the API a Lease lock uses, with the real server's rules (from the apiserver's
handlers, the ``coordination.k8s.io`` validation and ``metav1.MicroTime``):

* resourceVersion is one global, increasing revision (etcd's); a PUT with a stale
  resourceVersion is 409 Conflict; a PUT without one is an unconditional update; a PUT of
  an absent Lease is 404 (Leases are not created on update); a duplicate POST is 409
  AlreadyExists; a PUT that changes nothing does not bump the resourceVersion.
* a body that cannot be decoded as a Lease is 400 BadRequest, as the real server answers
  for a MicroTime without zone or without exactly six fraction digits, or a non-integer
  duration; a decoded Lease that fails validation is 422 Invalid (leaseDurationSeconds
  <= 0, leaseTransitions < 0, preferredHolder without strategy, a name that is not a DNS
  subdomain). Unknown fields are dropped with a ``Warning`` header (fieldValidation=Warn,
  the server default); ``known_spec_fields`` simulates a newer server that knows more.
* no Content-Type is required on requests; MicroTimes are returned normalised to UTC.
* watch: chunked JSON lines ``{"type", "object"}`` from a resourceVersion, field selector
  on metadata.name/namespace, ``timeoutSeconds``, BOOKMARK events, and 410 Gone (an ERROR
  event, or an HTTP 410 with ``gone_as_http``) for a resourceVersion older than the
  watch cache; a restart empties the watch cache, as a real restart does.
* bearer-token authentication (401) and per-verb RBAC on leases (403), with
  SelfSubjectAccessReview; core/v1 Events can be posted.

Every response is written with one ``sendall`` (header and body together): separate
writes cost ~40 ms per request through Nagle and delayed ACKs.

Fault injection for tests: :meth:`stop`/:meth:`start` (same port, same data),
:meth:`cut_watches` (streams broken mid-way), :meth:`stall` (accepts, never answers),
:meth:`inject` (store an object as a non-conforming server would return it).

Run on its own: ``python -m tests.kubernetes.apiserver --port 8001``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import http.server
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

GV = "coordination.k8s.io/v1"
_LEASES = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")
_EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events(?:/([^/]+))?$")
_SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Go's time.Parse with RFC3339Micro = "2006-01-02T15:04:05.000000Z07:00": exactly six digits, a zone
_RFC3339_MICRO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})$")
_SPEC_FIELDS = {
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
    "strategy",
    "preferredHolder",
}
_META_FIELDS = {
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
}
_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
}
_STATUS_REASON = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
}


class APIError(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _STATUS_REASON.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_to_utc(value: Any, field: str) -> str:
    """Decode a MicroTime as the Go server does; re-encode it in UTC (MarshalJSON)."""
    if not isinstance(value, str):
        raise APIError(
            400, f"Lease in version \"v1\" cannot be handled as a Lease: json: cannot unmarshal {type(value).__name__} into Go struct field LeaseSpec.spec.{field} of type string"
        )
    m = _RFC3339_MICRO.match(value)
    if not m:
        raise APIError(
            400,
            f"Lease in version \"v1\" cannot be handled as a Lease: parsing time \"{value}\" as "
            f"\"2006-01-02T15:04:05.000000Z07:00\": cannot parse (spec.{field})",
        )
    y, mo, d, h, mi, s, frac, zone = m.groups()
    tz = dt.timezone.utc
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        stamp = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(frac), tzinfo=tz)
    except ValueError as exc:
        raise APIError(400, f"Lease in version \"v1\" cannot be handled as a Lease: parsing time \"{value}\": {exc}") from None
    return stamp.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _int32(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise APIError(
            400,
            f"Lease in version \"v1\" cannot be handled as a Lease: json: cannot unmarshal {json.dumps(value)} "
            f"into Go struct field LeaseSpec.spec.{field} of type int32",
        )
    value = int(value)
    if not -(2**31) <= value < 2**31:
        raise APIError(400, f"Lease in version \"v1\" cannot be handled as a Lease: spec.{field} overflows int32")
    return value


class LeaseAPIServer:
    """The Lease API, in threads of this process; data survives :meth:`stop`/:meth:`start`."""

    def __init__(
        self,
        port: int = 0,
        *,
        token: str | None = "test-token",
        namespaces: tuple[str, ...] = ("default",),
        known_spec_fields: tuple[str, ...] = (),
        watch_cache_size: int = 1000,
        bookmark_interval: float = 1.0,
        gone_as_http: bool = False,
    ) -> None:
        self.port = port
        self.token = token
        self.namespaces = set(namespaces)
        self.known_spec_fields = set(known_spec_fields)
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        #: None: every verb allowed; else the verbs allowed on leases
        self.allowed_verbs: set[str] | None = None
        self.cond = threading.Condition()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.revision = 1
        self.history: collections.deque[tuple[int, str, str, dict[str, Any]]] = collections.deque(maxlen=watch_cache_size)
        self.compacted = 0  # watches from a resourceVersion below this get 410 Gone
        self.events: list[dict[str, Any]] = []
        self.requests: collections.Counter[str] = collections.Counter()
        self.warnings: list[str] = []
        self._stalled = 0
        #: requests received and held unanswered by :meth:`stall` right now
        self.held = 0
        self._watch_generation = 0
        #: watch streams started (each from then on sees every change and every cut), and open now
        self.watches_started = 0
        self.watches_open = 0
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopping = False

    # --- lifecycle ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LeaseAPIServer:
        handler = type("BoundHandler", (_Handler,), {"api": self})
        server = _TCPServer(("127.0.0.1", self.port), handler)
        self.port = server.server_address[1]
        self._stopping = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and break every open connection (data is kept)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        with self.cond:
            self.cond.notify_all()
        server.shutdown()
        server.server_close()
        with self.cond:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def restart(self, *, keep_watch_cache: bool = False) -> None:
        """Stop and start on the same port. A real restart loses the watch cache: old
        resourceVersions then get 410 Gone."""
        self.stop()
        if not keep_watch_cache:
            self.forget_watch_cache()
        self.start()

    def forget_watch_cache(self) -> None:
        with self.cond:
            self.history.clear()
            self.compacted = self.revision

    def cut_watches(self) -> None:
        """Break every open watch stream mid-way (no terminating chunk)."""
        with self.cond:
            self._watch_generation += 1
            self.cond.notify_all()

    @contextlib.contextmanager
    def stall(self) -> Iterator[None]:
        """Accept connections and requests but answer none while inside."""
        with self.cond:
            self._stalled += 1
        try:
            yield
        finally:
            with self.cond:
                self._stalled -= 1
                self.cond.notify_all()

    def __enter__(self) -> LeaseAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path | str, namespace: str = "default", token: str | None = None) -> Path:
        """A kubeconfig (JSON is YAML) pointing at this server."""
        user: dict[str, Any] = {}
        if token or self.token:
            user["token"] = token or self.token
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
            "current-context": "test",
        }
        path = Path(path)
        path.write_text(json.dumps(doc, indent=1))
        return path

    # --- data helpers for tests ---

    def add_namespace(self, namespace: str) -> None:
        self.namespaces.add(namespace)

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects.get((namespace, name))
            return json.loads(json.dumps(obj)) if obj else None

    def inject(self, namespace: str, obj: dict[str, Any]) -> str:
        """Store ``obj`` as it is, without validation (what a non-conforming server would return)."""
        with self.cond:
            name = obj["metadata"]["name"]
            exists = (namespace, name) in self.objects
            obj = json.loads(json.dumps(obj))
            obj["metadata"].setdefault("uid", str(uuid.uuid4()))
            obj["metadata"]["namespace"] = namespace
            return self._commit(namespace, name, obj, "MODIFIED" if exists else "ADDED")

    def delete(self, namespace: str, name: str) -> None:
        with self.cond:
            obj = self.objects.pop((namespace, name))
            self.revision += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.revision)
            self._record(namespace, "DELETED", obj)

    # --- the store (call with self.cond held) ---

    def _commit(self, namespace: str, name: str, obj: dict[str, Any], kind: str) -> str:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.objects[(namespace, name)] = obj
        self._record(namespace, kind, obj)
        return str(self.revision)

    def _record(self, namespace: str, kind: str, obj: dict[str, Any]) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted = self.history[0][0]
        self.history.append((self.revision, namespace, kind, json.loads(json.dumps(obj))))
        self.cond.notify_all()

    # --- request handling (called from handler threads) ---

    def authorize(self, headers: Any, verb: str, namespace: str, name: str | None) -> None:
        if self.token is not None:
            if headers.get("Authorization", "") != f"Bearer {self.token}":
                raise APIError(401, "Unauthorized")
        if self.allowed_verbs is not None and verb not in self.allowed_verbs:
            target = f'leases.coordination.k8s.io "{name}"' if name else "leases.coordination.k8s.io"
            raise APIError(
                403,
                f'{target} is forbidden: User "system:serviceaccount:{namespace}:test" cannot {verb} '
                f'resource "leases" in API group "coordination.k8s.io" in the namespace "{namespace}"',
                details={"name": name or "", "group": "coordination.k8s.io", "kind": "leases"},
            )

    def decode_lease(self, body: bytes, content_type: str | None, namespace: str, url_name: str | None) -> tuple[dict[str, Any], list[str]]:
        """Decode and validate a Lease body as the real server does; returns (object, warnings)."""
        if content_type and "json" not in content_type.split(";")[0]:
            raise APIError(415, f"the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})")
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise APIError(400, f"the object provided is unrecognized: {exc}") from None
        if not isinstance(obj, dict):
            raise APIError(400, "the object provided is unrecognized: not a JSON object")
        if obj.get("kind") not in (None, "Lease") or obj.get("apiVersion") not in (None, GV):
            raise APIError(400, f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API version ({GV})")
        warnings: list[str] = []
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        if not isinstance(meta, dict) or not isinstance(spec, dict):
            raise APIError(400, "Lease in version \"v1\" cannot be handled as a Lease: metadata and spec must be objects")
        for key in list(meta):
            if key not in _META_FIELDS:
                warnings.append(f'unknown field "metadata.{key}"')
                del meta[key]
        for key in ("labels", "annotations"):
            value = meta.get(key)
            if value is not None and (not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())):
                raise APIError(400, f"Lease in version \"v1\" cannot be handled as a Lease: metadata.{key} must map strings to strings")
        clean: dict[str, Any] = {}
        for key, value in spec.items():
            if key in ("acquireTime", "renewTime"):
                if value is not None:
                    clean[key] = _micro_to_utc(value, key)
            elif key in ("leaseDurationSeconds", "leaseTransitions"):
                if value is not None:
                    clean[key] = _int32(value, key)
            elif key in ("holderIdentity", "strategy", "preferredHolder"):
                if value is not None and not isinstance(value, str):
                    raise APIError(400, f"Lease in version \"v1\" cannot be handled as a Lease: json: cannot unmarshal {type(value).__name__} into Go struct field LeaseSpec.spec.{key} of type string")
                if value is not None:
                    clean[key] = value
            elif key in self.known_spec_fields:
                clean[key] = value
            else:
                warnings.append(f'unknown field "spec.{key}"')
        name = meta.get("name")
        if url_name is not None and name not in (None, url_name):
            raise APIError(400, f"the name of the object ({name}) does not match the name on the URL ({url_name})")
        name = name or url_name
        if meta.get("namespace") not in (None, "", namespace):
            raise APIError(400, "the namespace of the provided object does not match the namespace sent on the request")
        causes = []
        if not name:
            causes.append(("metadata.name", "Required value: name or generateName is required"))
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            causes.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \'-\' or \'.\''))
        if clean.get("leaseDurationSeconds") is not None and clean["leaseDurationSeconds"] <= 0:
            causes.append(("spec.leaseDurationSeconds", f"Invalid value: {clean['leaseDurationSeconds']}: must be greater than 0"))
        if clean.get("leaseTransitions") is not None and clean["leaseTransitions"] < 0:
            causes.append(("spec.leaseTransitions", f"Invalid value: {clean['leaseTransitions']}: must be greater than or equal to 0"))
        strategy = clean.get("strategy")
        if strategy is not None and strategy != "OldestEmulationVersion" and "/" not in strategy:
            causes.append(("spec.strategy", f'Unsupported value: "{strategy}"'))
        if clean.get("preferredHolder") and not strategy:
            causes.append(("spec.preferredHolder", "Forbidden: may only be specified if `strategy` is defined"))
        if causes:
            message = f'Lease.coordination.k8s.io "{name}" is invalid: ' + ", ".join(f"{f}: {m}" for f, m in causes)
            raise APIError(
                422,
                message,
                details={"name": name, "group": "coordination.k8s.io", "kind": "Lease", "causes": [{"field": f, "message": m} for f, m in causes]},
            )
        meta = dict(meta)
        meta["name"] = name
        meta["namespace"] = namespace
        return {"apiVersion": GV, "kind": "Lease", "metadata": meta, "spec": clean}, warnings

    def create(self, namespace: str, obj: dict[str, Any], manager: str) -> dict[str, Any]:
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise APIError(500, "resourceVersion should not be set on objects to be created")
        name = meta["name"]
        with self.cond:
            if namespace not in self.namespaces:
                raise APIError(404, f'namespaces "{namespace}" not found', details={"name": namespace, "kind": "namespaces"})
            if (namespace, name) in self.objects:
                raise APIError(
                    409,
                    f'leases.coordination.k8s.io "{name}" already exists',
                    reason="AlreadyExists",
                    details={"name": name, "group": "coordination.k8s.io", "kind": "leases"},
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now_rfc3339()
            meta["managedFields"] = [_managed(manager, obj["spec"])]
            for key in ("deletionTimestamp", "generation", "selfLink"):
                meta.pop(key, None)
            self._commit(namespace, name, obj, "ADDED")
            return json.loads(json.dumps(obj))

    def replace(self, namespace: str, name: str, obj: dict[str, Any], manager: str) -> dict[str, Any]:
        meta = obj["metadata"]
        expected = meta.get("resourceVersion")
        with self.cond:
            current = self.objects.get((namespace, name))
            if current is None:
                raise APIError(404, f'leases.coordination.k8s.io "{name}" not found', details={"name": name, "group": "coordination.k8s.io", "kind": "leases"})
            if expected and expected != current["metadata"]["resourceVersion"]:
                raise APIError(
                    409,
                    f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    details={"name": name, "group": "coordination.k8s.io", "kind": "leases"},
                )
            cur_meta = current["metadata"]
            for key in ("uid", "creationTimestamp"):
                meta[key] = cur_meta.get(key)
            meta.pop("managedFields", None)
            meta["resourceVersion"] = cur_meta["resourceVersion"]
            fields = {k: v for k, v in meta.items() if v not in (None, {}, [])}
            unchanged = obj["spec"] == current.get("spec") and fields == {
                k: v for k, v in cur_meta.items() if k != "managedFields" and v not in (None, {}, [])
            }
            if unchanged:
                # etcd3 store: a no-op update is not written and keeps its resourceVersion
                return json.loads(json.dumps(current))
            meta["managedFields"] = [_managed(manager, obj["spec"])]
            self._commit(namespace, name, obj, "MODIFIED")
            return json.loads(json.dumps(obj))

    def list(self, namespace: str, name: str | None) -> dict[str, Any]:
        with self.cond:
            items = [
                json.loads(json.dumps(o))
                for (ns, n), o in sorted(self.objects.items())
                if ns == namespace and (name is None or n == name)
            ]
            return {"kind": "LeaseList", "apiVersion": GV, "metadata": {"resourceVersion": str(self.revision)}, "items": items}

    def access_review(self, body: bytes) -> dict[str, Any]:
        try:
            review = json.loads(body)
            attrs = review["spec"]["resourceAttributes"]
        except (ValueError, KeyError, TypeError):
            raise APIError(400, "SelfSubjectAccessReview needs spec.resourceAttributes") from None
        allowed = attrs.get("resource") != "leases" or self.allowed_verbs is None or attrs.get("verb") in self.allowed_verbs
        review["status"] = {"allowed": allowed}
        if not allowed:
            review["status"]["reason"] = "no RBAC policy matched"
        return review


def _managed(manager: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": "Update",
        "apiVersion": GV,
        "time": _now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {f"f:{k}": {} for k in sorted(spec)}},
    }


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that went away (closed watch, timeout): normal
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: LeaseAPIServer

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.api.cond:
            self.api._connections.add(self.request)

    def finish(self) -> None:
        with self.api.cond:
            self.api._connections.discard(self.request)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    # --- plumbing ---

    def _send(self, code: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        head = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}", "Content-Type: application/json", f"Content-Length: {len(body)}", f"Audit-Id: {uuid.uuid4()}"]
        head += [f"{k}: {v}" for k, v in headers or []]
        # one write: header and body together
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _wait_if_stalled(self) -> bool:
        with self.api.cond:
            if self.api._stalled:
                self.api.held += 1
                try:
                    while self.api._stalled and not self.api._stopping:
                        self.api.cond.wait(0.1)
                finally:
                    self.api.held -= 1
            return not self.api._stopping

    def _dispatch(self) -> None:
        body = self._body()
        if not self._wait_if_stalled():
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = unquote(parts.path)
        self.api.requests[self.command] += 1
        try:
            if self._route(path, query, body) is False:
                raise APIError(404, "the server could not find the requested resource")
        except APIError as exc:
            self._send(exc.code, exc.status())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _route(self, path: str, query: dict[str, str], body: bytes) -> bool | None:
        api = self.api
        manager = query.get("fieldManager") or (self.headers.get("User-Agent") or "unknown").split("/")[0]
        if path == _SSAR and self.command == "POST":
            # every authenticated user may review its own access
            if api.token is not None and self.headers.get("Authorization", "") != f"Bearer {api.token}":
                raise APIError(401, "Unauthorized")
            self._send(201, api.access_review(body))
            return True
        m = _EVENTS.match(path)
        if m:
            namespace = m.group(1)
            if api.token is not None and self.headers.get("Authorization", "") != f"Bearer {api.token}":
                raise APIError(401, "Unauthorized")
            if self.command == "POST":
                event = json.loads(body or b"{}")
                with api.cond:
                    api.events.append(event)
                self._send(201, event)
                return True
            if self.command == "GET":
                with api.cond:
                    items = [e for e in api.events if (e.get("metadata") or {}).get("namespace") == namespace]
                self._send(200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items})
                return True
            raise APIError(405, "method not allowed")
        m = _LEASES.match(path)
        if not m:
            return False
        namespace, name = m.group(1), m.group(2)
        if name is None:
            if self.command == "GET":
                selector = _field_selector(query.get("fieldSelector", ""), namespace)
                watching = query.get("watch", "").lower() in ("true", "1")
                api.authorize(self.headers, "watch" if watching else "list", namespace, None)
                with api.cond:
                    api.requests["watch" if watching else "list"] += 1
                if watching:
                    self._watch(namespace, selector, query)
                else:
                    self._send(200, api.list(namespace, selector))
                return True
            if self.command == "POST":
                api.authorize(self.headers, "create", namespace, None)
                obj, warnings = api.decode_lease(body, self.headers.get("Content-Type"), namespace, None)
                created = api.create(namespace, obj, manager)
                self._send(201, created, _warning_headers(api, warnings))
                return True
            raise APIError(405, "method not allowed")
        if self.command == "GET":
            api.authorize(self.headers, "get", namespace, name)
            with api.cond:
                api.requests["get"] += 1
            obj = api.lease(namespace, name)
            if obj is None:
                raise APIError(404, f'leases.coordination.k8s.io "{name}" not found', details={"name": name, "group": "coordination.k8s.io", "kind": "leases"})
            self._send(200, obj)
            return True
        if self.command == "PUT":
            api.authorize(self.headers, "update", namespace, name)
            obj, warnings = api.decode_lease(body, self.headers.get("Content-Type"), namespace, name)
            self._send(200, api.replace(namespace, name, obj, manager), _warning_headers(api, warnings))
            return True
        if self.command == "DELETE":
            api.authorize(self.headers, "delete", namespace, name)
            with api.cond:
                if (namespace, name) not in api.objects:
                    raise APIError(404, f'leases.coordination.k8s.io "{name}" not found')
                api.delete(namespace, name)
            self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "kind": "leases"}})
            return True
        raise APIError(405, "method not allowed")

    # --- watch ---

    def _chunk(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _watch(self, namespace: str, name: str | None, query: dict[str, str]) -> None:
        api = self.api
        rv_text = query.get("resourceVersion", "")
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            raise APIError(400, "timeoutSeconds must be an integer") from None
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        gone = False
        with api.cond:
            generation = api._watch_generation
            initial: list[dict[str, Any]] = []
            if rv_text in ("", "0"):
                start = api.revision
                initial = [
                    {"type": "ADDED", "object": json.loads(json.dumps(o))}
                    for (ns, n), o in sorted(api.objects.items())
                    if ns == namespace and (name is None or n == name)
                ]
            else:
                try:
                    start = int(rv_text)
                except ValueError:
                    raise APIError(400, f"resourceVersion: Invalid value: {rv_text!r}") from None
                gone = start < api.compacted
            if gone:
                api.requests["watch gone"] += 1
                if api.gone_as_http:
                    raise APIError(410, f"too old resource version: {start} ({api.compacted})")
            else:
                api.watches_started += 1
                api.watches_open += 1
        try:
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\n\r\n"
            )
            if gone:
                status = APIError(410, f"too old resource version: {start} ({api.compacted})").status()
                self._chunk({"type": "ERROR", "object": status})
                self.wfile.write(b"0\r\n\r\n")
                return
            for event in initial:
                self._chunk(event)
            deadline = time.monotonic() + timeout
            last_bookmark = time.monotonic()
            sent = start
            while True:
                with api.cond:
                    while True:
                        if api._stopping or api._watch_generation != generation:
                            cut = True
                            break
                        pending = [h for h in api.history if h[0] > sent]
                        now = time.monotonic()
                        if pending or now >= deadline or (bookmarks and now - last_bookmark >= api.bookmark_interval):
                            cut = False
                            break
                        wait = deadline - now
                        if bookmarks:
                            wait = min(wait, api.bookmark_interval - (now - last_bookmark))
                        api.cond.wait(max(0.001, wait))
                    revision = api.revision
                if cut:
                    # break the stream mid-way: no terminating chunk
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.request.shutdown(socket.SHUT_RDWR)
                    return
                for _rev, ns, kind, obj in pending:
                    if ns == namespace and (name is None or obj["metadata"]["name"] == name):
                        self._chunk({"type": kind, "object": obj})
                # every event up to this revision was sent or does not match
                sent = max(sent, revision)
                if time.monotonic() >= deadline:
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if bookmarks and time.monotonic() - last_bookmark >= api.bookmark_interval:
                    last_bookmark = time.monotonic()
                    self._chunk({"type": "BOOKMARK", "object": {"kind": "Lease", "apiVersion": GV, "metadata": {"resourceVersion": str(sent)}}})
        finally:
            if not gone:
                with api.cond:
                    api.watches_open -= 1


def _field_selector(selector: str, namespace: str) -> str | None:
    name = None
    for term in filter(None, selector.split(",")):
        m = re.match(r"^(metadata\.name|metadata\.namespace)(==|=)(.*)$", term)
        if not m:
            raise APIError(400, f'"{term.split("=")[0]}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        if m.group(1) == "metadata.name":
            name = m.group(3)
        elif m.group(3) != namespace:
            name = "\x00no-match"
    return name


def _warning_headers(api: LeaseAPIServer, warnings: list[str]) -> list[tuple[str, str]]:
    if warnings:
        with api.cond:
            api.warnings.extend(warnings)
    return [("Warning", f'299 - "{w}"'.replace("\n", " ")) for w in warnings]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--namespace", action="append", default=["default"])
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for this server here")
    args = parser.parse_args(argv)
    server = LeaseAPIServer(args.port, token=args.token or None, namespaces=tuple(args.namespace)).start()
    if args.kubeconfig:
        server.write_kubeconfig(args.kubeconfig, namespace=args.namespace[-1])
    print(f"listening on {server.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
