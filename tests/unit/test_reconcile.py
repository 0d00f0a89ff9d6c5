"""The reconcile pass with fakes for HAProxy's runtime API, master CLI and `haproxy -c`.

The fake runtime API refuses what HAProxy refuses (`del server` of a server not in
maintenance or still holding sessions, `add server` of a name in use), with HAProxy's own
words, and the passes read its answers with lbsync's real `response_error`."""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lbsync import apply
from lbsync.haproxy.runtime import response_error
from lbsync.model import (
    ADMIN_FDRAIN,
    ADMIN_FMAINT,
    OP_RUNNING,
    OP_STOPPED,
    LbsyncError,
    Member,
    MemberStatus,
    ServerState,
)
from lbsync.reconcile import Effects, Reconciler
from lbsync.registry import Registry
from lbsync.settings import Settings


class FakeHAProxy:
    """Enough of the runtime API to follow lbsync's commands, and to fail on demand."""

    def __init__(self) -> None:
        self.servers: dict[str, ServerState] = {}
        self.commands: list[str] = []
        self.down = False
        self.sessions: dict[str, int] = {}

    def servers_state(self, backend: str) -> list[ServerState]:
        if self.down:
            raise LbsyncError("cannot connect to HAProxy")
        return [ServerState(s.backend, s.name, s.addr, s.port, s.op_state, s.admin_state,
                            s.uweight, s.iweight, self.sessions.get(s.name, 0))
                for s in self.servers.values()]

    def execute(self, commands: list[str]) -> list[str]:
        self.commands += commands
        return [self._one(c) for c in commands]

    def _one(self, command: str) -> str:
        words = shlex.split(command)
        if command.startswith("show servers state"):
            return "1\n# be_id be_name srv_id srv_name"
        if words[:2] == ["add", "server"]:
            name = words[2].split("/")[1]
            if name in self.servers:
                return "Already exists a server with the same name in backend."
            addr, port = words[3].rsplit(":", 1)
            weight = int(words[words.index("weight") + 1])
            self.servers[name] = ServerState("nodes", name, addr, int(port), OP_RUNNING,
                                             ADMIN_FMAINT, weight, weight)
            return "New server registered."
        if words[:2] == ["del", "server"]:
            name = words[2].split("/")[1]
            if name not in self.servers:
                return "No such server."
            if not self.servers[name].forced_maint:
                return "Only servers in maintenance mode can be deleted."
            if self.sessions.get(name, 0):
                return "Server still has connections attached to it, cannot remove it."
            del self.servers[name]
            return "Server deleted."
        if words[:3] == ["shutdown", "sessions", "server"]:
            self.sessions.pop(words[3].split("/")[1], None)
            return ""
        if words[:3] == ["set", "server", words[2]] and words[3] == "state":
            name = words[2].split("/")[1]
            admin = {"ready": 0, "drain": ADMIN_FDRAIN, "maint": ADMIN_FMAINT}[words[4]]
            s = self.servers[name]
            self.servers[name] = ServerState(s.backend, s.name, s.addr, s.port, s.op_state,
                                             admin, s.uweight, s.iweight)
        return ""


class FakeMaster:
    def __init__(self) -> None:
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1


def ok_check(path: Path) -> None:
    pass


Rig = tuple[Settings, Registry, FakeHAProxy, FakeMaster]


@pytest.fixture
def setup(tmp_path: Path) -> Rig:
    settings = Settings(registry_dir=tmp_path / "nodes", haproxy_config=tmp_path / "haproxy.cfg",
                        runtime_socket=str(tmp_path / "admin.sock"), drain_timeout=10,
                        reload_min_interval=5)
    return settings, Registry(settings.registry_dir), FakeHAProxy(), FakeMaster()


def reconciler(settings: Settings, registry: Registry, haproxy: FakeHAProxy,
               master: FakeMaster, check: Callable[[Path], None] = ok_check,
               wall: Callable[[], float] = lambda: 1_000_000.0) -> Reconciler:
    return Reconciler(settings, registry, (2, 6, 12),
                      Effects(haproxy, master, check, response_error, wall=wall))


