"""gossip:// configuration, quorum rules and acceptor durability on real serf agents."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import msgpack
import pytest

from celery_leader.backends.gossip import QUERY_NAME, GossipBackend
from celery_leader.lock import BackendUnavailable, ConfigurationError, Conflict
from celery_leader.registry import open_backend
from celery_leader.serf import as_query
from celery_leader.testing import sample_record
from celery_leader.testing.contract import race
from tests.elections import standby_follows_by_hints
from tests.servers import free_port, running

from .cluster import SerfCluster

T = 3.0


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    with SerfCluster(5, tmp_path_factory.mktemp("serf5"), prefix="g") as c:
        yield c


@pytest.fixture
def opened():
    backends: list[GossipBackend] = []
    yield backends
    for b in backends:
        b.close()


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


def _open(five, opened, i: int, members, state: Path, **options) -> GossipBackend:
    b = GossipBackend.from_url(five.agents[i].url(members, state / five.agents[i].name, **options))
    opened.append(b)
    return b


def _name() -> str:
    return "t-" + uuid.uuid4().hex[:10]


# --- configuration ---


@pytest.mark.parametrize(
    "url, words",
    [
        ("gossip://127.0.0.1:7373", ["members=", "odd number"]),
        ("gossip://127.0.0.1:7373?members=a,b,a", ["twice"]),
        ("gossip://127.0.0.1:7373?members=a,b,c&colour=red", ["unknown", "colour"]),
        ("gossip://127.0.0.1:7373?members=a,b,c&query_timeout=soon", ["query_timeout", "seconds"]),
        ("gossip://127.0.0.1:7373?members=a,b,c&query_timeout=-1", ["> 0"]),
        ("gossip://127.0.0.1:7373?members=a,b,c&acceptor=maybe", ["true or false"]),
        ("gossip://127.0.0.1:99999?members=a,b,c", ["port"]),
    ],
)
def test_bad_urls_are_refused_with_the_fix(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as err:
        GossipBackend.from_url(url)
    for word in words:
        assert word in str(err.value)


def test_no_agent_is_a_configuration_error_that_says_how_to_start_one() -> None:
    port = free_port()
    with pytest.raises(ConfigurationError) as err:
        open_backend(f"gossip://127.0.0.1:{port}?members=a,b,c")
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "serf agent" in text and "-rpc-addr" in text


def test_wrong_rpc_key_names_the_option(tmp_path) -> None:
    bind, rpc = free_port(), free_port()
    config = tmp_path / "serf.json"
    config.write_text('{"rpc_auth": "right"}')
    argv = ["serf", "agent", "-node=keyed", f"-bind=127.0.0.1:{bind}", f"-rpc-addr=127.0.0.1:{rpc}",
            f"-config-file={config}", "-profile=local", "-log-level=warn"]
    with running(argv, rpc):
        with pytest.raises(ConfigurationError, match="auth_key"):
            GossipBackend.from_url(f"gossip://127.0.0.1:{rpc}?members=keyed&auth_key=wrong&acceptor=false")
        b = GossipBackend.from_url(f"gossip://:right@127.0.0.1:{rpc}?members=keyed&state_dir={tmp_path / 's'}")
        try:
            assert "right" not in b.describe()
            b.lock("solo").create(sample_record(), T)  # a one-member set is its own quorum
            assert b.lock("solo").get(T).record.holder == "candidate-a"
        finally:
            b.close()


def test_check_refuses_members_serf_has_never_heard_of(five, opened, state) -> None:
    b = _open(five, opened, 0, ["g0", "typo1", "typo2"], state)
    with pytest.raises(ConfigurationError, match="serf members"):
        b.check()
    _open(five, opened, 1, ["g0", "g1", "g2"], state).check()


def test_state_dir_of_another_node_is_refused(five, opened, state) -> None:
    shared = state / "one-dir"
    GossipBackend.from_url(five.agents[0].url(["g0", "g1", "g2"], shared)).close()
    with pytest.raises(ConfigurationError, match="own state_dir"):
        GossipBackend.from_url(five.agents[1].url(["g0", "g1", "g2"], shared))


def test_unwritable_state_dir_is_refused(five, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="state_dir"):
        GossipBackend.from_url(five.agents[0].url(["g0", "g1", "g2"], blocker / "sub"))


# --- quorum rules ---


def test_a_minority_of_acceptors_cannot_write_or_read(five, opened, state) -> None:
    members = ["g0", "g1", "g2"]
    lock = _open(five, opened, 0, members, state).lock(_name())  # only g0 votes
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        lock.create(sample_record(), 0.3)
    with pytest.raises(BackendUnavailable):
        lock.get(0.3)
    assert time.monotonic() - started < 10  # bounded by the timeouts (0.6 s), not waiting for a majority
    _open(five, opened, 1, members, state)  # a second voter makes a majority
    lock.create(sample_record(), T)
    assert lock.get(T) is not None


def test_nodes_outside_the_member_set_never_count(five, opened, state) -> None:
    """g3 and g4 run acceptors but are not members: g0 alone is still no quorum."""
    members = ["g0", "g1", "g2"]
    lock = _open(five, opened, 0, members, state).lock(_name())
    _open(five, opened, 3, members, state)
    _open(five, opened, 4, members, state)
    with pytest.raises(BackendUnavailable):
        lock.create(sample_record(), 1.0)


def test_malformed_answers_from_a_member_are_ignored(five, opened, state) -> None:
    members = ["g0", "g1", "g2"]
    lock = _open(five, opened, 0, members, state).lock(_name())
    rogue = five.client(1)
    answers = [b"\xc1garbage", msgpack.packb({"ok": "yes"}), msgpack.packb({"ok": True, "p": "x"}), b""]

    def lie(record):
        q = as_query(record)
        if q is not None and q.name == QUERY_NAME:
            rogue.respond(q.id, answers[q.id % len(answers)])

    stream = rogue.stream("query", lie)
    try:
        with pytest.raises(BackendUnavailable):
            lock.create(sample_record(), 1.0)
        _open(five, opened, 2, members, state)  # an honest second member: a quorum again
        version = lock.create(sample_record(holder="honest"), T)
        got = lock.get(T)
        assert got is not None and got.version == version and got.record.holder == "honest"
    finally:
        stream.stop()
        rogue.close()


def test_acceptor_state_survives_a_restart_of_every_candidate(five, state) -> None:
    members = ["g0", "g1", "g2"]
    name = _name()
    first = [GossipBackend.from_url(five.agents[i].url(members, state / f"g{i}")) for i in range(3)]
    try:
        v1 = first[0].lock(name).create(sample_record(transitions=5), T)
    finally:
        for b in first:
            b.close()
    again = [GossipBackend.from_url(five.agents[i].url(members, state / f"g{i}")) for i in range(3)]
    try:
        lock = again[1].lock(name)
        got = lock.get(T)
        assert got is not None and got.version == v1 and got.record.transitions == 5
        with pytest.raises(Conflict):
            lock.create(sample_record(), T)
        lock.update(sample_record(transitions=6), v1, T)
    finally:
        for b in again:
            b.close()


def test_races_from_every_one_of_five_members(five, opened, state) -> None:
    members = five.names
    backends = [_open(five, opened, i, members, state) for i in range(5)]
    name = _name()
    for round_ in range(3):
        locks = [b.lock(f"{name}-c{round_}") for b in backends]
        results, errors = race(5, lambda i, locks=locks: locks[i].create(sample_record(holder=f"m{i}"), T))
        assert len(results) == 1, (results, errors)
        assert all(isinstance(e, Conflict) for e in errors), errors
    locks = [b.lock(name) for b in backends]
    version = locks[0].create(sample_record(transitions=0), T)
    # the last writer renews in one round trip while the others prepare: this is the race
    # that once let a half-landed one-round write overtake a chosen value
    for round_ in range(1, 7):
        expected = version
        results, errors = race(
            5,
            lambda i, r=round_, e=expected: (i, locks[i].update(sample_record(holder=f"m{i}", transitions=r), e, T)),
        )
        assert len(results) == 1, (results, errors)
        assert all(isinstance(e, Conflict) for e in errors), errors
        winner, version = results[0]
        got = locks[(winner + 1) % 5].get(T)
        assert got is not None and got.version == version and got.record.holder == f"m{winner}"


def test_an_acceptor_reconnects_when_its_agent_comes_back(tmp_path) -> None:
    """Agent g2 is SIGKILLed and restarted under the running process: its acceptor votes again."""
    with SerfCluster(3, tmp_path / "serf", prefix="r") as serf:
        members = serf.names
        voters = [GossipBackend.from_url(a.url(members, tmp_path / a.name)) for a in serf.agents]
        try:
            lock = voters[0].lock(_name())
            version = lock.create(sample_record(), T)
            serf.agents[2].kill()
            with pytest.raises(BackendUnavailable):
                voters[2].lock(lock.name).get(0.5)  # its own agent is gone
            serf.restart(2)
            serf.wait_alive(range(3))
            assert voters[2].acceptor is not None and voters[2].acceptor.connected.wait(10)
            voters[1].close()  # from now on g0 and g2 must both vote
            version = lock.update(sample_record(transitions=4), version, T)
            got = voters[2].lock(lock.name).get(T)
            assert got is not None and got.version == version and got.record.transitions == 4
        finally:
            for b in voters:
                b.close()


def test_acceptor_rules_and_the_reserved_successor(tmp_path) -> None:
    """The acceptor's rules, without the network (the race test covers them end to end)."""
    from celery_leader.backends.gossip import AcceptorStore

    store = AcceptorStore(tmp_path / "acc", "n0")
    try:
        def send(op, b, v=None):
            msg = {"o": op, "n": "x", "b": list(b)}
            if v is not None:
                msg["v"] = list(v)
            return store.handle(msg)[0]

        assert send("p", (1, "a"))["ok"]
        assert not send("p", (1, "0"))["ok"]  # below the promise
        assert send("a", (1, "a"), ("1.a", b"v1"))["ok"]
        assert store.peek("x").promised == (2, "a")  # the accept reserved a's next ballot
        assert not send("p", (1, "z"))["ok"]  # (1, z) > (1, a) but below the reservation
        assert not send("p", (2, "0"))["ok"]
        assert send("a", (1, "a"), ("1.a", b"v1"))["ok"]  # a resend is answered the same way
        assert send("a", (2, "a"), ("2.a", b"v2"))["ok"]  # a's one-round write
        assert not send("a", (2, "a"), ("2.a", b"other"))["ok"]  # one value per ballot
        answer = send("p", (3, "b"))
        assert answer["ok"] and answer["a"] == [2, "a"] and answer["v"] == ["2.a", b"v2"]
        assert not send("a", (3, "a"), ("3.a", b"late"))["ok"]  # a's reservation was overtaken
        assert store.handle({"o": "r", "n": "x"})[0]["v"] == ["2.a", b"v2"]
    finally:
        store.close()
    again = AcceptorStore(tmp_path / "acc", "n0")  # and it is all on disk
    try:
        assert again.peek("x").promised == (3, "b") and again.peek("x").value == ("2.a", b"v2")
    finally:
        again.close()


