"""URL -> backend: errors that name the fix, entry points, the default."""

from __future__ import annotations

import pytest

from celery_leader import ConfigurationError, open_backend, registry
from celery_leader.backends.file import FileBackend
from celery_leader.backends.memory import MemoryBackend


def test_unknown_scheme_lists_the_installed_ones():
    with pytest.raises(ConfigurationError) as err:
        open_backend("consul://localhost:8500")
    message = str(err.value)
    assert "unknown lock URL scheme 'consul'" in message
    for scheme in ("file", "redis", "kubernetes", "s3", "git", "gossip", "django"):
        assert scheme in message


def test_a_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "fakedb", ("celery_leader_no_such_module:Backend", "fakedb"))
    with pytest.raises(ConfigurationError, match=r"pip install 'celery-leader\[fakedb\]'"):
        open_backend("fakedb://host")


def test_entry_points_serve_every_builtin_scheme():
    for scheme in ("memory", "file", "redis", "rediss", "unix", "redis+sentinel", "kubernetes", "k8s", "s3",
                   "git", "git+file", "git+ssh", "git+http", "git+https", "gossip", "django", "etcd", "zookeeper"):  # fmt: skip
        assert registry.backend_class(scheme).__name__.endswith("Backend")


def test_a_plugin_must_be_a_backend(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "notabackend", ("celery_leader.record:LeaderRecord", None))
    with pytest.raises(ConfigurationError, match="not a celery_leader.lock.Backend"):
        open_backend("notabackend://x")


def test_default_is_a_file_directory_in_the_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("CELERY_LEADER_URL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert registry.default_url() == "file://" + str(tmp_path / "celery-leader")
    backend = open_backend(None)
    assert isinstance(backend, FileBackend)
    backend.check()  # a candidate's start-up check creates the default directory (status does not)
    assert (tmp_path / "celery-leader").is_dir()


def test_environment_url_wins(monkeypatch):
    monkeypatch.setenv("CELERY_LEADER_URL", "memory://from-env")
    assert isinstance(open_backend(""), MemoryBackend)