def edge(name: str, addr: str, status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, addr, {"role": "edge"}, status)


def test_join_adds_writes_config_and_never_reloads(setup: Rig) -> None:
    settings, registry, haproxy, master = setup
    r = reconciler(*setup)
    registry.put(edge("n1", "10.0.0.1"))
    r.tick(0.0)
    assert set(haproxy.servers) == {"n1"}
    assert "server n1 10.0.0.1:8080" in settings.haproxy_config.read_text()
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(1.0)
    assert set(haproxy.servers) == {"n1", "n2"}
    assert master.reloads == 0


def two_then_n2_leaves_busy(setup: Rig, status: MemberStatus = MemberStatus.LEFT) -> Reconciler:
    """n1 and n2 serve; at t=1 n2 leaves (or fails) while it still has 3 sessions."""
    _, registry, haproxy, _ = setup
    r = reconciler(*setup)
    for n in ("n1", "n2"):
        registry.put(edge(n, f"10.0.0.{n[1]}"))
    r.tick(0.0)
    registry.put(edge("n2", "10.0.0.2", status))
    haproxy.sessions["n2"] = 3
    r.tick(1.0)
    return r


def test_leave_sets_maintenance_waits_for_sessions_then_removes(setup: Rig) -> None:
    settings, registry, haproxy, _ = setup
    r = two_then_n2_leaves_busy(setup)
    assert haproxy.servers["n2"].forced_maint and not haproxy.servers["n2"].draining
    assert "shutdown sessions server nodes/n2" not in haproxy.commands
    assert r.tick(2.0).busy, "a leave in progress asks to be called again soon"
    assert "n2" in haproxy.servers
    haproxy.sessions["n2"] = 0
    r.tick(3.0)
    assert set(haproxy.servers) == {"n1"}
    assert " n2 " not in settings.haproxy_config.read_text()


def test_drain_timeout_removes_a_busy_server(setup: Rig) -> None:
    _, registry, haproxy, _ = setup
    r = two_then_n2_leaves_busy(setup)
    r.tick(5.0)
    assert "n2" in haproxy.servers
    r.tick(11.5)  # 10 s after lbsync sent the drain
    assert "n2" not in haproxy.servers


def check_fails(haproxy: FakeHAProxy, name: str) -> None:
    s = haproxy.servers[name]
    haproxy.servers[name] = ServerState(s.backend, s.name, s.addr, s.port, OP_STOPPED,
                                        s.admin_state, s.uweight, s.iweight)


def test_failed_member_is_drained_at_once_and_killed_once_its_check_fails_too(
        setup: Rig) -> None:
    settings, registry, haproxy, _ = setup
    r = two_then_n2_leaves_busy(setup, MemberStatus.FAILED)
    assert r.tick(1.05).busy, "a failed member's drain asks to be called again soon"
    assert haproxy.servers["n2"].draining
    check_fails(haproxy, "n2")
    r.tick(1.0 + settings.failed_grace / 2)
    assert "shutdown sessions server nodes/n2" not in haproxy.commands, "within the grace"
    r.tick(1.0 + settings.failed_grace)
    assert "shutdown sessions server nodes/n2" in haproxy.commands
    assert set(haproxy.servers) == {"n1"}


def test_failed_member_whose_check_passes_keeps_its_sessions_until_the_failed_timeout(
        setup: Rig) -> None:
    # Gossip lost while HTTP flows: Serf's word alone cuts nothing.
    settings, registry, haproxy, _ = setup
    r = two_then_n2_leaves_busy(setup, MemberStatus.FAILED)
    r.tick(1.0 + settings.failed_grace + 1)
    assert r.tick(1.0 + settings.failed_timeout - 0.5).busy
    assert "shutdown sessions server nodes/n2" not in haproxy.commands
    assert haproxy.servers["n2"].draining, "drained, not maint: its check keeps running"
    r.tick(1.0 + settings.failed_timeout)
    assert "shutdown sessions server nodes/n2" in haproxy.commands
    assert set(haproxy.servers) == {"n1"}