# --- what an idle standby costs (counted, never timed) ---


def test_a_read_answers_for_its_own_node_from_the_store_and_asks_the_others(five, opened, state) -> None:
    """A read counts the local acceptor's answer read from its store (under its file lock) and
    queries only the other members: the local acceptor answers no read query through serf."""
    import threading

    members = ["g0", "g1", "g2"]
    backends = [_open(five, opened, i, members, state) for i in range(3)]
    served: dict[str, list[str]] = {b.node: [] for b in backends}
    reader = threading.get_ident()
    for b in backends:
        store = b.acceptor.store  # type: ignore[union-attr]
        handle = store.handle

        def counted(request, node=b.node, handle=handle):
            where = "local" if threading.get_ident() == reader else "serf"  # the test's own thread reads
            served[node].append(f"{request['o']}:{where}")
            return handle(request)

        store.handle = counted
    name = _name()
    version = backends[1].lock(name).create(sample_record(holder="one"), T)
    lock = backends[0].lock(name)
    for _ in range(5):
        got = lock.get(T)
        assert got is not None and got.version == version and got.record.holder == "one"
    assert served["g0"].count("r:local") == 5 and "r:serf" not in served["g0"]
    # each read is decided by a quorum (2 of 3): the local answer and at least one other, so
    # the two others answered at least 5 reads between them (a query gossiped over UDP may
    # miss one of them, and a read decided without it is not sent again)
    assert served["g1"].count("r:serf") + served["g2"].count("r:serf") >= 5
    # a write still goes to every member through serf, the local one included
    version = lock.update(sample_record(holder="zero"), version, T)
    assert "p:serf" in served["g0"] and "a:serf" in served["g0"]
    got = backends[2].lock(name).get(T)
    assert got is not None and got.version == version and got.record.holder == "zero"


