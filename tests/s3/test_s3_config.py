"""Wrong configuration and unsafe servers: clear errors that name the fix, never a silent fallback."""

from __future__ import annotations

import http.server
import threading
import time
import uuid

import pytest

from celery_leader.backends.s3 import NONCE_KEY, PROBE_NAME, S3Backend
from celery_leader.lock import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.registry import open_backend
from celery_leader.testing.contract import sample_record

from .conftest import READER_KEY, READER_SECRET, FaultyProxy

T = 5.0


# --- the URL ------------------------------------------------------------------------------


def test_url_options_are_parsed() -> None:
    b = open_backend("s3://my-bucket/some/prefix/?endpoint_url=http://127.0.0.1:9000&region=eu-west-3&addressing_style=virtual")
    assert isinstance(b, S3Backend)
    assert (b.bucket, b.prefix, b.region, b.endpoint_url) == ("my-bucket", "some/prefix", "eu-west-3", "http://127.0.0.1:9000")
    assert b.addressing_style == "virtual"
    assert b.lock("beat").key == "some/prefix/beat.lock.json"
    assert S3Backend.from_url("s3://my-bucket").lock("beat").key == "beat.lock.json"


def test_credentials_in_url_are_never_shown() -> None:
    b = S3Backend.from_url("s3://AKIDEXAMPLE:s%2Fecr%40t@my-bucket/p?endpoint_url=http://127.0.0.1:9")
    assert b._credentials == {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s/ecr@t"}
    assert "ecr" not in b.describe() and "AKID" not in b.describe()
    assert "ecr" not in b.lock("x").describe()


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("s3:///prefix", "s3://BUCKET/PREFIX"),
        ("s3://My_Bucket/p", "lowercase"),
        ("s3://ab/p", "3-63"),
        ("s3://bucket/p?endpoint=http://x", "known options: addressing_style, endpoint_url"),
        ("s3://bucket/p?endpoint_url=127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("s3://bucket/p?addressing_style=sideways", "one of path, virtual, auto"),
        ("s3://onlykey@bucket/p", "KEY:SECRET"),
        ("s3://bucket/p?profile=celery-leader-no-such-profile", "profile"),
    ],
)
def test_bad_urls_name_the_fix(url: str, fix: str, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigurationError, match=fix.replace(".", r"\.").replace("?", r"\?")):
        open_backend(url)


def test_name_with_slash_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no '/'"):
        S3Backend.from_url("s3://bucket/p").lock("a/b")


# --- the server says no ---------------------------------------------------------------------


def test_missing_bucket_names_the_fix(s3_server, prefix) -> None:
    backend = S3Backend.from_url(s3_server.url(prefix, bucket="no-such-bucket-" + uuid.uuid4().hex[:8]))
    with pytest.raises(ConfigurationError, match=r"does not exist.*create it"):
        backend.check(T)
    with pytest.raises(ConfigurationError, match="does not exist"):
        backend.lock("beat").create(sample_record(), T)


def test_wrong_secret_is_a_configuration_error(seaweed_server, prefix) -> None:
    backend = S3Backend.from_url(seaweed_server.url(prefix, secret="not-the-secret"))
    with pytest.raises(ConfigurationError, match="rejected the credentials"):
        backend.check(T)


def test_read_only_identity_names_the_missing_permission(seaweed_server, prefix) -> None:
    writer = S3Backend.from_url(seaweed_server.url(prefix))
    writer.lock("beat").create(sample_record(), T)
    reader = S3Backend.from_url(seaweed_server.url(prefix, key=READER_KEY, secret=READER_SECRET))
    got = reader.lock("beat").get(T)  # reading is allowed
    assert got is not None and got.record.holder == "candidate-a"
    with pytest.raises(ConfigurationError, match=r"access denied.*s3:PutObject"):
        reader.check(T)
    with pytest.raises(ConfigurationError, match="s3:PutObject"):
        reader.lock("beat").update(sample_record(holder="reader"), got.version, T)
    assert writer.lock("beat").get(T).record.holder == "candidate-a"


