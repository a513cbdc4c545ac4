"""The leadership-log checker must catch what it exists to catch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celery_leader.testing.cluster import check_intervals, read_intervals


def write_log(path: Path, node: str, pid: int, token: int, start: float, end: float, *, stop: bool = True,
              beat: float = 0.02, pause: tuple[float, float] | None = None) -> None:  # fmt: skip
    lines = [{"e": "start", "t": start, "node": node, "pid": pid, "token": token}]
    t = start
    while t < end:
        if pause is None or not (pause[0] <= t < pause[1]):
            lines.append({"e": "beat", "t": t, "node": node, "pid": pid, "token": token})
        t += beat
    if stop:
        lines.append({"e": "stop", "t": end, "node": node, "pid": pid, "token": token})
    with open(path, "a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)


def test_clean_handover_is_safe(tmp_path):
    write_log(tmp_path / "a.log", "a", 1, 1, 100.0, 101.0)
    write_log(tmp_path / "b.log", "b", 2, 2, 101.2, 102.0)
    report = check_intervals(read_intervals([tmp_path / "a.log", tmp_path / "b.log"]))
    report.assert_safe()
    assert [iv.token for iv in report.intervals] == [1, 2]
    assert report.gaps[0][2] == pytest.approx(0.2, abs=0.01)


def test_overlap_is_caught(tmp_path):
    write_log(tmp_path / "a.log", "a", 1, 1, 100.0, 101.0)
    write_log(tmp_path / "b.log", "b", 2, 2, 100.5, 102.0)
    report = check_intervals(read_intervals([tmp_path / "a.log", tmp_path / "b.log"]))
    assert len(report.overlaps) == 1
    a, b, seconds = report.overlaps[0]
    assert (a.node, b.node) == ("a", "b") and seconds == pytest.approx(0.5, abs=0.03)
    with pytest.raises(AssertionError, match="overlap"):
        report.assert_safe()


def test_overlap_of_a_killed_child_is_measured_to_its_last_beat(tmp_path):
    write_log(tmp_path / "a.log", "a", 1, 1, 100.0, 101.0, stop=False)  # SIGKILLed: no stop line
    write_log(tmp_path / "b.log", "b", 2, 2, 100.9, 102.0)
    report = check_intervals(read_intervals([tmp_path / "a.log", tmp_path / "b.log"]))
    assert len(report.overlaps) == 1 and not report.intervals[0].stopped_cleanly


def test_token_regression_is_caught(tmp_path):
    write_log(tmp_path / "a.log", "a", 1, 5, 100.0, 101.0)
    write_log(tmp_path / "b.log", "b", 2, 3, 101.5, 102.0)
    report = check_intervals(read_intervals([tmp_path / "a.log", tmp_path / "b.log"]))
    assert len(report.token_regressions) == 1
    with pytest.raises(AssertionError, match="token regression"):
        report.assert_safe()


def test_equal_tokens_for_two_terms_are_a_regression(tmp_path):
    write_log(tmp_path / "a.log", "a", 1, 4, 100.0, 101.0)
    write_log(tmp_path / "b.log", "b", 2, 4, 101.5, 102.0)
    assert check_intervals(read_intervals([tmp_path / "a.log", tmp_path / "b.log"])).token_regressions


def test_work_after_a_pause_counts_only_as_shutdown(tmp_path):
    # a was frozen from 100.5 to 103.0, b led from 101.6; a logged a little after resuming
    write_log(tmp_path / "a.log", "a", 1, 1, 100.0, 103.05, pause=(100.5, 103.0))
    write_log(tmp_path / "b.log", "b", 2, 2, 101.6, 104.0)
    report = check_intervals(read_intervals([tmp_path / "a.log", tmp_path / "b.log"], pause_threshold=0.5))
    assert report.safe
    assert report.intervals[0].tail == pytest.approx(2.55, abs=0.05)


def test_torn_lines_are_ignored(tmp_path):
    write_log(tmp_path / "a.log", "a", 1, 1, 100.0, 100.5, stop=False)
    with open(tmp_path / "a.log", "a") as fh:
        fh.write('{"e": "beat", "t": 1')  # SIGKILL mid-write
    intervals = read_intervals([tmp_path / "a.log", tmp_path / "missing.log"])
    assert len(intervals) == 1 and intervals[0].end < 100.5
