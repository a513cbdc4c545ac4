"""Fenced writes: the resource itself refuses a deposed leader's late writes.

An election guarantees that a leader *stops* before its lease can run out anywhere else,
but only while the leader's process runs. A process frozen by SIGSTOP, a long GC or VM
pause, or a network partition can resume after its lease ended and finish a write it had
already started: no lock can stop that, because the process is not looking at the lock.
The fencing token can: every term carries a higher ``leadership.token``, and a store that
keeps the highest token it has seen beside the data refuses a write that carries a lower
one (docs/fencing.md).

One module per store, each importing its client library only when used:

* :mod:`celery_leader.fencing.sql`: SQLAlchemy Core (PostgreSQL, MariaDB/MySQL, SQLite);
* :mod:`celery_leader.fencing.django`: the Django ORM (a model mixin);
* :mod:`celery_leader.fencing.redis`: SET / HSET / XADD / INCRBY / RPUSH in one Lua script;
* :mod:`celery_leader.fencing.s3`: a conditional put carrying the token in the metadata;
* :mod:`celery_leader.fencing.celery`: a task base class that reads the token from the message;
* :mod:`celery_leader.fencing.rq`: the same for RQ jobs (``job.meta``).

Every helper raises :class:`~celery_leader.errors.StaleTokenError` (``.token``, ``.seen``)
when it refuses a write, and :class:`~celery_leader.errors.InvalidTokenError` for
something that is not a token. A write with a token *equal* to the stored one is accepted:
one term writes many times.
"""

from __future__ import annotations

import operator
from typing import Any

from ..errors import InvalidTokenError, StaleTokenError
from ..record import MAX_TRANSITIONS

__all__ = ["check_token", "token_from_message", "stale", "StaleTokenError", "InvalidTokenError", "TOKEN_COLUMN", "TOKEN_METADATA"]

#: default name of the SQL column / Django field that keeps the highest token written
TOKEN_COLUMN = "fence_token"
#: S3 user metadata key (``x-amz-meta-fence-token``) that carries the token of an object
TOKEN_METADATA = "fence-token"


def check_token(token: Any) -> int:
    """The token as an ``int``, or :class:`InvalidTokenError` with a one-line reason.

    Accepts an integer in ``0 .. 2**63-1`` or anything with such a ``.token`` (a
    :class:`~celery_leader.election.Leadership`). ``None``, ``bool``, strings and floats are
    refused: a missing token must not silently become a write that nothing fences.
    """
    source = token
    if not isinstance(token, int) and hasattr(token, "token"):
        token = token.token
    if token is None:
        raise InvalidTokenError(
            "fencing token is None: this code is not running under a leader's term; "
            "pass leadership.token (or the token the message carries)"
        )
    if isinstance(token, bool):
        raise InvalidTokenError(f"fencing token must be an int, not bool ({token!r})")
    try:
        value = operator.index(token)
    except TypeError:
        raise InvalidTokenError(
            f"fencing token must be an int, not {type(source).__name__}; pass leadership.token"
        ) from None
    if not 0 <= value < MAX_TRANSITIONS:
        raise InvalidTokenError(f"fencing token must be between 0 and 2**63-1, got {value}")
    return value


def token_from_message(value: Any, where: str) -> int | None:
    """The token a message carries (a header, ``job.meta``): ``None`` when it carries none.

    Our schedulers stamp an ``int`` (a serializer may turn it into decimal text); anything
    else (``7.9``, ``True``, ``"abc"``, ``-1``) is :class:`InvalidTokenError`, never rounded
    or guessed: a garbled token must not pass a stale check or reach a fenced write.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTokenError(
            f"{where} holds {value!r:.40}, not a fencing token: the message was not stamped by a leader scheduler "
            "(or was altered)"
        )
    return check_token(value)


def stale(resource: str, token: int, seen: int | None) -> StaleTokenError:
    """The error for a refused write (``resource`` must already be safe to show)."""
    return StaleTokenError(
        f"fenced write to {resource} refused: token {token} is below {seen}, already written by a newer "
        "leader; this term has ended, stop its work",
        token=token,
        seen=seen,
    )
