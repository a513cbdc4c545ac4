"""Fenced S3 puts: an object written with a higher token is never overwritten by a lower one.

The token travels with the object as user metadata (``x-amz-meta-fence-token``).
:func:`fenced_put` reads the object's head (ETag and token), refuses when the stored
token is higher, and writes with ``If-Match`` on that ETag (``If-None-Match: *`` when
there is no object), so the object cannot have changed between the check and the write;
on 412 (someone wrote in between) it reads again and decides again::

    from celery_leader.fencing.s3 import fenced_put

    def work(leadership):
        fenced_put(s3, "reports", "daily.csv", body, leadership.token, ContentType="text/csv")

Identical bytes give identical ETags, so a newer term writing exactly the bytes already
there would leave the ETag unchanged, and a stale writer's ``If-Match`` would still pass.
When the new body's MD5 equals the stored ETag, the put is therefore made as a one-part
multipart upload, whose ETag has another form (``...-1``), with ``If-Match`` on the
completion. That needs a server that honours conditions on ``CompleteMultipartUpload``
(AWS S3 and SeaweedFS do; moto 5.2 ignores them, see docs/fencing.md).

An object without token metadata (written before fencing) accepts any token; metadata
that is not a token is refused (fail closed). Needs the ``s3`` extra (boto3).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from . import TOKEN_METADATA, check_token, stale

__all__ = ["fenced_put", "stored_token"]

log = logging.getLogger(__name__)

_ATTEMPTS = 8


def _code(exc: Exception) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")), int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _head(client: Any, bucket: str, key: str) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code, status = _code(exc)
        if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _token_of(head: dict, where: str, token: int) -> int | None:
    raw = (head.get("Metadata") or {}).get(TOKEN_METADATA)
    if raw is None:
        return None
    if not raw.isdigit():
        err = stale(where, token, None)
        err.args = (f"fenced write to {where} refused: its {TOKEN_METADATA} metadata is {raw[:40]!r}, not a token",)
        raise err
    return int(raw)


def stored_token(client: Any, bucket: str, key: str) -> int | None:
    """The token the object was written with (``None``: no object, or written without one)."""
    head = _head(client, bucket, key)
    return None if head is None else _token_of(head, f"s3://{bucket}/{key}", 0)


def fenced_put(client: Any, bucket: str, key: str, body: bytes, token: Any, *, metadata: dict[str, str] | None = None,
               **put_kwargs: Any) -> str:
    """Put ``body`` at ``bucket/key`` unless the object there was written with a higher token.

    ``client`` is a boto3 S3 client; ``put_kwargs`` go to ``put_object`` (``ContentType``...).
    Returns the new ETag. Raises ``StaleTokenError`` when refused.
    """
    from botocore.exceptions import ClientError

    value = check_token(token)
    if isinstance(body, str):
        body = body.encode()
    where = f"s3://{bucket}/{key}"
    meta = {**(metadata or {}), TOKEN_METADATA: str(value)}
    md5 = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
    for _ in range(_ATTEMPTS):
        head = _head(client, bucket, key)
        if head is not None:
            seen = _token_of(head, where, value)
            if seen is not None and seen > value:
                log.warning("refused a stale write to %s: token %s < %s", where, value, seen)
                raise stale(where, value, seen)
        try:
            if head is None:
                return client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta, IfNoneMatch="*",
                                         **put_kwargs)["ETag"]
            if head["ETag"] == md5:
                return _multipart(client, bucket, key, body, meta, head["ETag"], put_kwargs)
            return client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta, IfMatch=head["ETag"],
                                     **put_kwargs)["ETag"]
        except ClientError as exc:
            code, status = _code(exc)
            # 412: changed since the head; 409: a concurrent conditional write in progress
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                log.debug("fenced put to %s raced another writer (%s); deciding again", where, code or status)
                continue
            raise
    raise RuntimeError(f"fenced put to {where}: the object kept changing under {_ATTEMPTS} attempts")


def _multipart(client: Any, bucket: str, key: str, body: bytes, meta: dict, etag: str, put_kwargs: dict) -> str:
    """The same bytes as a one-part multipart upload: a new ETag, so that stale If-Matches fail."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=meta, **put_kwargs)["UploadId"]
    try:
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=body)
        return client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, IfMatch=etag,
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        )["ETag"]
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except Exception:  # noqa: BLE001 - best effort; the original error matters
            log.debug("could not abort multipart upload of s3://%s/%s", bucket, key)
        raise
