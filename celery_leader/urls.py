"""URL text helpers shared by every backend: redaction and query options.

:func:`redact` works on the raw text, not on a parsed URL, because the URLs that leak
secrets are exactly the ones a parser misreads: a password holding an unencoded ``/``,
``?`` or ``#`` (common in cloud secrets) moves the host, path and query around.

:class:`UrlOptions` parses ``?key=value`` options once, with one message format for
every backend: ``<scheme>:// option ?key= must be <what>, got '<value>'``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import overload
from urllib.parse import parse_qsl, quote, unquote, unquote_plus

from .errors import ConfigurationError

__all__ = ["redact", "scrub", "ambiguous_userinfo", "UrlOptions", "SECRET_OPTION", "host_port"]

#: query option names whose values are secrets
SECRET_OPTION = re.compile(r"pass|pwd|secret|token|credential|key|auth|sig", re.IGNORECASE)

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
MASK = "***"


def redact(url: object) -> str:
    """``url`` as text with its credentials masked; safe to print, log or raise.

    Everything between ``://`` and the *last* ``@`` is user information: the user name
    (up to the first ``:``) is kept and the rest masked; user information without a
    ``:`` is masked whole (it may be a token). Query options whose name looks secret
    (``password``, ``secret_key``, ``token``...; percent-encoded names too) have their
    values masked up to the next ``&``, ``#`` included. Control characters are escaped.
    Anything that is not text is shown by its type only.
    """
    return _redaction(url)[0]


def _redaction(url: object) -> tuple[str, list[str]]:
    """(the redacted text, the secret parts that were masked)."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>", []
    match = _SCHEME.match(url)
    # not a URL at all: it may still be "user:password@host"
    text, secrets = _mask_userinfo(url, 0 if match is None else match.end())
    return _escape(text), secrets


def _mask_userinfo(text: str, start: int) -> tuple[str, list[str]]:
    secrets: list[str] = []
    at = text.rfind("@", start)
    if at >= 0:
        userinfo = text[start:at]
        user, sep, password = userinfo.partition(":")
        if sep and not any(ch in user for ch in "/?#"):
            masked = f"{user}:{MASK}"
            secrets.append(password)
        else:
            masked = MASK
            secrets.append(userinfo)
        text = text[:start] + masked + text[at:]
        query_from = start + len(masked) + 1
    else:
        query_from = start
    q = text.find("?", query_from)
    if q < 0:
        return text, secrets
    base, query = text[: q + 1], text[q + 1 :]
    parts = []
    for item in query.split("&"):
        key, sep, value = item.partition("=")
        if sep and SECRET_OPTION.search(unquote_plus(key)):
            parts.append(f"{key}={MASK}")
            secrets.append(value)
        else:
            parts.append(item)
    return base + "&".join(parts), secrets


def _escape(text: str) -> str:
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}" for ch in text)


def scrub(message: object, *urls: object) -> str:
    """``message`` (an error from a parser or a client library) without the secrets of ``urls``.

    Each raw URL in it becomes its :func:`redact`\\ ion, and every secret part that
    :func:`redact` masks (as written, percent-decoded or percent-encoded) becomes ``***``.
    Secrets shorter than four characters are only removed as part of a whole URL.
    """
    text = str(message)
    for url in urls:
        if not isinstance(url, str) or not url:
            continue
        masked, secrets = _redaction(url)
        text = text.replace(url, masked).replace(repr(url)[1:-1], masked)
        for secret in secrets:
            for form in {secret, unquote(secret), unquote_plus(secret), quote(secret, safe=""), repr(secret)[1:-1]}:
                if len(form) >= 4:
                    text = text.replace(form, MASK)
    return text


def ambiguous_userinfo(url: str) -> str | None:
    """Why ``url`` cannot be parsed safely, or None.

    A password with an unencoded ``/``, ``?`` or ``#`` moves the host, path and query
    around (``redis://u:pa/ss@host`` has host ``u`` to every URL parser), so the
    password would end up in a host name or an option and leak into messages. Such a URL
    is refused, naming the fix; :func:`redact` still masks it correctly.
    """
    match = _SCHEME.match(url)
    if match is None:
        return None
    start = match.end()
    at = url.rfind("@", start)
    if at < 0:
        return None
    if any(ch in url[start:at] for ch in "/?#"):
        return (
            f"the lock URL {redact(url)} has an '@' after a '/', '?' or '#': percent-encode reserved characters "
            "in the user name and password (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A), "
            "and an '@' inside an option value as %40"
        )
    return None


