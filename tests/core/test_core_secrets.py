"""Secrets in lock URLs never reach a message, a log line or ``describe()``.

The password below holds the characters that move a URL's parts around when they are
not percent-encoded (``/ ? # @``), as cloud-generated secrets often do.
"""

from __future__ import annotations

import logging

import pytest

from celery_leader.errors import ConfigurationError
from celery_leader.registry import open_backend, read_url_file
from celery_leader.urls import ambiguous_userinfo, redact, scrub

RAW = "Sup3r/Secr?t#Pw@rd"
ENCODED = "Sup3r%2FSecr%3Ft%23Pw%40rd"
#: pieces of the password that must never be shown, whatever a parser made of it
PIECES = ("Sup3r", "Secr", "Pw@rd", "t#Pw", "%2FSecr")


def assert_clean(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, f"{piece!r} leaked in: {text}"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://leader:{RAW}@127.0.0.1:6379/0",
        f"redis://leader:{ENCODED}@127.0.0.1:6379/0",
        f"redis://:{ENCODED}@127.0.0.1:6379/0?prefix=x",
        f"redis://127.0.0.1:6379/0?password={ENCODED}",
        f"redis://127.0.0.1:6379/0?%70assword={ENCODED}",
        f"rediss://leader:{ENCODED}@127.0.0.1:6380/0?ssl_password={ENCODED}",
        f"redis+sentinel://u:{ENCODED}@127.0.0.1:26379/mymaster/0?sentinel_password={ENCODED}",
        f"s3://AKIAEXAMPLE:{RAW}@/prefix",
        f"s3://AKIAEXAMPLE:{ENCODED}@/prefix",
        f"s3://AKIAEXAMPLE:{ENCODED}@bucket/prefix?endpoint_url=http://u:{ENCODED}@127.0.0.1:9",
        f"gossip://:{ENCODED}@127.0.0.1:notaport?members=a",
        f"gossip://127.0.0.1:7373?members=a&auth_key={ENCODED}",
        f"git+https://{ENCODED}@127.0.0.1/repo.git",
        f"git+https://user:{ENCODED}@127.0.0.1/repo.git",
        f"kubernetes://u:{ENCODED}@ns/extra",
        f"django://u:{ENCODED}@default/x",
        f"file://u:{ENCODED}@localhost/tmp",
        f"memory://u:{ENCODED}@x/y?z=1",
        f"nosuch://u:{ENCODED}@host",
        f"u:{ENCODED}@host",
        f"redis://leader:{ENCODED}@[::1/13",
        f"redis://leader:{ENCODED}@127.0.0.1:6379/0?ssl_cert_reqs=bogus",
        f"redis://leader:{ENCODED}@127.0.0.1:6379/0?protocol=9",
        f"redis://leader:{ENCODED}@127.0.0.1:6379/0?no_such_option=1",
        f"redis://leader:{RAW}@127.0.0.1:6379/0?no_such_option=1",
        f"etcd://user:{ENCODED}@127.0.0.1:2379/pfx",
        f"etcd://user:{ENCODED}@127.0.0.1:notaport/pfx",
        f"zookeeper://user:{ENCODED}@127.0.0.1:2181/p?x=1",
        f"postgresql://user:{ENCODED}@127.0.0.1:5432/db",
        f"postgresql://user:{ENCODED}@127.0.0.1:5432/db?bogus=1",
        f"postgresql://127.0.0.1:5432/db?password={ENCODED}",
    ],
)
def test_no_path_from_a_url_to_a_message_shows_the_secret(url: str, caplog) -> None:
    assert_clean(redact(url))
    caplog.set_level(logging.DEBUG)
    try:
        backend = open_backend(url)
    except ConfigurationError as exc:
        message = str(exc)
        assert "\n" not in message
        assert_clean(message)
        assert exc.__cause__ is None or isinstance(exc.__cause__, ImportError)
        assert not exc.__context__ or exc.__suppress_context__
    else:
        try:
            assert_clean(backend.describe())
            assert_clean(repr(backend.describe()))
        finally:
            backend.close()
    assert_clean(caplog.text)


def test_a_password_with_reserved_characters_is_refused_with_the_fix() -> None:
    url = f"redis://leader:{RAW}@127.0.0.1:6379/0"
    problem = ambiguous_userinfo(url)
    assert problem and "%2F" in problem and "redis://leader:***@127.0.0.1:6379/0" in problem
    assert ambiguous_userinfo(f"redis://leader:{ENCODED}@127.0.0.1:6379/0") is None
    assert ambiguous_userinfo("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:p4ssword@h:1/0", "redis://u:***@h:1/0"),
        ("https://t0ken@github.com/x", "https://***@github.com/x"),
        ("redis://h/0?password=ab#cd&db=1", "redis://h/0?password=***&db=1"),
        ("redis://h/0?%70assword=hunter22", "redis://h/0?%70assword=***"),
        ("redis://h/0?db=1&auth_key=k3y", "redis://h/0?db=1&auth_key=***"),
        ("redis://u:p@h\x1b[2J", "redis://u:***@h\\x1b[2J"),
        (5, "<int>"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact(url, shown) -> None:
    assert redact(url) == shown


def test_scrub_removes_every_form_of_the_secret() -> None:
    url = f"redis://leader:{ENCODED}@127.0.0.1:6379/0"
    message = f"parser said: bad {RAW} / {ENCODED} / {url!r} / 'Sup3r/Secr?t#Pw@rd'"
    assert_clean(scrub(message, url))
    assert "redis://leader:***@127.0.0.1:6379/0" in scrub(message, url)


def test_url_file(tmp_path, monkeypatch, caplog) -> None:
    path = tmp_path / "url"
    path.write_text(f"memory://secret-{ENCODED}\n")
    path.chmod(0o600)
    assert read_url_file(path) == f"memory://secret-{ENCODED}"
    monkeypatch.delenv("CELERY_LEADER_URL", raising=False)
    monkeypatch.setenv("CELERY_LEADER_URL_FILE", str(path))
    backend = open_backend()
    assert backend.describe().startswith("memory://secret-")
    monkeypatch.setenv("CELERY_LEADER_URL", "memory://x")
    with pytest.raises(ConfigurationError, match="set only one"):
        open_backend()
    path.write_text(f"redis://u:{ENCODED}@h/0\nsecond line\n")
    path.chmod(0o644)
    with pytest.raises(ConfigurationError) as info:
        read_url_file(path)
    assert_clean(str(info.value))
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_url_file(tmp_path / "missing")
    path.write_text(f"redis://u:{ENCODED}@h/0\n")
    caplog.clear()
    caplog.set_level(logging.WARNING)
    read_url_file(path)
    assert "readable by every user" in caplog.text
    assert_clean(caplog.text)
