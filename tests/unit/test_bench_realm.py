"""The pure statistics of the benchmark's part 6 (bench/realm.py): a figure in the report is
only as good as the counting behind it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench.realm import (
    count_delivery,
    event_latencies,
    first_ready,
    latency_summary,
    median,
    mesh_complete,
    mesh_progress,
    per_second,
    per_second_median,
    ratio,
)


def test_latency_summary_median_and_nearest_rank_p99() -> None:
    s = latency_summary([float(i) for i in range(1, 101)])  # 1..100 ms
    assert s == {"n": 100, "p50": 50.5, "p99": 99.0, "max": 100.0}


def test_latency_summary_of_one_and_of_none() -> None:
    assert latency_summary([2.5]) == {"n": 1, "p50": 2.5, "p99": 2.5, "max": 2.5}
    assert latency_summary([]) == {"n": 0, "p50": None, "p99": None, "max": None}


@pytest.mark.parametrize(("a", "b", "expected"), [
    (3.0, 2.0, 1.5), (1.0, 3.0, 0.33), (None, 2.0, None), (2.0, None, None), (2.0, 0.0, None)])
def test_ratio(a: float | None, b: float | None, expected: float | None) -> None:
    assert ratio(a, b) == expected


def test_median_skips_missing_values() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None, None]) is None
    assert median([]) is None


def test_every_event_once_is_nothing_lost_nothing_duplicated() -> None:
    assert count_delivery(range(5), [0, 1, 2, 3, 4]) == {
        "expected": 5, "received": 5, "lost": 0, "duplicated": 0, "unexpected": 0,
        "reordered": 0}


def test_lost_duplicated_and_reordered_are_counted_apart() -> None:
    # 2 never arrives, 1 arrives three times, 4 comes before 3.
    got = count_delivery(range(6), [0, 1, 1, 4, 3, 1, 5])
    assert got["lost"] == 1
    assert got["duplicated"] == 2
    assert got["reordered"] == 2  # 4 -> 3 and 3 -> 1 step down
    assert got["received"] == 7 and got["expected"] == 6


def test_an_event_whose_publish_was_not_acknowledged_is_unexpected_not_lost() -> None:
    got = count_delivery([0, 1, 3], [0, 1, 2, 3])  # the publish of 2 failed, its event came
    assert (got["lost"], got["unexpected"], got["duplicated"]) == (0, 1, 0)


def test_nothing_received_loses_everything_acknowledged() -> None:
    assert count_delivery(range(3), [])["lost"] == 3


def test_window_counts_only_between_the_first_and_the_last_received() -> None:
    # A subscriber that came at 10 and left after 19 missed 14 in between, not 0-9 or 20+.
    got = count_delivery(range(30), [10, 11, 12, 13, 15, 16, 17, 18, 19], window=True)
    assert (got["expected"], got["lost"]) == (10, 1)
    assert count_delivery(range(30), [], window=True)["expected"] == 0


def test_per_second_bins_from_t0() -> None:
    assert per_second([100.0, 100.5, 101.2, 103.9, 99.9, 104.0], 100.0, 4) == [2, 1, 0, 1]
    assert per_second([1.0], 0.0, 0) == []


def test_per_second_median() -> None:
    samples = [(10.1, 3.0), (10.2, 1.0), (10.3, 2.0), (12.5, 7.0), (14.0, 1.0)]
    assert per_second_median(samples, 10.0, 3) == [2.0, None, 7.0]


def test_event_latencies_pair_each_receipt_with_its_publish() -> None:
    sent = {0: 10.0, 1: 10.02, 2: 10.04}
    got = event_latencies(sent, [0, 2, 9], [10.003, 10.045, 11.0])  # 9: publish unknown
    assert [t for t, _ in got] == [10.003, 10.045]
    assert [round(ms, 3) for _, ms in got] == [3.0, 5.0]


def _line(when: datetime, text: str) -> str:
    return f"{when.strftime('%Y-%m-%dT%H:%M:%S')}.{when.microsecond // 1000:03d} {text}"


def test_first_ready_reads_the_sidecar_log_in_utc() -> None:
    t1 = datetime(2026, 12, 2, 4, 37, 39, 470000, tzinfo=UTC)
    t2 = datetime(2026, 12, 2, 4, 37, 44, 869000, tzinfo=UTC)
    t3 = datetime(2026, 12, 2, 4, 50, 1, 5000, tzinfo=UTC)
    tags = "role=edge port=8080 agent-port=8081 version=0.1.0"
    log = "\n".join([
        _line(t1, f"INFO lbsync.edge.sidecar: tags set: {tags} ready=0 links=0/3 (35 ms)"),
        _line(t1, "INFO lbsync.edge.sidecar: ready=1 waits for the router links to node1"),
        _line(t2, f"INFO lbsync.edge.sidecar: tags set: {tags} ready=1 links=3/3 (90 ms)"),
        "node4:node4-crossbar: ERROR (not running)",
        _line(t3, f"INFO lbsync.edge.sidecar: tags set: {tags} ready=1 links=3/3 (80 ms)"),
    ])
    assert first_ready(log, t1.timestamp()) == pytest.approx(t2.timestamp())
    # A later join: the earlier runs' lines in the same (appended) log do not count.
    assert first_ready(log, t2.timestamp() + 1) == pytest.approx(t3.timestamp())
    assert first_ready(log, t3.timestamp() + 1) is None
    assert first_ready("", 0.0) is None


def test_mesh_progress_counts_only_wanted_links() -> None:
    wanted = {"node1": {"node2", "node3"}, "node2": {"node1", "node3"}, "node3": set()}
    up = {"node1": {"node2", "node3"}, "node2": {"node1", "node9"}}
    assert mesh_progress(wanted, up) == (3, 4)


def test_mesh_complete_needs_every_node_linked_to_every_other() -> None:
    full = {f"node{i}": {f"node{j}" for j in (1, 2, 3) if j != i} for i in (1, 2, 3)}
    assert mesh_complete(full, full, 3)
    assert not mesh_complete(full, full, 4)  # a node has not written its links.json yet
    partial = {**full, "node3": {"node1"}}
    assert not mesh_complete(full, partial, 3)
    # An empty links.json everywhere (the sidecars have not looked yet) is not done.
    nobody = {f"node{i}": set() for i in (1, 2, 3)}
    assert not mesh_complete(nobody, nobody, 3)
