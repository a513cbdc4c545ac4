"""``s3://BUCKET/PREFIX``: the lock is one JSON object, written only with S3 conditional writes.

The object ``PREFIX/NAME.lock.json`` holds the Go seed project's record
(``go.linka.cloud/leaderelection``), so Go and Python candidates can share it. Unlike the
Go seed (which compares the ETag and *then* writes unconditionally, so two writers can
both win), every write here is a conditional ``PutObject``: ``If-None-Match: *`` to
create, ``If-Match: <ETag>`` to update. The server decides the race; 412/409 mean
:class:`~celery_leader.lock.Conflict`.

An ETag is the MD5 of the body, so two identical bodies would get the same ETag and let a
stale ``If-Match`` through: every body carries a fresh nonce (``celeryLeaderNonce``; Go
ignores and drops unknown keys, which is harmless because the next Python write adds a new
one). A server that silently ignores conditional headers would make the lock unsafe, so
the first write (or :meth:`S3Backend.check`) proves on a probe object that the server
refuses a write that must fail, and refuses to run otherwise.

URL query options: ``endpoint_url``, ``region``, ``profile``, ``addressing_style``
(``path``/``virtual``/``auto``), ``verify`` (``true``/``false``/CA bundle path).
Credentials come from the standard AWS chain (environment, profile, instance role);
``s3://KEY:SECRET@BUCKET/PREFIX`` is accepted when the user chooses to put them there.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

try:
    import boto3
    import botocore.exceptions as bce
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
except ImportError as exc:  # pragma: no cover - exercised through the registry
    raise ImportError(
        "the s3:// backend needs boto3; run: pip install 'celery-leader[s3]'", name="boto3"
    ) from exc

from ..lock import Backend, BackendUnavailable, Capabilities, ConfigurationError, Conflict, Lock, Versioned
from ..record import LeaderRecord, decode_or_placeholder, encode_record
from ..urls import UrlOptions, redact, scrub

__all__ = ["S3Backend", "S3Lock", "NONCE_KEY"]

log = logging.getLogger(__name__)

#: capabilities: the server decides every race (conditional writes), S3 reads are strongly
#: consistent; no watch, so followers poll and wake at the expiry moment.
CAPABILITIES = Capabilities(linearizable=True, watch=False, partition_safe=True)

#: body key that makes every write's bytes (and so its ETag) unique
NONCE_KEY = "celeryLeaderNonce"
#: the object that proves conditional writes are enforced (never the lock object itself)
PROBE_NAME = ".celery-leader-probe.json"
#: objects larger than this are not read (a lock record is < 512 bytes)
MAX_BODY = 64 * 1024

#: timeout classes: a call with timeout t uses the client of the largest class <= t, so the
#: number of clients is bounded and the hot path never builds one.
TIMEOUT_CLASSES = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)
MAX_ATTEMPTS = 3
#: reads are GETs of a presigned URL made again after this many seconds (valid for
#: PRESIGN_EXPIRES): a standby polls every retry period, and botocore's per-call work
#: (event hooks, endpoint rules, user agent, signing, parsing some 40 header fields) was
#: two thirds of each poll's CPU
PRESIGN_REFRESH = 60.0
PRESIGN_EXPIRES = 900
#: presigned reads refused this many times in a row (a bucket policy that denies query
#: string authentication, a server without it): read through the regular call only
PRESIGN_REFUSALS = 3

OPTIONS = ("endpoint_url", "region", "profile", "addressing_style", "verify")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING_KEY_CODES = {"NoSuchKey", "NotFound", "404"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "InvalidSecurity"}
_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"}
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling", "ExpiredToken"}
ACTIONS = "s3:GetObject, s3:PutObject and s3:ListBucket"

_deadline = threading.local()


def _quoted(etag: str) -> str:
    """ETags are compared as the server sends them; some servers omit the quotes on PUT."""
    etag = etag.strip()
    if etag.startswith('"') or etag.startswith("W/"):
        return etag
    return f'"{etag}"'


def _timeout_class(timeout: float) -> float:
    # 2 % slack: a 5 s call that has spent a millisecond still gets the 5 s class
    fitting = [c for c in TIMEOUT_CLASSES if c <= timeout * 1.02]
    return fitting[-1] if fitting else TIMEOUT_CLASSES[0]


def _attempt_budget(cls: float) -> tuple[float, float]:
    """(connect, read) timeouts of one attempt.

    Below 1 s one attempt may use the whole class. From 1 s up it gets three quarters,
    so that after a fast failure (refused, 5xx) a retry still fits in large classes; a
    slow answer is worth more than a retry, so the first attempt gets the lion's share.
    """
    total = cls if cls < 1.0 else cls * 0.75
    connect = min(total * 0.25, 1.0)
    return connect, total - connect


def _stop_retrying_past_deadline(attempts: int, **_: Any) -> bool | None:
    """``needs-retry`` hook run before botocore's: no retry that could outlive the call's timeout."""
    limit = getattr(_deadline, "value", None)
    if limit is None:
        return None
    connect, read = _attempt_budget(getattr(_deadline, "cls", 1.0))
    # botocore's worst backoff before attempt n+1 is min(2 ** (n - 1), 20) seconds
    # (its default retry mode does not scale it down for non-throttling errors)
    backoff = min(2.0 ** (attempts - 1), 20.0)
    if time.monotonic() + backoff + connect + read > limit:
        return False
    return None


#: (endpoint, region, bucket, prefix, profile, access key) whose probe passed in this process
_PROVEN: set[tuple[str | None, ...]] = set()
_SESSIONS: dict[str | None, Any] = {}
_SESSIONS_GUARD = threading.Lock()


def _session(profile: str | None) -> Any:
    """One boto3 session per profile, shared: a new session reloads the service models (~80 ms)."""
    with _SESSIONS_GUARD:
        session = _SESSIONS.get(profile)
        if session is None:
            try:
                session = boto3.session.Session(profile_name=profile)
            except bce.ProfileNotFound as exc:
                raise ConfigurationError(
                    f"AWS profile {profile!r} not found in ~/.aws/config or ~/.aws/credentials; "
                    "fix ?profile= or AWS_PROFILE"
                ) from exc
            _SESSIONS[profile] = session
        return session


def _no_expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Drop ``Expect: 100-continue`` (botocore adds it to every PUT): a 200-byte body gains
    nothing from it, and it costs a wait for the interim answer on servers slow to send one."""
    params.get("headers", {}).pop("Expect", None)