def test_failed_member_that_comes_back_is_undrained(setup: Rig) -> None:
    settings, registry, haproxy, _ = setup
    r = two_then_n2_leaves_busy(setup, MemberStatus.FAILED)
    r.tick(1.0 + settings.failed_grace + 1)
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(5.0)
    assert not haproxy.servers["n2"].out_of_rotation


def test_failed_then_left_flap_cuts_no_session_before_the_drain_timeout(setup: Rig) -> None:
    # Serf may call a leaving member failed until its leave intent arrives.
    settings, registry, haproxy, _ = setup
    r = two_then_n2_leaves_busy(setup, MemberStatus.FAILED)
    registry.put(edge("n2", "10.0.0.2", MemberStatus.LEFT))
    r.tick(1.1)
    r.tick(1.0 + settings.failed_grace + 1)
    assert "shutdown sessions server nodes/n2" not in haproxy.commands
    haproxy.sessions["n2"] = 0
    r.tick(5.0)
    assert set(haproxy.servers) == {"n1"}


def test_a_del_refused_for_attached_connections_is_retried_soon(setup: Rig) -> None:
    _, registry, haproxy, _ = setup
    r = reconciler(*setup)
    for n in ("n1", "n2"):
        registry.put(edge(n, f"10.0.0.{n[1]}"))
    r.tick(0.0)
    registry.put(edge("n2", "10.0.0.2", MemberStatus.LEFT))
    r.tick(1.0)  # drain
    original = haproxy._one
    haproxy._one = lambda c: (  # type: ignore[method-assign]
        "Server still has connections attached to it, cannot remove it."
        if c.startswith("del server") else original(c))
    assert r.tick(2.0).busy, "the refused del is retried by the next pass, soon"
    assert "n2" in haproxy.servers
    haproxy._one = original  # type: ignore[method-assign]
    assert not r.tick(2.1).busy
    assert set(haproxy.servers) == {"n1"}


def test_member_back_after_lbsync_drained_it_is_undrained(setup: Rig) -> None:
    _, registry, haproxy, _ = setup
    r = reconciler(*setup)
    for n in ("n1", "n2"):
        registry.put(edge(n, f"10.0.0.{n[1]}"))
    r.tick(0.0)
    registry.put(edge("n2", "10.0.0.2", MemberStatus.LEAVING))
    haproxy.sessions["n2"] = 1
    r.tick(1.0)
    assert haproxy.servers["n2"].forced_maint
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(2.0)
    assert not haproxy.servers["n2"].out_of_rotation


def test_maintenance_lbsync_did_not_set_is_left_alone(setup: Rig) -> None:
    # An operator's, or a stopping node's agent-check answering `maint`.
    _, registry, haproxy, _ = setup
    r = reconciler(*setup)
    for n in ("n1", "n2"):
        registry.put(edge(n, f"10.0.0.{n[1]}"))
    r.tick(0.0)
    haproxy.execute(["set server nodes/n2 state maint"])
    r.tick(1.0)
    assert haproxy.servers["n2"].forced_maint
    haproxy.commands.clear()
    r.tick(2.0)
    assert haproxy.commands == []


# --- the memory file: lbsync's holds survive a restart -----------------------------------


