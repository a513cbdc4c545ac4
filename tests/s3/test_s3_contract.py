"""The backend contract suite, on moto's server and on SeaweedFS."""

from __future__ import annotations

import contextlib
import time

import pytest

from celery_leader.backends.s3 import S3Backend
from celery_leader.testing import LockContract, contract


class _S3Contract(LockContract):
    race_clients = 12
    server_fixture = ""

    @pytest.fixture
    def server(self, request):
        return request.getfixturevalue(self.server_fixture)

    @pytest.fixture
    def new_backend(self, server, prefix):
        """A backend with its own clients and connections, proven safe first."""

        def new() -> S3Backend:
            backend = S3Backend.from_url(server.url(prefix))
            backend.ensure_safe(time.monotonic() + 10.0)
            return backend

        return new

    @pytest.fixture
    def write_raw(self, server, prefix):
        client = server.client()
        return lambda name, raw: client.put_object(Bucket=server.bucket, Key=f"{prefix}/{name}.lock.json", Body=raw)

    @pytest.fixture
    def stalled_lock(self, server, prefix, black_hole):
        @contextlib.contextmanager
        def stalled(name: str):
            backend = S3Backend.from_url(server.url(prefix, endpoint_url=f"http://127.0.0.1:{black_hole.port}")
                                         .replace(f"endpoint_url={server.endpoint}&", ""))
            try:
                yield backend.lock(name)
            finally:
                backend.close()

        return stalled


class TestMotoContract(_S3Contract):
    server_fixture = "moto_server"
    race_rounds = 10


class TestSeaweedContract(_S3Contract):
    server_fixture = "seaweed_server"
    #: SeaweedFS queues contended conditional writes on one key in ~1 s steps (the last of
    #: 12 racers waits up to ~4 s), so fewer rounds keep the folder within its time budget
    race_rounds = 4

    # ...and the racers get 15 s instead of the suite's 5 s: a loser that is still queued
    # when its timeout ends is (rightly) BackendUnavailable, not Conflict
    def test_create_race_has_exactly_one_winner(self, make_lock, name, monkeypatch) -> None:
        monkeypatch.setattr(contract, "TIMEOUT", 15.0)
        super().test_create_race_has_exactly_one_winner(make_lock, name)

    def test_update_race_has_exactly_one_winner(self, make_lock, name, monkeypatch) -> None:
        monkeypatch.setattr(contract, "TIMEOUT", 15.0)
        super().test_update_race_has_exactly_one_winner(make_lock, name)