class S3Lock(Lock):
    """One lock object ``PREFIX/NAME.lock.json``. Thread-safe (boto3 clients are)."""

    capabilities = CAPABILITIES

    def __init__(self, backend: S3Backend, name: str) -> None:
        if not name or "/" in name:
            raise ConfigurationError(f"election name {name!r} cannot be an S3 object name part; use no '/'")
        self.backend = backend
        self.name = name
        self.key = backend.key_for(f"{name}.lock.json")

    def get(self, timeout: float) -> Versioned | None:
        deadline = time.monotonic() + timeout
        fast = self.backend.presigned_get(self.key, deadline)
        if fast is not None:
            version, size, raw = fast
            if size > MAX_BODY:
                return Versioned(LeaderRecord.undecodable(size, "object too large for a lock record"), version)
            return Versioned(decode_or_placeholder(raw, strip=(NONCE_KEY,)), version)
        try:
            resp = self.backend.call("get_object", deadline, Key=self.key)
        except _Missing:
            return None
        body = resp["Body"]
        try:
            version = _quoted(resp["ETag"])
            size = resp.get("ContentLength")
            if size is not None and size > MAX_BODY:
                return Versioned(LeaderRecord.undecodable(size, "object too large for a lock record"), version)
            raw = body.read(MAX_BODY + 1)
        except (bce.BotoCoreError, OSError) as exc:
            raise BackendUnavailable(f"reading {self.describe()}: {scrub(exc, self.backend.endpoint_url)}") from exc
        finally:
            body.close()
        return Versioned(decode_or_placeholder(raw, strip=(NONCE_KEY,)), version)

    def create(self, record: LeaderRecord, timeout: float) -> str:
        return self._put(record, None, timeout)

    def update(self, record: LeaderRecord, expected_version: str, timeout: float) -> str:
        if not expected_version:
            raise Conflict(f"{self.describe()}: no version to compare with")
        return self._put(record, expected_version, timeout)

    def _put(self, record: LeaderRecord, expected: str | None, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        self.backend.ensure_safe(deadline)
        nonce = uuid.uuid4().hex
        body = encode_record(record, **{NONCE_KEY: nonce})
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            resp = self.backend.call(
                "put_object", deadline, Key=self.key, Body=body, ContentType="application/json", **condition
            )
        except _Missing:
            raise Conflict(f"{self.describe()} does not exist (deleted?)") from None
        except _RetriedConflict as exc:
            # an earlier attempt may have landed before its answer was lost: if the stored
            # nonce is ours, that write won and this "conflict" is our own
            mine = self._stored_version_if_nonce(nonce, deadline)
            if mine is not None:
                log.debug("%s: retried write had landed (nonce matches)", self.describe())
                return mine
            raise Conflict(str(exc)) from None
        return _quoted(resp["ETag"])

    def _stored_version_if_nonce(self, nonce: str, deadline: float) -> str | None:
        try:
            resp = self.backend.call("get_object", deadline, Key=self.key)
        except (_Missing, BackendUnavailable):
            return None
        body = resp["Body"]
        try:
            raw = body.read(MAX_BODY + 1)
        except (bce.BotoCoreError, OSError):
            return None
        finally:
            body.close()
        return _quoted(resp["ETag"]) if nonce.encode() in raw else None

    def close(self) -> None:
        """The connections belong to the backend (shared by its locks); nothing to free here."""

    def describe(self) -> str:
        return f"s3://{self.backend.bucket}/{self.key}"


class _Missing(Exception):
    """404 NoSuchKey (internal: get returns None, update conflicts)."""


class _RetriedConflict(Conflict):
    """412/409 after botocore retried the request: maybe our own earlier attempt."""


class S3Backend(Backend):
    """A bucket and prefix on AWS S3 or an S3-compatible server with conditional writes."""

    schemes = ("s3",)
    capabilities = CAPABILITIES

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        addressing_style: str | None = None,
        verify: bool | str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        if not _BUCKET_RE.match(bucket or "") or ".." in bucket:
            raise ConfigurationError(
                f"S3 bucket name {bucket!r} is not valid: use 3-63 lowercase letters, digits, '.' or '-' "
                "(write the URL as s3://BUCKET/PREFIX)"
            )
        if endpoint_url is not None:
            ep = urlsplit(endpoint_url)
            if ep.scheme not in ("http", "https") or not ep.hostname:
                raise ConfigurationError(
                    f"endpoint_url {redact(endpoint_url)!r} is not an http(s) URL; write e.g. ?endpoint_url=http://127.0.0.1:9000"
                )
        if addressing_style not in (None, "path", "virtual", "auto"):
            raise ConfigurationError(f"addressing_style must be path, virtual or auto, not {addressing_style!r}")
        if (access_key is None) != (secret_key is None):
            raise ConfigurationError("give both the access key and the secret key in s3://KEY:SECRET@BUCKET/, or neither")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.addressing_style = addressing_style or ("path" if endpoint_url else "auto")
        self.verify = verify
        self._session = _session(profile)
        self._credentials = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key} if access_key else {}
        self.region = region or self._session.region_name or "us-east-1"
        self.profile = profile
        self._clients: dict[float, Any] = {}
        self._guard = threading.Lock()
        self._safe = False
        self._safe_guard = threading.Lock()
        self._closed = False
        #: key -> (presigned GET URL, monotonic time it was made); never logged (it is a credential)
        self._presigned: dict[str, tuple[str, float]] = {}
        self._presign_refusals = 0
        self.presigned_reads = True

    # --- construction ------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str) -> S3Backend:
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ConfigurationError(f"not an s3:// URL: {redact(url)!r}")
        userinfo, _, host = parts.netloc.rpartition("@")
        if not host:
            raise ConfigurationError(f"{redact(url)!r} names no bucket; write s3://BUCKET/PREFIX")
        access_key = secret_key = None
        if userinfo:
            key, sep, secret = userinfo.partition(":")
            if not sep:
                raise ConfigurationError("credentials in the URL must be s3://KEY:SECRET@BUCKET/ (percent-encoded)")
            access_key, secret_key = unquote(key), unquote(secret)
        options = UrlOptions(parts.query, scheme="s3", known=OPTIONS)
        verify: bool | str | None = options.text("verify")
        if isinstance(verify, str) and verify.lower() in ("true", "1", "false", "0"):
            verify = options.flag("verify", True)  # else: the path of a CA bundle
        return cls(
            host,
            unquote(parts.path),
            endpoint_url=options.text("endpoint_url"),
            region=options.text("region"),
            profile=options.text("profile"),
            addressing_style=options.choice("addressing_style", None, ("path", "virtual", "auto")),
            verify=verify,
            access_key=access_key,
            secret_key=secret_key,
        )

    def key_for(self, leaf: str) -> str:
        return f"{self.prefix}/{leaf}" if self.prefix else leaf

    def lock(self, name: str) -> S3Lock:
        return S3Lock(self, name)

    def _client(self, cls: float) -> Any:
        client = self._clients.get(cls)
        if client is not None:
            return client
        with self._guard:
            client = self._clients.get(cls)
            if client is None:
                connect, read = _attempt_budget(cls)
                config = Config(
                    connect_timeout=connect,
                    read_timeout=read,
                    retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    max_pool_connections=32,
                    s3={"addressing_style": self.addressing_style},
                )
                with _SESSIONS_GUARD:  # a boto3 Session is not thread-safe; its clients are
                    client = self._session.client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region,
                        config=config,
                        verify=self.verify,
                        **self._credentials,
                    )
                client.meta.events.register_first("needs-retry.s3", _stop_retrying_past_deadline)
                # at the level where botocore adds the header ("before-call.s3"), after it
                client.meta.events.register_last("before-call.s3", _no_expect_continue)
                self._clients[cls] = client
        return client

    # --- calls ---------------------------------------------------------------------------

    def call(self, operation: str, deadline: float, **params: Any) -> Any:
        """One S3 operation on this bucket, bounded by ``deadline``; errors mapped to the contract's."""
        if self._closed:
            raise BackendUnavailable(f"{self.describe()} is closed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackendUnavailable(f"{self.describe()}: no time left for {operation}")
        cls = _timeout_class(remaining)
        client = self._client(cls)
        _deadline.value, _deadline.cls = deadline, cls
        try:
            return getattr(client, operation)(Bucket=self.bucket, **params)
        except bce.ClientError as exc:
            raise self._translate(exc, operation) from exc
        except (bce.NoCredentialsError, bce.PartialCredentialsError) as exc:
            raise ConfigurationError(
                f"no usable AWS credentials for {self.describe()} ({scrub(exc, self.endpoint_url)}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ?profile=, or run with an instance/task role"
            ) from exc
        except bce.ParamValidationError as exc:
            raise ConfigurationError(f"{operation} rejected its parameters: {scrub(exc, self.endpoint_url)}") from exc
        except (bce.BotoCoreError, OSError) as exc:
            raise BackendUnavailable(f"{operation} on {self.describe()} failed: {scrub(exc, self.endpoint_url)}") from exc
        finally:
            _deadline.value = None

    def presigned_get(self, key: str, deadline: float) -> tuple[str, int, bytes] | None:
        """``(ETag, size, body)`` of the object through a GET of a presigned URL, sent on the
        client's own connection pool (same endpoint, TLS verification, proxies, timeouts);
        the body is not read when ``size > MAX_BODY``. ``None`` for anything but a whole
        200 answer (404, 403, a network error...): the caller then makes the regular call,
        which retries and says what went wrong. The URL is made again every
        ``PRESIGN_REFRESH`` seconds (credentials that rotate are picked up) and after a refusal.
        """
        if not self.presigned_reads or self._closed:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        client = self._client(_timeout_class(remaining))
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        if session is None:  # a botocore that keeps it elsewhere: the regular calls only
            self.presigned_reads = False
            return None
        now = time.monotonic()
        cached = self._presigned.get(key)
        if cached is None or now - cached[1] >= PRESIGN_REFRESH:
            try:
                url = client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PRESIGN_EXPIRES
                )
            except Exception:  # noqa: BLE001 - e.g. no credentials: the regular call says so
                return None
            cached = self._presigned[key] = (url, now)
        request = AWSRequest(method="GET", url=cached[0], headers={"User-Agent": "celery-leader"}).prepare()
        request.stream_output = True
        try:
            response = session.send(request)
        except Exception:  # noqa: BLE001 - its text holds the URL; the regular call reports the failure
            return None
        raw_response = response.raw
        try:
            if response.status_code != 200:
                self._presigned.pop(key, None)
                if response.status_code != 404:  # 404: no lock object yet, not a refusal
                    self._presign_refusals += 1
                    if self._presign_refusals >= PRESIGN_REFUSALS:
                        self.presigned_reads = False
                        log.info("%s refused %d presigned reads (HTTP %s): reading through the regular "
                                 "calls from now on", self.describe(), PRESIGN_REFUSALS, response.status_code)
                return None
            etag = response.headers.get("ETag")
            length = response.headers.get("Content-Length")
            if not etag or length is None or not length.isdigit():
                return None
            size = int(length)
            if size > MAX_BODY:
                return _quoted(etag), size, b""
            body = raw_response.read(size + 1)
            if len(body) != size:
                return None
            self._presign_refusals = 0
            raw_response.release_conn()  # read to the end: the connection can serve the next call
            raw_response = None
            return _quoted(etag), size, body
        except Exception:  # noqa: BLE001 - a broken answer: the regular call decides
            return None
        finally:
            if raw_response is not None:
                raw_response.close()

    def _translate(self, exc: bce.ClientError, operation: str) -> Exception:
        err = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        code = str(err.get("Code", ""))
        status = int(meta.get("HTTPStatusCode") or 0)
        message = err.get("Message", "") or code
        where = f"{operation} {self.describe()}"
        if status == 412 or status == 409 or code in _CONFLICT_CODES:
            text = f"{where}: {code or status} ({message})"
            if meta.get("RetryAttempts"):
                return _RetriedConflict(text)
            return Conflict(text)
        if code == "NoSuchBucket":
            return ConfigurationError(
                f"S3 bucket {self.bucket!r} does not exist at {self._where()}; create it "
                f"(aws s3 mb s3://{self.bucket}) or fix the bucket name / endpoint_url / region"
            )
        if code in _MISSING_KEY_CODES or (status == 404 and not code):
            return _Missing(code)
        if code in _CREDENTIAL_CODES:
            return ConfigurationError(
                f"{where}: the S3 server rejected the credentials ({code}: {message}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile"
            )
        if code == "RequestTimeTooSkewed":  # a 403, but not a permission problem
            return ConfigurationError(f"{where}: this machine's clock is too far off for S3 signatures; fix NTP")
        if code in _TRANSIENT_CODES:  # e.g. ExpiredToken (403 on some servers): the chain refreshes it
            return BackendUnavailable(f"{where}: HTTP {status} {code} ({message})")
        if status == 403 or code == "AccessDenied":
            return ConfigurationError(
                f"{where}: access denied ({message}); grant {ACTIONS} on arn:aws:s3:::{self.bucket}"
                f"{'/' + self.prefix if self.prefix else ''}/* (ListBucket on the bucket, so that a missing "
                "lock reads as 404 instead of 403)"
            )
        if code in _REGION_CODES or status == 301:
            region = (
                exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
                or err.get("Region")
                or "the bucket's region"
            )
            return ConfigurationError(
                f"{where}: bucket {self.bucket!r} is not served by region {self.region!r} at {self._where()} "
                f"({code}); add ?region={region} or fix endpoint_url"
            )
        if code == "InvalidBucketName":
            return ConfigurationError(f"{where}: the server says bucket name {self.bucket!r} is invalid")
        if status == 501 or code == "NotImplemented":
            return ConfigurationError(
                f"{where}: the S3 server does not implement this request ({message}); it needs conditional "
                "writes (If-None-Match / If-Match on PutObject), as AWS S3, MinIO and SeaweedFS do"
            )
        if status >= 500 or code in _TRANSIENT_CODES or status in (408, 429):
            return BackendUnavailable(f"{where}: HTTP {status} {code} ({message})")
        return BackendUnavailable(f"{where}: unexpected {status} {code} ({message})")

    # --- the safety check --------------------------------------------------------------

    def ensure_safe(self, deadline: float) -> None:
        """Run :meth:`check`'s probe once before the first write (the engine may not call check).

        A probe that passed for the same endpoint, bucket, prefix and credentials earlier in
        this process counts: many elections may open backends on one server.
        """
        if self._safe:
            return
        with self._safe_guard:
            if not self._safe:
                if self._proof_key() not in _PROVEN:
                    self._probe(deadline)
                self._safe = True

    def _proof_key(self) -> tuple[str | None, ...]:
        return (self.endpoint_url, self.region, self.bucket, self.prefix, self.profile,
                self._credentials.get("aws_access_key_id"))

    def check(self, timeout: float = 5.0) -> None:
        """Prove the bucket is reachable, permitted, and that the server enforces conditional writes."""
        deadline = time.monotonic() + timeout
        with self._safe_guard:
            self._probe(deadline)
            self._safe = True

    def _probe(self, deadline: float) -> None:
        key = self.key_for(PROBE_NAME)
        try:
            self.call("get_object", deadline, Key=key)["Body"].close()
        except _Missing:
            pass

        def put(**condition: str) -> str:
            body = encode_record(LeaderRecord(holder=""), **{NONCE_KEY: uuid.uuid4().hex, "probe": True})
            return self.call("put_object", deadline, Key=key, Body=body, ContentType="application/json", **condition)[
                "ETag"
            ]

        try:
            put(IfNoneMatch="*")
        except Conflict:
            pass  # the probe exists already (another candidate made it): fine
        except _Missing:
            pass
        unsafe = (
            f"the S3 server at {self._where()} ignored a conditional write that had to fail "
            "({header}); it would let two candidates both win. Use a server that enforces "
            "If-None-Match / If-Match on PutObject (AWS S3, MinIO and SeaweedFS do); "
            "there is no unconditional fallback"
        )
        for header, condition in (
            ("If-None-Match: * on an existing object", {"IfNoneMatch": "*"}),
            ("If-Match with a wrong ETag", {"IfMatch": '"00000000000000000000000000000000"'}),
        ):
            try:
                put(**condition)
            except (Conflict, _Missing):
                continue
            raise ConfigurationError(unsafe.format(header=header))
        _PROVEN.add(self._proof_key())
        log.debug("%s: conditional writes are enforced", self.describe())

    def _where(self) -> str:
        return redact(self.endpoint_url) if self.endpoint_url else f"AWS region {self.region}"

    def close(self) -> None:
        with self._guard:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("closing an S3 client failed", exc_info=True)

    def describe(self) -> str:
        where = f" at {redact(self.endpoint_url)}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"