class Wall:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_restart_mid_leave_keeps_the_leaves_deadline(setup: Rig) -> None:
    settings, registry, haproxy, master = setup
    wall = Wall()
    r = reconciler(*setup, wall=wall)
    for n in ("n1", "n2"):
        registry.put(edge(n, f"10.0.0.{n[1]}"))
    r.tick(0.0)
    registry.put(edge("n2", "10.0.0.2", MemberStatus.LEFT))
    haproxy.sessions["n2"] = 3
    r.tick(1.0)  # maint at wall 1_000_000
    assert (settings.haproxy_config.parent / "lbsync-memory.json").exists()
    # A new process with another monotonic origin, 4 s later.
    wall.t += 4
    r2 = reconciler(*setup, wall=wall)
    r2.tick(5000.0)
    assert "n2" in haproxy.servers, "its sessions are not cut for the restart"
    wall.t += 5.5
    r2.tick(5005.5)  # 9.5 s into the 10 s drain timeout
    assert "n2" in haproxy.servers
    wall.t += 0.5
    r2.tick(5006.0)  # 10 s since the maint, 6 s since the restart
    assert "n2" not in haproxy.servers, "the deadline counts from the leave, not the restart"


def test_restart_remembers_which_maintenance_was_lbsyncs(setup: Rig) -> None:
    _, registry, haproxy, _ = setup
    r = reconciler(*setup)
    for n in ("n1", "n2", "n3"):
        registry.put(edge(n, f"10.0.0.{n[1]}"))
    r.tick(0.0)
    registry.put(Member("n2", "10.0.0.2", {"role": "edge", "ready": "0"}))
    haproxy.sessions["n2"] = 1
    r.tick(1.0)
    assert haproxy.servers["n2"].forced_maint
    haproxy.execute(["set server nodes/n3 state maint"])  # an operator's
    r2 = reconciler(*setup)
    registry.put(edge("n2", "10.0.0.2"))  # ready again
    r2.tick(2.0)
    assert not haproxy.servers["n2"].out_of_rotation, "lbsync's own maint is undone"
    assert haproxy.servers["n3"].forced_maint, "the operator's is not"


def test_restart_finishes_a_removal_lbsync_had_started(setup: Rig) -> None:
    _, registry, haproxy, _ = setup
    r = reconciler(*setup)
    for n in ("n1", "n2"):
        registry.put(edge(n, f"10.0.0.{n[1]}"))
    r.tick(0.0)
    registry.put(edge("n2", "10.0.0.2", MemberStatus.LEFT))
    r.tick(1.0)
    haproxy.sessions["n2"] = 2
    r.tick(12.0)  # past the drain timeout: maint, shutdown sessions, del
    assert "n2" not in haproxy.servers
    # As if `del` had been refused and the agent stopped: n2 is back in maint, removing.
    haproxy.servers["n2"] = ServerState("nodes", "n2", "10.0.0.2", 8080, OP_STOPPED,
                                        ADMIN_FMAINT, 100, 100)
    r.mem.removing.add("n2")
    r.mem.save(12.0)
    haproxy.commands.clear()
    reconciler(*setup).tick(13.0)
    assert "del server nodes/n2" in haproxy.commands
    assert "n2" not in haproxy.servers


def test_damaged_memory_file_is_one_warning_and_an_empty_memory(
        setup: Rig, caplog: pytest.LogCaptureFixture) -> None:
    settings, registry, haproxy, _ = setup
    path = settings.haproxy_config.parent / "lbsync-memory.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"version": 1, "held_by_us": "n2"')
    registry.put(edge("n1", "10.0.0.1"))
    r = reconciler(*setup)
    r.tick(0.0)
    r.tick(1.0)
    warnings = [rec for rec in caplog.records if rec.name == "lbsync.memory"]
    assert len(warnings) == 1 and "damaged" in warnings[0].getMessage()
    assert r.mem.held_by_us == set()
    assert set(haproxy.servers) == {"n1"}
    assert '"version": 1' in path.read_text(), "rewritten whole"


def test_rejected_config_keeps_the_old_file(setup: Rig) -> None:
    settings, registry, haproxy, master = setup
    registry.put(edge("n1", "10.0.0.1"))
    reconciler(*setup).tick(0.0)
    before = settings.haproxy_config.read_text()

    def reject(path: Path) -> None:
        raise LbsyncError("[ALERT] parsing error")

    r = reconciler(settings, registry, haproxy, master, reject)
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(1.0)
    assert settings.haproxy_config.read_text() == before
    assert "n2" in haproxy.servers, "the runtime change still happens"
    assert not list(settings.haproxy_config.parent.glob(".*.candidate"))


