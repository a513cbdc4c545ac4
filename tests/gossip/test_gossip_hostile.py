"""The gossip acceptor after stop(): queries that still arrive are dropped quietly, never
answered from (or flocked on) a closed - possibly reused - descriptor."""

from __future__ import annotations

import logging

import msgpack
import pytest

from celery_leader.backends.gossip.acceptor import QUERY_NAME, Acceptor, AcceptorStore, StoreClosed
from tests.servers import free_port


def test_a_closed_store_refuses_instead_of_using_its_descriptor(tmp_path) -> None:
    store = AcceptorStore(tmp_path / "state", "n1")
    store.handle({"o": "r", "n": "beat"})
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosed):
        store.handle({"o": "r", "n": "beat"})


def test_queries_after_stop_are_dropped_without_a_warning(tmp_path, caplog) -> None:
    acceptor = Acceptor("127.0.0.1", free_port(), None, "n1", tmp_path / "state")  # no agent there
    acceptor.stop()

    class Client:
        answered = 0

        def respond(self, *args, **kwargs) -> None:
            Client.answered += 1

    caplog.set_level(logging.DEBUG)
    record = {"Event": "query", "ID": 1, "LTime": 1, "Name": QUERY_NAME,
              "Payload": msgpack.packb({"o": "r", "n": "beat"})}  # fmt: skip
    acceptor._on_record(Client(), record)
    acceptor.store.close()
    acceptor._stop.clear()  # as if the callback raced stop(): the store itself refuses
    acceptor._on_record(Client(), record)
    assert Client.answered == 0
    assert "malformed" not in caplog.text and "Bad file descriptor" not in caplog.text