def test_no_credentials_names_the_sources(moto_server, prefix, monkeypatch, tmp_path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    import celery_leader.backends.s3 as s3mod

    monkeypatch.setattr(s3mod, "_SESSIONS", {})  # a fresh credential chain, as in a new process
    backend = S3Backend.from_url(moto_server.url(prefix, key=""))
    with pytest.raises(ConfigurationError, match="AWS_ACCESS_KEY_ID"):
        backend.check(T)


def test_credentials_from_the_environment(moto_server, prefix, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    import celery_leader.backends.s3 as s3mod

    monkeypatch.setattr(s3mod, "_SESSIONS", {})
    backend = S3Backend.from_url(moto_server.url(prefix, key=""))
    backend.check(T)
    assert backend.lock("beat").create(sample_record(), T)


# --- servers that must be refused -----------------------------------------------------------


def test_server_ignoring_conditional_writes_is_refused(moto_server, prefix) -> None:
    """Through a gateway that drops If-Match / If-None-Match: refuse, and never write the lock."""
    proxy = FaultyProxy(moto_server.endpoint, strip_conditions=True)
    try:
        backend = S3Backend.from_url(moto_server.url(prefix, endpoint_url=proxy.endpoint).replace(
            f"endpoint_url={moto_server.endpoint}&", ""))
        with pytest.raises(ConfigurationError, match=r"ignored a conditional write.*no unconditional fallback"):
            backend.check(T)
        with pytest.raises(ConfigurationError, match="ignored a conditional write"):
            backend.lock("beat").create(sample_record(), T)
        assert not any(path.endswith("beat.lock.json") for _, path, _ in proxy.forwarded)
        direct = S3Backend.from_url(moto_server.url(prefix))
        assert direct.lock("beat").get(T) is None
    finally:
        proxy.close()


def test_probe_never_touches_the_lock_object(s3_server, prefix) -> None:
    backend = S3Backend.from_url(s3_server.url(prefix))
    backend.check(T)
    backend.check(T)  # idempotent, and concurrent candidates may probe at once
    assert backend.lock("beat").get(T) is None
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix).get("Contents", [])]
    assert keys == [f"{prefix}/{PROBE_NAME}"]


