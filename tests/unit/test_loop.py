"""The daemon's loop, driven with plain times: bursts, duplicate snapshots, the resync
timer, the crash policy, and the registry re-synced from the last snapshot."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest

from lbsync.loop import BUSY_INTERVAL, IDLE_INTERVAL, TOUCHED, Loop, RealClock, Snapshot
from lbsync.metrics import Metrics
from lbsync.model import EventKind, LbsyncError, Member, MemberEvent, MemberStatus, Plan
from lbsync.reconcile import TickResult
from lbsync.registry import Registry

RESYNC = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_000_000.0 + self.t


class FakePass:
    """Records each pass; answers `busy`, or raises `fail` when set."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.busy = False
        self.fail: Exception | None = None

    def tick(self, now: float | None = None) -> TickResult:
        assert now is not None
        self.calls.append(now)
        if self.fail is not None:
            raise self.fail
        return TickResult(Plan(), busy=self.busy)


Rig = tuple[Loop, FakePass, Registry, Metrics]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    registry = Registry(tmp_path / "nodes")
    registry.root.mkdir()
    passes, metrics = FakePass(), Metrics()
    loop = Loop(registry, passes, metrics, FakeClock(), serf=True, resync_interval=RESYNC)
    return loop, passes, registry, metrics


def edge(name: str, status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, f"10.0.0.{name[1:]}", {"role": "edge"}, status)


def started(rig: Rig, *members: Member) -> Rig:
    """The first batch (at t=0: the start's pass) with a snapshot of `members`."""
    loop, passes, _, _ = rig
    loop.handle([Snapshot(list(members))], 0.0)
    assert passes.calls == [0.0]
    return rig


# --- bursts ---------------------------------------------------------------------------


def test_a_burst_of_queued_events_costs_one_pass(rig: Rig) -> None:
    loop, passes, registry, _ = started(rig, edge("n1"))
    burst: list[object] = [
        MemberEvent(EventKind.JOIN, (edge("n2"),)),
        MemberEvent(EventKind.JOIN, (edge("n3"), edge("n4"))),
        TOUCHED,
        Snapshot([edge("n1"), edge("n2"), edge("n3"), edge("n4"), edge("n5")]),
        TOUCHED,
    ]
    loop.handle(burst, 1.0)
    assert passes.calls == [0.0, 1.0], "one pass for the whole batch"
    assert set(registry.load()) == {"n1", "n2", "n3", "n4", "n5"}


def test_run_drains_the_whole_queue_before_reconciling(rig: Rig) -> None:
    loop, passes, registry, _ = rig
    q: queue.Queue[object] = queue.Queue()
    for i in range(1, 6):
        q.put(MemberEvent(EventKind.JOIN, (edge(f"n{i}"),)))
    stop = threading.Event()
    seen: list[set[str]] = []

    class StopAfterOne(FakePass):
        def tick(self, now: float | None = None) -> TickResult:
            seen.append(set(registry.load()))
            stop.set()
            return super().tick(now)

    loop.reconciler = one = StopAfterOne()
    loop.run(q, stop)
    assert len(one.calls) == 1
    assert seen == [{"n1", "n2", "n3", "n4", "n5"}], "every queued event before the pass"


def test_the_real_clock_reads_monotonic_and_wall_time() -> None:
    clock = RealClock()
    assert clock.now() <= clock.now()
    assert clock.wall() > 1_600_000_000


# --- duplicate snapshots ---------------------------------------------------------------


