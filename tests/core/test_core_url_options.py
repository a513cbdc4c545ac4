"""UrlOptions: the one parser of every backend's ``?key=value`` options, one message format."""

from __future__ import annotations

import pytest

from celery_leader.errors import ConfigurationError
from celery_leader.registry import open_backend
from celery_leader.urls import UrlOptions


def options(query: str, *known: str) -> UrlOptions:
    return UrlOptions(query, scheme="demo", known=known)


def test_values_defaults_and_the_rest() -> None:
    o = options("a=1.5&b=yes&n=7&c=x&left=over", "a", "b", "n", "c", "left", "missing")
    assert o.seconds("a", 3.0) == 1.5
    assert o.seconds("missing", 3.0) == 3.0
    assert o.flag("b", False) is True
    assert o.integer("n", 1, minimum=1) == 7
    assert o.choice("c", None, ("x", "y")) == "x"
    assert o.rest() == {"left": "over"}
    assert "left" in o and "missing" not in o


def test_empty_value_means_the_default_unless_allowed() -> None:
    o = options("a=&t=", "a", "t")
    assert o.seconds("a", 2.0) == 2.0
    assert o.text("t", "dflt") == "dflt"
    assert options("t=", "t").text("t", "dflt", allow_empty=True) == ""


@pytest.mark.parametrize(
    ("query", "read", "words"),
    [
        ("a=soon", lambda o: o.seconds("a", 1.0), ["demo:// option ?a= must be a number of seconds", "'soon'"]),
        ("a=nan", lambda o: o.seconds("a", 1.0), ["?a= must be", "'nan'"]),
        ("a=-1", lambda o: o.seconds("a", 1.0), ["from 0 up to 86400", "'-1'"]),
        ("a=0", lambda o: o.seconds("a", 1.0, positive=True), ["> 0", "'0'"]),
        ("a=1e9", lambda o: o.seconds("a", 1.0), ["up to 86400"]),
        ("a=maybe", lambda o: o.flag("a", True), ["?a= must be true or false", "'maybe'"]),
        ("a=1.5", lambda o: o.integer("a", 1), ["?a= must be a whole number", "'1.5'"]),
        ("a=0", lambda o: o.integer("a", 1, minimum=1), [">= 1"]),
        ("a=z", lambda o: o.choice("a", None, ("x", "y")), ["one of x, y", "'z'"]),
    ],
)
def test_bad_values_get_one_message_format(query, read, words) -> None:
    with pytest.raises(ConfigurationError) as err:
        read(options(query, "a"))
    for word in words:
        assert word in str(err.value)


def test_unknown_and_repeated_keys_are_refused_at_once() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown demo:// option \?colour=; known options: a, b"):
        options("colour=red", "b", "a")
    with pytest.raises(ConfigurationError, match=r"\?a= is given twice"):
        options("a=1&a=2", "a")
    with pytest.raises(ConfigurationError, match="demo:// takes no options"):
        options("x=1")


def test_hostile_input_is_bounded_and_secrets_are_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as err:
        options("k" * 500 + "\x1b[31m=1", "a")
    assert len(str(err.value)) < 200 and "\x1b" not in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        options("secret_key=hunter2", "secret_key").seconds("secret_key", 1.0)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    ["memory://x?colour=red", "file:///tmp?colour=red", "redis://127.0.0.1:6379/0?colour=red",
     "s3://bucket/p?colour=red", "git+file:///srv/x.git?colour=red", "django://default?colour=red"],
)
def test_every_backend_refuses_an_unknown_option_the_same_way(url: str) -> None:
    scheme = url.split("://")[0]
    with pytest.raises(ConfigurationError, match=rf"unknown {scheme.replace('+', '.')}:// option \?colour="):
        open_backend(url)


def test_host_port_of_a_host_list() -> None:
    from celery_leader.urls import host_port

    assert host_port("h", 2379, service="etcd", shown="etcd://h") == ("h", 2379)
    assert host_port("h:1234", 2379, service="etcd", shown="etcd://h") == ("h", 1234)
    assert host_port("[::1]:2181", 2181, service="ZooKeeper", shown="zookeeper://x") == ("::1", 2181)
    assert host_port("[::1]", 2181, service="ZooKeeper", shown="zookeeper://x") == ("::1", 2181)
    for bad in (":1", "h:0", "h:65536", "h:x"):
        with pytest.raises(ConfigurationError, match=r"etcd address .* write host:2379"):
            host_port(bad, 2379, service="etcd", shown="etcd://***@h")