def _serve(handler_cls) -> tuple[http.server.ThreadingHTTPServer, int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, server.server_address[1]


def test_endpoint_that_is_not_s3_is_a_configuration_error(prefix) -> None:
    class NotS3(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = b"<html>not found</html>"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server, port = _serve(NotS3)
    try:
        backend = S3Backend.from_url(f"s3://k:s@bucket/{prefix}?endpoint_url=http://127.0.0.1:{port}")
        with pytest.raises(ConfigurationError, match="conditional writes"):
            backend.check(T)
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_listening_is_unavailable_and_names_the_endpoint(prefix) -> None:
    from tests.servers import free_port

    port = free_port()
    backend = S3Backend.from_url(f"s3://k:s@bucket/{prefix}?endpoint_url=http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}"):
        backend.lock("beat").get(0.5)
    with pytest.raises(BackendUnavailable):
        backend.check(0.5)
    assert time.monotonic() - started < 10.0  # bounded by the timeouts (1 s), not botocore's retries


@pytest.mark.parametrize("timeout", [0.3, 2.0])
def test_stalled_server_calls_end_within_their_timeout(black_hole, prefix, timeout) -> None:
    backend = S3Backend.from_url(f"s3://k:s@bucket/{prefix}?endpoint_url=http://127.0.0.1:{black_hole.port}")
    lock = backend.lock("beat")
    for call in (lambda: lock.get(timeout), lambda: lock.create(sample_record(), timeout)):
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            call()
        elapsed = time.monotonic() - started
        assert elapsed < timeout + 5.0, elapsed  # botocore on its own would wait 60 s for an answer


def test_lost_answer_to_a_landed_write_is_recognised_by_its_nonce(moto_server, prefix) -> None:
    """botocore retries a PUT whose answer was lost; the retry gets 412 against our own write.

    The updates get 30 s: a retry is only made when it still fits in the call's timeout
    (with T = 5 s, only when the lost attempt ended within 0.25 s, which a loaded machine
    does not promise: seen failing once under two test processes)."""
    retry_fits = 30.0
    direct = S3Backend.from_url(moto_server.url(prefix))
    direct.check(T)
    version = direct.lock("beat").create(sample_record(), T)
    proxy = FaultyProxy(moto_server.endpoint)
    try:
        backend = S3Backend.from_url(moto_server.url(prefix, endpoint_url=proxy.endpoint).replace(
            f"endpoint_url={moto_server.endpoint}&", ""))
        backend.check(T)
        proxy.lose_put_answers = 1
        new = backend.lock("beat").update(sample_record(holder="me", transitions=4), version, retry_fits)
        puts = [status for method, path, status in proxy.forwarded if method == "PUT" and path.endswith("beat.lock.json")]
        assert puts == [200, 412], puts  # landed, answer lost; the retry lost to ourselves
        got = direct.lock("beat").get(T)
        assert got is not None and got.version == new and got.record.holder == "me"
        # a genuine conflict after a retry is still a conflict
        proxy.lose_put_answers = 1
        with pytest.raises(Conflict):
            backend.lock("beat").update(sample_record(holder="other"), version, retry_fits)
    finally:
        proxy.close()


def test_nonce_is_in_every_body_and_never_in_extra(s3_server, prefix) -> None:
    backend = S3Backend.from_url(s3_server.url(prefix))
    lock = backend.lock("beat")
    v1 = lock.create(sample_record(), T)
    raw1 = s3_server.client().get_object(Bucket=s3_server.bucket, Key=lock.key)["Body"].read()
    v2 = lock.update(sample_record(), v1, T)
    raw2 = s3_server.client().get_object(Bucket=s3_server.bucket, Key=lock.key)["Body"].read()
    assert NONCE_KEY.encode() in raw1 and raw1 != raw2 and v1 != v2
    got = lock.get(T)
    assert got is not None and NONCE_KEY not in got.record.extra


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_within_the_timeout_then_unavailable(moto_server, prefix, status) -> None:
    proxy = FaultyProxy(moto_server.endpoint)
    try:
        backend = S3Backend.from_url(moto_server.url(prefix, endpoint_url=proxy.endpoint).replace(
            f"endpoint_url={moto_server.endpoint}&", ""))
        backend.check(T)
        lock = backend.lock("beat")
        version = lock.create(sample_record(), T)
        proxy.fail_status = status
        proxy.fail_next = 1  # one failure: botocore's retry gets through
        # (timeouts long enough that a retry always fits: with 5 s it fits only when the
        # failed attempt ends within 0.25 s, which a loaded machine does not promise)
        version = lock.update(sample_record(transitions=4), version, 30.0)
        assert lock.get(T).version == version
        proxy.fail_next = 1000  # a server that keeps failing: unavailable, within the timeout
        seen = len(proxy.forwarded)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=f"HTTP {status}"):
            lock.update(sample_record(transitions=5), version, 20.0)
        assert time.monotonic() - started < 20.0 + 5.0  # stops retrying at the timeout
        failed = [s for _, _, s in proxy.forwarded[seen:] if s < 0]
        assert len(failed) >= 2  # it did retry, as long as a retry fitted in the timeout
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("status", "code", "headers", "fix"),
    [
        (301, "PermanentRedirect", {"x-amz-bucket-region": "eu-west-3"}, r"\?region=eu-west-3"),
        (400, "AuthorizationHeaderMalformed", {}, r"\?region="),
        (403, "RequestTimeTooSkewed", {}, "NTP"),
        (403, "AccessDenied", {}, "s3:GetObject, s3:PutObject and s3:ListBucket"),
        (403, "InvalidAccessKeyId", {}, "AWS_ACCESS_KEY_ID"),
        (501, "NotImplemented", {}, "conditional"),
    ],
    ids=["wrong-region", "region-in-signature", "clock-skew", "access-denied", "unknown-key", "not-implemented"],
)
def test_server_refusals_name_the_fix(moto_server, prefix, status, code, headers, fix) -> None:
    """The answers AWS gives for these mistakes, injected in front of a real server."""
    proxy = FaultyProxy(moto_server.endpoint)
    try:
        backend = S3Backend.from_url(moto_server.url(prefix, endpoint_url=proxy.endpoint).replace(
            f"endpoint_url={moto_server.endpoint}&", ""))
        proxy.fail_status, proxy.fail_code, proxy.fail_headers = status, code, headers
        proxy.fail_next = 1000
        with pytest.raises(ConfigurationError, match=fix):
            backend.check(T)
    finally:
        proxy.close()