class UrlOptions:
    """The ``?key=value`` options of one URL, checked against the keys a backend knows.

    Read each option with :meth:`text`, :meth:`seconds`, :meth:`flag` or
    :meth:`integer`; :meth:`rest` returns what was not read (to pass on to a client
    library). Unknown keys and repeated keys are refused at construction.
    """

    def __init__(self, query: str, *, scheme: str, known: Iterable[str]) -> None:
        self.scheme = scheme
        self.known = tuple(sorted(set(known)))
        self._values: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in self.known:
                known_text = f"known options: {', '.join(self.known)}" if self.known else f"{scheme}:// takes no options"
                raise ConfigurationError(f"unknown {scheme}:// option ?{_shown(key)}=; {known_text}")
            if key in self._values:
                raise ConfigurationError(f"{scheme}:// option ?{key}= is given twice; give it once")
            self._values[key] = value
        self._read: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def _raw(self, key: str) -> str | None:
        self._read.add(key)
        return self._values.get(key)

    def _bad(self, key: str, what: str, raw: str) -> ConfigurationError:
        shown = MASK if SECRET_OPTION.search(key) else repr(_shown(raw))
        return ConfigurationError(f"{self.scheme}:// option ?{key}= must be {what}, got {shown}")

    @overload
    def text(self, key: str, default: str, *, allow_empty: bool = False) -> str: ...
    @overload
    def text(self, key: str, default: None = None, *, allow_empty: bool = False) -> str | None: ...

    def text(self, key: str, default: str | None = None, *, allow_empty: bool = False) -> str | None:
        """The option as text; an empty value is the default unless ``allow_empty``."""
        raw = self._raw(key)
        if raw is None or (raw == "" and not allow_empty):
            return default
        return raw

    @overload
    def seconds(
        self, key: str, default: float, *, minimum: float = ..., maximum: float = ..., positive: bool = ...
    ) -> float: ...
    @overload
    def seconds(
        self, key: str, default: None, *, minimum: float = ..., maximum: float = ..., positive: bool = ...
    ) -> float | None: ...

    def seconds(
        self, key: str, default: float | None, *, minimum: float = 0.0, maximum: float = 86400.0,
        positive: bool = False,
    ) -> float | None:
        """A finite number of seconds in ``[minimum, maximum]``; above 0 too if ``positive``."""
        raw = self._raw(key)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and minimum <= value <= maximum and (value > 0 or not positive)):
            low = "> 0" if positive and minimum <= 0 else f"from {minimum:g}"
            raise self._bad(key, f"a number of seconds {low} up to {maximum:g}", raw)
        return value

    @overload
    def integer(self, key: str, default: int, *, minimum: int | None = ..., maximum: int | None = ...) -> int: ...
    @overload
    def integer(
        self, key: str, default: None, *, minimum: int | None = ..., maximum: int | None = ...
    ) -> int | None: ...

    def integer(self, key: str, default: int | None, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
        """A whole number, optionally bounded."""
        raw = self._raw(key)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw, 10)
        except ValueError:
            raise self._bad(key, "a whole number" + _range(minimum, maximum), raw) from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self._bad(key, "a whole number" + _range(minimum, maximum), raw)
        return value

    def flag(self, key: str, default: bool) -> bool:
        """``true/false``, ``1/0``, ``yes/no`` or ``on/off``."""
        raw = self._raw(key)
        if raw is None or raw == "":
            return default
        value = _FLAGS.get(raw.strip().lower())
        if value is None:
            raise self._bad(key, "true or false", raw)
        return value

    def choice(self, key: str, default: str | None, choices: Iterable[str]) -> str | None:
        """One of ``choices``."""
        raw = self._raw(key)
        if raw is None or raw == "":
            return default
        allowed = tuple(choices)
        if raw not in allowed:
            raise self._bad(key, "one of " + ", ".join(allowed), raw)
        return raw

    def rest(self) -> dict[str, str]:
        """The options not read by any of the methods above."""
        return {k: v for k, v in self._values.items() if k not in self._read}


_FLAGS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def _shown(text: str, limit: int = 64) -> str:
    """Printable, bounded echo of user input (no control characters reach a terminal)."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


def host_port(item: str, default_port: int, *, service: str, shown: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` of a host list -> ``(host, port)``.

    ``shown`` is the (already redacted) URL for the message; ``service`` names the server
    in it (``bad etcd address 'x' in '...'; write host:2379``).
    """
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, ""
    if not host:
        raise ConfigurationError(f"bad {service} address {item!r} in {shown!r}; write host:{default_port}")
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigurationError(f"bad port in {service} address {item!r} in {shown!r}; write host:{default_port}")
    return host, port