def test_runtime_down_still_keeps_the_file_current(setup: Rig) -> None:
    settings, registry, haproxy, _ = setup
    haproxy.down = True
    registry.put(edge("n1", "10.0.0.1"))
    reconciler(*setup).tick(0.0)
    assert "server n1 10.0.0.1:8080" in settings.haproxy_config.read_text()


def test_structure_change_reloads_once_rate_limited(setup: Rig) -> None:
    settings, registry, haproxy, master = setup
    registry.put(edge("n1", "10.0.0.1"))
    reconciler(*setup).tick(0.0)  # HAProxy runs this file
    changed = Settings(**{**settings.__dict__, "check_rise": 3})
    r = reconciler(changed, registry, haproxy, master)
    r.tick(10.0)
    assert master.reloads == 1
    assert "rise 3" in settings.haproxy_config.read_text()
    assert (settings.haproxy_config.with_name("haproxy.state")).exists(), "state saved first"
    r.tick(11.0)
    assert master.reloads == 1, "same structure: no second reload"
    again = Settings(**{**settings.__dict__, "check_rise": 4})
    r2 = reconciler(again, registry, haproxy, master)
    r2.config.last_reload = 10.0
    assert r2.tick(12.0).busy, "held back by --reload-min-interval, and says so"
    assert master.reloads == 1
    r2.tick(15.5)
    assert master.reloads == 2


# --- what a pass reports (TickResult, counted by lbsync.metrics) --------------------------


def test_tick_result_reports_outcomes_and_a_good_pass(setup: Rig) -> None:
    _, registry, _, _ = setup
    registry.put(edge("n1", "10.0.0.1"))
    result = reconciler(*setup).tick(0.0)
    assert [(o.step.action, o.step.server, o.error) for o in result.outcomes] == [
        ("add", "n1", None)]
    assert result.problem is None and not result.reloaded


def test_tick_result_problem_when_haproxy_is_unreachable(setup: Rig) -> None:
    _, registry, haproxy, _ = setup
    haproxy.down = True
    registry.put(edge("n1", "10.0.0.1"))
    result = reconciler(*setup).tick(0.0)
    assert result.problem == "runtime API unreachable"
    assert result.outcomes == ()


def test_tick_result_problem_when_the_config_is_rejected(setup: Rig) -> None:
    settings, registry, haproxy, master = setup

    def reject(path: Path) -> None:
        raise LbsyncError("[ALERT] parsing error")

    registry.put(edge("n1", "10.0.0.1"))
    result = reconciler(settings, registry, haproxy, master, reject).tick(0.0)
    assert result.problem == "haproxy -c rejected the rendered config"


def test_tick_result_problem_when_haproxy_refuses_a_command(setup: Rig) -> None:
    settings, registry, haproxy, master = setup
    r = Reconciler(settings, registry, (2, 6, 12), Effects(
        haproxy, master, ok_check,
        lambda command, answer: "No such backend." if command.startswith(
            "add server") else None))
    registry.put(edge("n1", "10.0.0.1"))
    result = r.tick(0.0)
    assert result.problem == "HAProxy refused 1 command(s)"
    assert result.outcomes[0].error is not None


def test_tick_result_refusals_and_reload(setup: Rig) -> None:
    settings, registry, haproxy, master = setup
    registry.put(Member("n1", "10.0.0.1", {"role": "edge", "port": "99999"}))
    first = reconciler(*setup).tick(0.0)
    assert [r.member for r in first.refused] == ["n1"]
    changed = Settings(**{**settings.__dict__, "check_rise": 3})
    result = reconciler(changed, registry, haproxy, master).tick(10.0)
    assert result.reloaded and result.problem is None


# --- the fake refuses what HAProxy refuses: a removal that skips a step fails ---------------