def test_a_repeated_snapshot_is_not_synced_again_nor_reconciled(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    loop, passes, registry, _ = started(rig, edge("n1"), edge("n2"))
    syncs: list[int] = []
    real_sync = registry.sync
    monkeypatch.setattr(registry, "sync", lambda members, now: (
        syncs.append(1), real_sync(members, now))[1])
    for t in (0.5, 1.0, 1.5):
        assert loop.handle([Snapshot([edge("n2"), edge("n1")])], t) is None
    assert syncs == [] and passes.calls == [0.0]
    loop.handle([Snapshot([edge("n1"), edge("n2", MemberStatus.LEFT)])], 2.0)
    assert syncs == [1] and passes.calls == [0.0, 2.0], "a new list is synced at once"
    assert registry.get("n2") is not None
    assert registry.get("n2").status == MemberStatus.LEFT  # type: ignore[union-attr]


def test_a_stream_event_lets_the_next_equal_snapshot_correct_it(rig: Rig) -> None:
    # The stream lags the poll: after a stream event the poll's (unchanged) list is
    # synced again rather than skipped as a duplicate.
    loop, passes, registry, _ = started(rig, edge("n1"), edge("n2"))
    loop.handle([MemberEvent(EventKind.LEAVE, (edge("n2"),))], 1.0)
    assert registry.get("n2").status == MemberStatus.LEFT  # type: ignore[union-attr]
    loop.handle([Snapshot([edge("n1"), edge("n2")])], 2.0)
    assert registry.get("n2").status == MemberStatus.ALIVE  # type: ignore[union-attr]
    assert passes.calls == [0.0, 1.0, 2.0]


# --- the resync timer -----------------------------------------------------------------


def test_the_resync_timer_fires_at_its_period_and_not_before(rig: Rig) -> None:
    loop, passes, _, _ = started(rig)
    assert loop.timeout(0.0) == IDLE_INTERVAL
    assert loop.timeout(29.5) == pytest.approx(0.5), "woken for the timer"
    for t in (1.0, 15.0, 29.9):
        assert loop.tick(t) is None
    assert passes.calls == [0.0]
    assert loop.tick(30.0) is not None
    assert passes.calls == [0.0, 30.0]
    assert loop.tick(31.0) is None and loop.tick(59.9) is None
    loop.tick(60.0)
    assert passes.calls == [0.0, 30.0, 60.0]


def test_a_late_resync_counts_the_next_period_from_when_it_ran(rig: Rig) -> None:
    loop, passes, _, _ = started(rig)
    loop.tick(45.0)  # the machine slept: one pass, not two
    loop.tick(74.0)
    loop.tick(75.0)
    assert passes.calls == [0.0, 45.0, 75.0]


def test_a_resync_heals_the_registry_from_the_last_snapshot(rig: Rig) -> None:
    loop, passes, registry, _ = started(rig, edge("n1"), edge("n2"))
    registry.delete("n2")  # a file lost behind lbsync's back, no event about it
    loop.tick(10.0)
    assert registry.get("n2") is None, "nothing happens before the timer"
    loop.tick(RESYNC)
    assert registry.get("n2") is not None, "the resync re-syncs from the last snapshot"
    assert passes.calls == [0.0, RESYNC]


def test_a_touched_registry_is_re_synced_from_the_last_snapshot(rig: Rig) -> None:
    loop, passes, registry, metrics = started(rig, edge("n1"), edge("n2"))
    registry.path("n2").write_text("{ damaged", encoding="utf-8")
    loop.handle([TOUCHED], 3.0)
    assert registry.get("n2") == registry.load()["n2"]
    assert registry.get("n2").status == MemberStatus.ALIVE  # type: ignore[union-attr]
    assert passes.calls == [0.0, 3.0]


def test_touched_without_any_snapshot_still_reconciles(rig: Rig) -> None:
    # Serf off (registry only: `lbsync handle` writes the files): a touch is the news.
    loop, passes, registry, _ = rig
    loop.handle([], 0.0)
    registry.put(edge("n1"))
    loop.handle([TOUCHED], 1.0)
    assert passes.calls == [0.0, 1.0]
    assert set(registry.load()) == {"n1"}


# --- busy and the crash policy -----------------------------------------------------------


def test_a_busy_pass_is_followed_soon_by_another(rig: Rig) -> None:
    loop, passes, _, _ = rig
    passes.busy = True
    loop.tick(0.0)
    assert loop.timeout(0.0) == BUSY_INTERVAL
    loop.tick(0.25)
    passes.busy = False
    loop.tick(0.5)
    assert passes.calls == [0.0, 0.25, 0.5]
    assert loop.timeout(0.5) == IDLE_INTERVAL
    assert loop.tick(0.75) is None, "idle again: only events and the timer wake it"


@pytest.mark.parametrize("failure", [LbsyncError("runtime API gone"), RuntimeError("a bug")],
                         ids=["lbsync-error", "crash"])
def test_a_failed_pass_never_stops_the_loop_and_is_retried_soon(
        rig: Rig, failure: Exception, caplog: pytest.LogCaptureFixture) -> None:
    loop, passes, _, metrics = rig
    passes.fail = failure
    for t in (0.0, 0.25, 0.5):
        assert loop.tick(t) is None  # raised nothing
        assert loop.timeout(t) == BUSY_INTERVAL
    assert passes.calls == [0.0, 0.25, 0.5], "retried on every busy wake-up, no give-up"
    assert metrics.value("lbsync_reconcile_passes_total", result="error") == 3
    logged = [r for r in caplog.records if r.name == "lbsync.loop"]
    assert len(logged) == 3
    if isinstance(failure, LbsyncError):
        assert all(r.getMessage() == "reconcile failed: runtime API gone" for r in logged)
    else:
        assert all(r.exc_info is not None for r in logged), "a crash logs its traceback"
    passes.fail = None
    assert loop.tick(0.75) is not None
    assert metrics.value("lbsync_reconcile_passes_total", result="ok") == 1
    assert loop.tick(1.0) is None, "healthy again: back to idle"
