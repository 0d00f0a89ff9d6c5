"""The benchmark's own instruments against real processes: `lbsync bench`'s argument
checks, and bench/wampload.py counting WAMP sessions, calls and drops through HAProxy to
a real Crossbar node. A benchmark figure is only as good as the tool that counts it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.edges import CrossbarMembers, WampLoad, crossbar_id
from lbsync.cluster.addresses import HTTP_PORT
from tests.rig.devstack import DevStack
from tests.rig.procs import wait_for

pytestmark = pytest.mark.integration
CROSSBAR = Path(sys.executable).parent / "crossbar"


def lbsync_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lbsync", "bench", *args], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--out", "x.json", "--only", "10"], "--only '10'"),
    (["--out", "x.json", "--scale-sizes", "500,x"], "--scale-sizes '500,x'"),
    (["--out", "x.json", "--only", "a,b"], "--only 'a,b'"),
    (["--out", "x.json", "--net", "0"], "--net 0"),
    (["--out", "x.json", "--rate", "5"], "--rate 5"),
    (["--out", "x.json", "--wamp-held", "0", "--wamp-rotating", "0"], "--wamp-held"),
    (["--quick"], "--out"),
])
def test_bench_refuses_bad_arguments_in_one_line(args: list[str], fragment: str) -> None:
    r = lbsync_bench(*args)
    assert r.returncode == 2
    assert fragment in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr


def test_bench_help_is_the_suites() -> None:
    r = lbsync_bench("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: lbsync bench")
    assert "--quick" in r.stdout


@pytest.fixture
def one_crossbar_member(tmp_path: Path) -> Iterator[tuple[DevStack, CrossbarMembers]]:
    if not (shutil.which("haproxy") and shutil.which("serf") and CROSSBAR.exists()):
        pytest.skip("needs haproxy, serf and crossbar (the edge extra)")
    stack = DevStack(tmp_path / "stack", net=181)
    edges = CrossbarMembers(stack)
    try:
        stack.start()
        edges.start(1)
        edges.wait([1])
        stack.add_member(1, http=False)
        wait_for(lambda: stack.up_servers() == {"node1"}, 30, "node1 UP")
        yield stack, edges
    finally:
        stack.stop()


@pytest.fixture
def wamp_load(one_crossbar_member: tuple[DevStack, CrossbarMembers],
              tmp_path: Path) -> Iterator[WampLoad]:
    """bench.wampload through the stack's HAProxy: 2 held and 2 rotating clients. Killed at
    teardown whatever the test did; a test that wants the figures calls stop()."""
    stack, _ = one_crossbar_member
    load = WampLoad(f"ws://{stack.lb_ip}:{HTTP_PORT}/ws", tmp_path / "wamp.json",
                    held=2, rotating=2, timeout=2.0, report_progress=True)
    load.start()
    try:
        yield load
    finally:
        load.kill()


def test_wampload_counts_calls_and_exactly_the_drops_a_node_stop_causes(
        one_crossbar_member: tuple[DevStack, CrossbarMembers], wamp_load: WampLoad) -> None:
    stack, edges = one_crossbar_member
    load = wamp_load
    # Every client holds a session, and each rotating one has renewed at least once.
    wait_for(lambda: (p := load.progress()) and p["alive"] == 4 and p["opened"] >= 4 + 2
             and p["closed"] >= 2, 20, "4 sessions open and 2 rotations")
    stopped_at = time.time()
    edges.stop(1)  # the node goes: every open session ends under its client
    edges.start(1)
    edges.wait([1])
    wait_for(lambda: stack.up_servers() == {"node1"}, 30, "node1 UP again")
    # Clients reconnect through HAProxy. An attempt made while the server was DOWN waits
    # in HAProxy's queue until the client's 2 s timeout, so a reconnect takes a few tries.
    wait_for(lambda: (p := load.progress()) and p["drops"] >= 2
             and p["reconnects"] == p["drops"] and p["alive"] == 4 and p["calls"] > 20,
             30, "every dropped client back, and 20 calls")
    r = load.stop()

    assert r["calls"]["ok"] > 20 and r["calls"]["failed"] == 0
    assert r["sessions_per_node"] == {crossbar_id(1): r["sessions_opened"]}
    drops = r["drops"]
    # The two held sessions were open when the node stopped; the rotating ones were too,
    # unless caught between a GOODBYE and their next join.
    assert r["drops_held"] == 2
    assert 2 <= len(drops) <= 4
    assert all(d["t"] >= stopped_at for d in drops), "a drop before the node stopped"
    assert r["reconnect_s"]["n"] == len(drops), "a dropped client did not come back"
    assert r["sessions_closed_by_client"] >= 2 + 2  # rotations + the final GOODBYEs
    # Sampled every 0.25 s; a rotating client is between two sessions for a few ms.
    assert max(n for _, n in r["alive"][-8:]) == 4, "every client holds a session again"


def _check_cost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.check_cost", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_check_cost_sees_the_first_check_follow_the_downinter(tmp_path: Path) -> None:
    if not shutil.which("haproxy"):
        pytest.skip("needs haproxy")
    out = tmp_path / "check.json"
    r = _check_cost("--downinter", "200ms,20ms", "--runs", "3", "--down", "5",
                    "--seconds", "0.5", "--net", "168", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = {row["downinter"]: row for row in json.loads(out.read_text())["rows"]}
    # lbsync's add commands with --check-downinter: the first check waits for one
    # downinter, so a 10x shorter one must show (HAProxy's timer, not this machine's speed).
    assert rows["20ms"]["add_to_up_ms_p50"] < rows["200ms"]["add_to_up_ms_p50"] / 2
    assert rows["200ms"]["add_to_up_ms_p50"] >= 150
    assert rows["20ms"]["checks_per_s_expected"] == 250


@pytest.mark.parametrize("bad", ["0ms", "soon"])
def test_check_cost_refuses_a_bad_downinter_in_one_line(bad: str) -> None:
    r = _check_cost("--downinter", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"--downinter {bad!r}" in r.stderr.strip().splitlines()[-1]