def test_the_fake_refuses_what_haproxy_refuses() -> None:
    haproxy = FakeHAProxy()
    add = "add server nodes/n1 10.0.0.1:8080 weight 100"
    assert haproxy.execute([add, add]) == [
        "New server registered.", "Already exists a server with the same name in backend."]
    haproxy.execute(["set server nodes/n1 state ready"])
    assert haproxy.execute(["del server nodes/n1"]) == [
        "Only servers in maintenance mode can be deleted."]
    haproxy.sessions["n1"] = 1
    haproxy.execute(["set server nodes/n1 state maint"])
    assert haproxy.execute(["del server nodes/n1"]) == [
        "Server still has connections attached to it, cannot remove it."]
    haproxy.execute(["shutdown sessions server nodes/n1"])
    assert haproxy.execute(["del server nodes/n1", "del server nodes/n1"]) == [
        "Server deleted.", "No such server."]


@pytest.mark.parametrize(("skip", "refusal"), [
    ("state maint", "Only servers in maintenance mode can be deleted."),
    ("shutdown sessions", "Server still has connections attached to it"),
])
def test_a_removal_that_skips_maint_or_shutdown_sessions_fails(
        setup: Rig, monkeypatch: pytest.MonkeyPatch, skip: str, refusal: str) -> None:
    settings, registry, haproxy, _ = setup
    real_removal = apply._removal

    def careless(be: str, name: str, cur: ServerState | None) -> tuple[str, ...]:
        return tuple(c for c in real_removal(be, name, cur) if skip not in c)

    monkeypatch.setattr(apply, "_removal", careless)
    # A failed member with sessions: drained (not in maintenance), then killed once its
    # check fails too: the kill needs both `state maint` and `shutdown sessions`.
    r = two_then_n2_leaves_busy(setup, MemberStatus.FAILED)
    check_fails(haproxy, "n2")
    result = r.tick(1.0 + settings.failed_grace)
    assert "n2" in haproxy.servers, "HAProxy keeps a server it was not allowed to delete"
    errors = [o.error for o in result.outcomes if o.step.action == "kill"]
    assert len(errors) == 1 and errors[0] is not None and refusal in errors[0]


# --- the daemon's background writer (ConfigSync(background=True)) ------------------------


class GatedCheck:
    """`haproxy -c` that waits for `gate` and records the files' server lines it saw."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.seen: list[list[str]] = []
        self.reject = False

    def __call__(self, path: Path) -> None:
        self.started.release()
        assert self.gate.wait(10), "the test never opened the gate"
        self.seen.append([ln.split()[1] for ln in path.read_text().splitlines()
                          if ln.strip().startswith("server ")])
        if self.reject:
            raise LbsyncError("[ALERT] parsing error")
        if self.disk_error:
            raise OSError(30, "Read-only file system")

    disk_error = False


def background(setup: Rig, check: GatedCheck) -> Reconciler:
    """A reconciler with the daemon's writer, after a first (synchronous) pass with n1."""
    settings, registry, haproxy, master = setup
    registry.put(edge("n1", "10.0.0.1"))
    r = Reconciler(settings, registry, (2, 6, 12),
                   Effects(haproxy, master, check, response_error), background_writes=True)
    check.gate.set()
    r.tick(0.0)  # HAProxy runs nothing known yet: the first write waits for its check
    assert "server n1 " in settings.haproxy_config.read_text()
    check.gate.clear()
    return r


def test_background_write_does_not_hold_the_pass_and_the_file_follows(setup: Rig) -> None:
    settings, registry, haproxy, _ = setup
    check = GatedCheck()
    r = background(setup, check)
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(1.0)  # returns while `haproxy -c` is still held at the gate
    assert "n2" in haproxy.servers, "the runtime change is not held by the file"
    assert check.started.acquire(timeout=5)
    assert "n2" not in settings.haproxy_config.read_text()
    check.gate.set()
    r.config.writer.flush()  # type: ignore[union-attr]
    assert "server n2 10.0.0.2:8080" in settings.haproxy_config.read_text()
    r.config.close()


