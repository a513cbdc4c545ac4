"""What the etcd and ZooKeeper backends have in common (not a backend of its own).

Both are coordination services reached through a URL ``scheme://[user:password@]host[:port][,host...]/PATH``,
and both keep an election in two entries under that path: ``lock/<name>`` (the record) and
``fence/<name>`` (the highest fencing token ever written, as decimal text, never deleted).
So they parse the URL the same way, read the fence the same way, show a record the same
way (a lock entry deleted by hand reads as held by nobody's identity, at the fence), and
refuse the same writes (a token below the fence). How they talk to the service, compare
and swap, and wait for a change is theirs.
"""

from __future__ import annotations

import logging
from urllib.parse import SplitResult, unquote, urlsplit

from ..lock import BackendUnavailable, ConfigurationError
from ..record import LeaderRecord, decode_or_placeholder
from ..urls import UrlOptions, host_port, redact

__all__ = ["MAX_RECORD", "split_url", "users_and_hosts", "base_path", "fence_number", "fenced_record", "refuse_lower_token"]

#: a record is < 512 bytes; anything larger than this is not one of ours
MAX_RECORD = 64 * 1024


def split_url(url: str, *, scheme: str, service: str, known: tuple[str, ...]) -> tuple[SplitResult, str, UrlOptions]:
    """(the parts, the URL as it may be shown, its ``?`` options) of a ``scheme://`` URL.

    ``service`` names the service in messages (``ZooKeeper``); ``known`` are the options it takes.
    """
    shown = redact(url)
    parts = urlsplit(url)
    if parts.scheme.lower() != scheme:
        article = "an" if scheme[:1] in "aeiou" else "a"
        raise ConfigurationError(f"not {article} {scheme}:// URL: {shown!r}")
    if parts.fragment:
        raise ConfigurationError(f"the {service} URL {shown!r} has a '#' part; percent-encode '#' in a password as %23")
    return parts, shown, UrlOptions(parts.query, scheme=scheme, known=known)


def users_and_hosts(
    parts: SplitResult, shown: str, *, service: str, default_port: int, member: str, path_word: str
) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """(user, password, [(host, port)...]) of the URL's ``user:password@host,host:port`` part.

    ``member`` is what one host is called in the message for an empty list (``server``),
    ``path_word`` what the path is called (``PREFIX``).
    """
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        if not sep or not user:
            raise ConfigurationError(
                f"the {service} URL {shown!r} needs both user and password: "
                f"{parts.scheme.lower()}://USER:PASSWORD@host:{default_port}/ (percent-encode special characters)"
            )
        username, password = unquote(user), unquote(secret)
    hosts = [host_port(item.strip(), default_port, service=service, shown=shown) for item in hostlist.split(",") if item.strip()]
    if not hosts:
        raise ConfigurationError(
            f"no {service} {member} in {shown!r}; write {parts.scheme.lower()}://host:{default_port}[,host2:{default_port}]/{path_word}"
        )
    return username, password, hosts


def base_path(path: str, default: str) -> str:
    """``path`` with one leading ``/`` and no trailing one; ``default`` if it is empty."""
    return "/" + path.strip("/") if path.strip("/") else default


def fence_number(raw: bytes | None, log: logging.Logger, name: str, what: str, place: str) -> int:
    """The token the fence ``what`` (``fence key``) ``place`` holds; 0 if it holds no number
    (not written by us: the next write replaces it with a proper number)."""
    try:
        return max(0, int(raw.decode("ascii"), 10))  # type: ignore[union-attr]
    except (UnicodeDecodeError, ValueError, AttributeError):
        log.warning("%s: %s %r holds no number; treating it as 0", name, what, place)
        return 0


def fenced_record(raw: bytes | None, fence: int, vanished_holder: str) -> LeaderRecord:
    """The record a read shows: ``raw`` decoded (a placeholder for anything too large or not a
    record), its token lifted to the fence if it is lower (rewritten by hand or by a foreign
    writer: count on from the fence).

    ``raw`` None (the lock entry was deleted, its fence remains): whoever held it may still
    believe it leads, so it reads as held by ``vanished_holder``, nobody's identity:
    candidates wait one lease, then take it above the fence.
    """
    if raw is None:
        return LeaderRecord(holder=vanished_holder, transitions=fence)
    if len(raw) > MAX_RECORD:
        record = LeaderRecord.undecodable(len(raw), "too large for a leader record")
    else:
        record = decode_or_placeholder(raw)
    if fence > record.transitions:
        record = record.evolve(transitions=fence)
    return record


def refuse_lower_token(name: str, token: int, fence: int, strict: bool, place: str) -> None:
    """Raise unless ``token`` may be written over a fence at ``fence`` (above it if ``strict``).

    Not Conflict (the engine would retry at once, forever): the writer has not seen the last
    token. BackendUnavailable backs off; a candidate that read the lifted record writes a
    proper token.
    """
    if token < fence or (strict and token <= fence):
        raise BackendUnavailable(
            f"{name}: refused to write fencing token {token}: the fence {place!r} is at {fence} and tokens never go backwards"
        )