def test_an_idle_acceptor_thread_sleeps_and_stop_still_ends_it(five, opened, state) -> None:
    """The acceptor's serving thread sleeps until its connection ends (it polled five times a
    second); stop() closes the connection, which ends the thread at once."""
    from tests.wakeups import wakeups

    backend = _open(five, opened, 0, ["g0", "g1", "g2"], state)
    acceptor = backend.acceptor
    assert acceptor is not None and acceptor.connected.wait(10)
    thread = acceptor._thread
    before = wakeups(thread)
    time.sleep(1.5)
    assert wakeups(thread) - before <= 1
    started = time.monotonic()
    backend.close()  # the last user: stops the acceptor
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.5


def test_a_standby_follows_the_leaders_renewals_from_its_own_acceptor(five, opened, state) -> None:
    """Every accept of the leader's renewals reaches the standby's local acceptor, which hands
    the value to the engine as a hint (issue 21): no read round per renewal; a takeover after
    the leader is gone is still a compare-and-swap after the lease."""
    members = ["g0", "g1", "g2"]
    backends = [_open(five, opened, i, members, state) for i in range(3)]
    name = _name()

    def stored_by_the_standby() -> None:
        got = backends[2].lock(name).get(T)
        assert got is not None and got.record.holder == "standby"

    standby_follows_by_hints(name, backends[0], backends[1].lock(name), then=stored_by_the_standby)