def test_background_writes_latest_wins(setup: Rig) -> None:
    settings, registry, _, _ = setup
    check = GatedCheck()
    r = background(setup, check)
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(1.0)
    assert check.started.acquire(timeout=5)  # n1+n2 is being checked
    for i, n in enumerate(("n3", "n4", "n5"), start=3):
        registry.put(edge(n, f"10.0.0.{i}"))
        r.tick(float(i))  # each replaces the one before, not started yet
    check.gate.set()
    r.config.close()
    assert check.seen[1:] == [["n1", "n2"], ["n1", "n2", "n3", "n4", "n5"]]
    assert "server n5 " in settings.haproxy_config.read_text()


def test_background_rejection_keeps_the_file_and_is_reported_until_mended(setup: Rig) -> None:
    settings, registry, _, _ = setup
    check = GatedCheck()
    r = background(setup, check)
    before = settings.haproxy_config.read_text()
    check.reject = True
    check.gate.set()
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(1.0)
    r.config.writer.flush()  # type: ignore[union-attr]
    assert settings.haproxy_config.read_text() == before
    assert r.tick(2.0).problem == "haproxy -c rejected the rendered config"
    check.reject = False
    r.config.writer.flush()  # type: ignore[union-attr]
    assert r.tick(3.0).problem is None
    r.config.close()
    assert "server n2 " in settings.haproxy_config.read_text()


def test_background_structure_change_waits_for_the_file_before_reloading(setup: Rig) -> None:
    settings, registry, haproxy, master = setup
    check = GatedCheck()
    r = background(setup, check)
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(1.0)  # a background install of n1+n2 is held at the gate
    assert check.started.acquire(timeout=5)
    r.settings = r.config.settings = r.config.pipeline.settings = Settings(
        **{**settings.__dict__, "check_rise": 3})
    done = threading.Event()
    worker = threading.Thread(target=lambda: (r.tick(10.0), done.set()))
    worker.start()
    assert not done.wait(0.3), "a reload must wait for the pending write"
    assert master.reloads == 0
    check.gate.set()
    worker.join(10)
    assert done.is_set() and master.reloads == 1
    text = settings.haproxy_config.read_text()
    assert "rise 3" in text and "server n2 " in text
    r.config.close()


def test_background_writer_waits_when_haproxy_is_down(setup: Rig) -> None:
    settings, registry, haproxy, _ = setup
    check = GatedCheck()
    r = background(setup, check)
    check.gate.set()
    haproxy.down = True
    registry.put(edge("n2", "10.0.0.2"))
    r.tick(1.0)
    # No flush: HAProxy will start from the file, so it was written before tick returned.
    assert "server n2 10.0.0.2:8080" in settings.haproxy_config.read_text()
    r.config.close()


def test_background_disk_error_keeps_the_loop_coming_back_until_the_file_is_written(
        setup: Rig) -> None:
    settings, registry, _, _ = setup
    check = GatedCheck()
    r = background(setup, check)
    check.gate.set()
    check.disk_error = True  # the folder went read-only
    registry.put(edge("n2", "10.0.0.2"))
    assert not r.tick(1.0).busy  # the write is handed over; its failure is not known yet
    r.config.writer.flush()  # type: ignore[union-attr]
    failed = r.tick(2.0)
    assert failed.busy and failed.problem == "writing haproxy.cfg failed"
    assert "n2" not in settings.haproxy_config.read_text()
    check.disk_error = False  # healed: the loop's retry (the same text) writes it
    r.config.writer.flush()  # type: ignore[union-attr]
    r.tick(3.0)
    r.config.writer.flush()  # type: ignore[union-attr]
    assert "server n2 " in settings.haproxy_config.read_text()
    healed = r.tick(4.0)
    assert not healed.busy and healed.problem is None
    r.config.close()
