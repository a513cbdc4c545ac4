"""The chaos harness's bookkeeping: the fence replay, the worker-side counts, the stored
runs and their aggregation into docs/benchmarks.md (no processes: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.chaos import COMMON, FencedStore, covering_plan, fence_replay, store
from benchmarks.chaos_integrations import Run, analyse, rq_runs, token_counts
from benchmarks.chaos_report import BEGIN, END, aggregate, load_runs, render, update_doc


def _log(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_fence_refuses_a_lower_token_and_counts_it() -> None:
    fence = FencedStore()
    assert fence.write(3) and fence.write(3) and fence.write(5)
    assert not fence.write(3)
    assert fence.write(None) is False  # no token at all is the lowest
    assert (fence.accepted, fence.refused, dict(fence.refused_tokens)) == (3, 2, {3: 1, -1: 1})


def test_fence_replay_refuses_the_writes_of_a_leader_that_woke_up(tmp_path: Path) -> None:
    # node0 (token 1) frozen at t=1.0; node1 (token 2) leads from t=2.5; node0 wakes at 3.0
    # and writes twice more before its supervisor stops it (garbage and torn lines ignored)
    a = _log(tmp_path / "node0.log", [{"e": "start", "t": 0.0, "token": 1}, {"e": "beat", "t": 1.0, "token": 1},
                                      {"e": "beat", "t": 3.0, "token": 1}, {"e": "beat", "t": 3.02, "token": 1}])
    b = _log(tmp_path / "node1.log", [{"e": "start", "t": 2.5, "token": 2}, {"e": "beat", "t": 2.6, "token": 2}])
    with open(b, "a") as fh:
        fh.write('{"e": "beat", "t": 2.7, "tok\nnot json\n')
    fence = fence_replay([a, b, tmp_path / "missing.log"])
    assert (fence.accepted, fence.refused, len(fence.refused_tokens)) == (4, 2, 1)


def test_worker_side_counts() -> None:
    runs = [Run(0.0, 0.1, 0, 1), Run(0.5, 0.6, 0, 1), Run(1.0, 1.1, 0, 1),
            Run(2.6, 2.7, 1, 2), Run(2.7, 2.8, 0, 1),  # node0 woke up and sent again: late
            Run(3.1, 3.2, 1, 2)]  # fmt: skip
    got = analyse(runs, 0.5)
    assert got["failovers"] == 3
    assert got["late_sends"] == 1 and got["fenced_refusals"] == 1
    assert got["token_regressions"] == 1
    assert got["duplicates"] == 1  # 2.6 and 2.7
    own_clocks = analyse(runs, 0.5, shared_schedule=False)
    assert own_clocks["duplicates"] == 0 and own_clocks["close_at_handover"] == 1
    assert analyse([Run(0.0, 0.0, 0, 1), Run(0.1, 0.1, 0, 1)], 0.5, shared_schedule=False)["duplicates"] == 1


def test_a_bounded_plan_kills_terminates_pauses_and_covers_the_backends_own_faults() -> None:
    import random

    own = ["server", "blackhole", "delay"]
    for seed in range(50):
        plan = covering_plan(random.Random(seed), own, list(COMMON), 6)
        assert len(plan) == 6 and set(own) <= set(plan), plan
        assert {"kill", "term", "pause"} <= set(plan), plan  # both handovers and a frozen leader
        assert plan == covering_plan(random.Random(seed), own, list(COMMON), 6)  # the seed replays it
    # more own kinds than room: kill, term and pause are never cut; the own kinds rotate by seed
    four = ["server", "lost", "blackhole", "delay"]
    seen: set[str] = set()
    for seed in range(20):
        short = covering_plan(random.Random(seed), four, list(COMMON), 6)
        assert len(short) == 6 and {"kill", "term", "pause"} <= set(short), short
        assert len(set(short) & set(four)) == 3, short
        seen |= set(short)
    assert set(four) <= seen
    assert sorted(covering_plan(random.Random(1), [], list(COMMON), 6)) == ["kill", "kill", "pause", "pause", "term", "term"]
    with pytest.raises(ValueError):
        covering_plan(random.Random(1), own, list(COMMON), 2)  # too few to cover the common kinds


def test_rq_tokens_are_read_from_the_jobs_the_worker_ran() -> None:
    """The RQ worker records each job's ``job.meta``: a deposed scheduler that woke up and
    moved one more job with its old token is a stale-token run (refused by a fence)."""

    def rec(ran: float, token: int | None, who: str, sent: float | None) -> dict:
        meta = {"celery_leader_identity": who} | ({"celery_leader_sent_at": sent} if sent is not None else {})
        return {"id": f"j{ran}", "token": token, "ran": ran, "meta": meta}

    records = [rec(1.0, 3, "p0", 0.9), rec(2.0, 4, "p1", 1.9), rec(2.5, 3, "p0", 2.4),  # p0 woke up
               rec(3.0, 4, "p1", 2.9), rec(3.5, None, "?", None)]  # fmt: skip
    runs = rq_runs(records)
    assert [r.node for r in runs] == [0, 1, 0, 1, 2] and runs[-1].sent == 3.5
    got = token_counts(runs)
    assert got["fenced_refusals"] == 2  # the stale token 3, and the run without a token
    assert got["late_sends"] == 2 and got["token_regressions"] == 2 and got["untokened_runs"] == 1
    clean = token_counts(rq_runs([rec(1.0, 3, "p0", 0.9), rec(2.0, 4, "p1", 1.9), rec(2.1, 4, "p1", 2.0)]))
    assert (clean["fenced_refusals"], clean["late_sends"], clean["token_regressions"]) == (0, 0, 0)


def _run(backend: str, date: str, faults: list[tuple[str, float, float | None]], **extra) -> dict:
    return {"date": date, "backend": backend, "seed": 1, "terms": len(faults) + 1, "overlaps": 0,
            "token_regressions": 0, "load": [1.0, 2.0],
            "faults": [{"kind": k, "leaderless": gap, "bound": b} for k, gap, b in faults], **extra}  # fmt: skip


def test_runs_add_up_in_the_report(tmp_path: Path) -> None:
    store(_run("redis", "2026-11-28 10:00:00 UTC", [("kill", 1.0, 2.7), ("delay", 0.0, None)]), tmp_path)
    store(_run("redis", "2026-11-29 10:00:00 UTC", [("kill", 3.0, 2.7), ("kill", 2.0, 2.7)]), tmp_path)
    store(_run("celery-beat", "2026-11-29 11:00:00 UTC", [("term", 0.9, 2.2)], integration=True, failovers=1,
               duplicates=0, fenced_refusals=2), tmp_path)  # fmt: skip
    # a second run stored in the same second by the same backend and seed is not lost
    store(_run("file", "2026-11-29 12:00:00 UTC", [("term", 0.5, 1.7)]), tmp_path)
    store(_run("file", "2026-11-29 12:00:00 UTC", [("term", 0.7, 1.7)]), tmp_path)
    # an RQ run from before the worker-side token count, and one after
    store(_run("rq-cron", "2026-11-29 07:00:00 UTC", [("kill", 1.0, 2.7)], integration=True, failovers=1,
               duplicates=0, late_sends=None, fenced_refusals=None), tmp_path)  # fmt: skip
    store(_run("rq-cron", "2026-11-29 13:00:00 UTC", [("kill", 1.0, 2.7)], integration=True, failovers=1,
               duplicates=0, late_sends=0, fenced_refusals=1), tmp_path)  # fmt: skip
    runs = load_runs(tmp_path)
    assert len(runs) == 7
    totals, gaps = aggregate(runs)
    by_name = {row[0]: row for row in totals}
    assert by_name["redis"][1:4] == [2, 4, "delay 1, kill 3"]
    assert by_name["redis"][-1] == "2026-11-28, 2026-11-29"
    assert by_name["celery-beat"][8] == "**0**" and by_name["celery-beat"][9] == "2"
    assert by_name["rq-cron"][7] == "**0** (counted in 1 of 2 runs)"
    assert by_name["rq-cron"][9] == "1 (counted in 1 of 2 runs)"
    kill = next(row for row in gaps if row[:2] == ["redis", "kill"])
    assert kill[2] == 3 and kill[3] == 2.0 and kill[4] == 3.0 and kill[6] == 1  # one over the bound
    block = render(runs)
    doc = "# x\n\n## Safety under faults (the chaos harness)\n\nprose\n"
    once = update_doc(doc, block)
    assert once.count(BEGIN) == 1 and once.count(END) == 1 and "prose" in once
    assert update_doc(once, block) == once  # replaced in place, not appended


def test_a_garbled_result_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json"):
        load_runs(tmp_path)


def test_the_fenced_child_stops_writing_when_a_newer_term_wrote(tmp_path: Path) -> None:
    """A child of token 4 starts after token 5 has written: the real Redis helper refuses
    its first write, the child logs one ``refused`` line and keeps beating (the harness's
    checker still sees its term) without writing again."""
    import os
    import subprocess
    import sys
    import time
    import uuid

    from tests.servers import port_open, unavailable

    if not port_open(6379):
        unavailable("Redis is not listening on 127.0.0.1:6379")
    redis = pytest.importorskip("redis")
    from celery_leader.fencing.redis import fenced_set

    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    key = f"celery-leader-chaos-test:{uuid.uuid4().hex[:8]}"
    log = tmp_path / "child.log"
    try:
        fenced_set(client, key, 5, "newer term")
        env = {**os.environ, "CELERY_LEADER_TOKEN": "4", "CELERY_LEADER_IDENTITY": "old"}
        child = subprocess.Popen([sys.executable, "-m", "benchmarks._fenced_child", str(log), "0.02",
                                  "redis://127.0.0.1:6379/0", key], env=env)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and '"refused"' not in (log.read_text() if log.exists() else ""):
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            child.terminate()
            child.wait(20)
        events = [json.loads(line) for line in log.read_text().splitlines()]
        kinds = [e["e"] for e in events]
        assert kinds.count("refused") == 1, kinds
        assert next(e for e in events if e["e"] == "refused")["seen"] == 5
        assert kinds[0] == "start" and kinds[-1] == "stop" and "beat" in kinds
        assert client.get(key) == b"newer term"
    finally:
        client.delete(key, f"{key}:fence")
        client.close()


def test_a_sigterm_after_the_term_ended_is_not_held_to_the_leaders_checks() -> None:
    """The harness picks the leader, then signals it; a fault just before (a black hole
    reaching the deadline) may end that term in between. The run's own log says which came
    first; a leader that mishandles SIGTERM logs the signal before its term ends."""
    from benchmarks.chaos import _led_when_signalled

    ended_first = ("x INFO celery_leader.core: chaos: node2 started leading (token 3)\n"
                   "x WARNING celery_leader.core: chaos: node2 stopped leading (token 3): the lease deadline passed\n"
                   "x INFO celery_leader.cli: received SIGTERM: stopping\n")  # fmt: skip
    signal_first = ("x INFO celery_leader.core: chaos: node2 started leading (token 3)\n"
                    "x INFO celery_leader.cli: received SIGTERM: stopping\n"
                    "x INFO celery_leader.core: chaos: node2 stopped leading (token 3): stopped\n")  # fmt: skip
    assert _led_when_signalled(ended_first, "chaos") is False
    assert _led_when_signalled(signal_first, "chaos") is True
    assert _led_when_signalled("x INFO celery_leader.cli: received SIGTERM: stopping\n", "chaos") is False
    assert _led_when_signalled(signal_first.replace("received SIGTERM", "received nothing"), "chaos") is None
    # another election's lines in the same log do not count
    assert _led_when_signalled(ended_first.replace("chaos: node2 stopped", "other: node2 stopped"), "chaos") is True


def test_the_child_checked_on_sigterm_is_the_one_of_the_term_the_signal_found() -> None:
    """Seen in a CI run under load: term 3 ended at its deadline (its child SIGKILLed, as it
    must be), term 4 began at once, and the SIGTERM came 35 ms after term 4's child started,
    before that child wrote its first line. The check is about term 4's child, whose stop the
    ``run``'s log reports (exit 143, no SIGKILL), not about term 3's."""
    from benchmarks.chaos import _child_stopped_gently
    from celery_leader.testing.cluster import Interval

    said = (
        "x INFO celery_leader.core: chaos: node1 started leading (token 3)\n"
        "x INFO celery_leader.cli: leading with token 3: started python3 (pid 10607)\n"
        "x WARNING celery_leader.core: chaos: node1 stopped leading (token 3): the lease deadline passed before a renewal succeeded\n"
        "x WARNING celery_leader.cli: python3 did not stop in time: SIGKILL\n"
        "x INFO celery_leader.core: chaos: node1 started leading (token 4)\n"
        "x INFO celery_leader.cli: stopped python3 (exit 137)\n"
        "x INFO celery_leader.cli: leading with token 4: started python3 (pid 10797)\n"
        "x INFO celery_leader.cli: received SIGTERM: stopping\n"
        "x INFO celery_leader.core: chaos: node1 stopped leading (token 4): stopped\n"
        "x INFO celery_leader.cli: stopped python3 (exit 143)\n"
        "x INFO celery_leader.core: chaos: released the lock\n"
    )

    def term(token: int, clean: bool) -> Interval:
        return Interval("node1", token, 10000 + token, 1.0, 2.0, 2.0, stopped_cleanly=clean)

    killed3 = term(3, False)
    assert _child_stopped_gently(said, "chaos", [killed3])  # term 4's child left no record: the run's log speaks
    sigkilled = said.replace("stopped python3 (exit 143)", "python3 did not stop in time: SIGKILL\nx INFO celery_leader.cli: stopped python3 (exit 137)")
    assert not _child_stopped_gently(sigkilled, "chaos", [killed3])
    assert not _child_stopped_gently(said.replace("stopped python3 (exit 143)\n", ""), "chaos", [killed3])  # no word of a stop
    # with term 4's own record, that record decides
    assert _child_stopped_gently(said, "chaos", [killed3, term(4, True)])
    assert not _child_stopped_gently(said, "chaos", [killed3, term(4, False)])
    # without a signal in the log: the last term, as before
    assert not _child_stopped_gently("x nothing\n", "chaos", [term(4, False)])
    assert not _child_stopped_gently("x nothing\n", "chaos", [])
