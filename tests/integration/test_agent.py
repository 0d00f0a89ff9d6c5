"""lbsync agent against real haproxy and serf processes on loopback (tests.rig.devstack).

Every scenario ends with `lbsync status --check` and with HAProxy's own reload counter
at zero: membership changes must never reload. Each one runs against both HAProxy
binaries of `haproxy_bin`: 2.6 (dynamic cookies) and 3.0 (node-name cookies).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from haproxy_fixtures import HAProxyBin, dynamic_cookie

from lbsync.cluster.addresses import HTTP_PORT
from lbsync.settings import Settings
from tests.rig.devstack import DevStack
from tests.rig.procs import StackError, wait_for

pytestmark = [
    pytest.mark.integration,
    # haproxy_bin skips a missing haproxy binary
    pytest.mark.skipif(not shutil.which("serf"), reason="needs the serf binary"),
]

_nets = itertools.count(60)


def make_stack(tmp_path: Path, haproxy_bin: HAProxyBin, **kw: object) -> Iterator[DevStack]:
    stack = DevStack(tmp_path / "stack", net=next(_nets),  # type: ignore[arg-type]
                     haproxy_bin=haproxy_bin.path, **kw)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        # What went wrong is in these logs; pytest shows them only on failure.
        for key in ("agent", "haproxy", "serf-lb"):
            sys.stderr.write(f"--- {key}.log ---\n{stack.log(key)[-4000:]}\n")


@pytest.fixture
def stack(tmp_path: Path, haproxy_bin: HAProxyBin) -> Iterator[DevStack]:
    yield from make_stack(tmp_path, haproxy_bin)


def status_check(stack: DevStack) -> subprocess.CompletedProcess[str]:
    return stack.lbsync("status", "--check", *stack.settings_flags())


def assert_converged(stack: DevStack) -> None:
    """`lbsync status --check` passes (allowing the agent a moment) and nothing reloaded."""
    last: list[subprocess.CompletedProcess[str]] = []

    def converged() -> bool:
        last[:] = [status_check(stack)]
        return last[0].returncode == 0

    try:
        wait_for(converged, 15, "lbsync status --check", interval=0.3)
    except StackError:
        raise AssertionError(f"lbsync status --check:\n{last[0].stdout}{last[0].stderr}"
                             ) from None
    assert stack.master().status().reloads == 0, "a membership change reloaded HAProxy"


def config_text(stack: DevStack) -> str:
    return stack.paths["config"].read_text()


def nodes_answering(stack: DevStack, n: int) -> set[str]:
    return {requests.get(f"{stack.frontend}/info", timeout=5).headers["X-Node"]
            for _ in range(n)}


def expected_cookie(stack: DevStack, haproxy_bin: HAProxyBin, name: str) -> str:
    """What lbsync makes a member's cookie: its name on 3.0+; on 2.6 HAProxy's dynamic
    cookie, a hash of --cookie-key (the default here), the address and the port."""
    if haproxy_bin.explicit_cookies:
        return name
    return dynamic_cookie(Settings().cookie_key, stack.members[name].ip, HTTP_PORT)


def client_on(stack: DevStack, name: str) -> requests.Session:
    """A client whose first request landed on `name`: its cookie now pins it there.

    New clients are spread by leastconn, so one lands on `name` within a few tries unless
    `name` takes no traffic: then the test fails after 15 s, naming where they went."""
    deadline = time.monotonic() + 15.0
    landed: list[str] = []
    while time.monotonic() < deadline:
        client = requests.Session()
        landed.append(client.get(f"{stack.frontend}/info", timeout=5).headers["X-Node"])
        if landed[-1] == name:
            return client
        client.close()
    raise AssertionError(f"no new client landed on {name} within 15 s: {len(landed)} went to "
                         f"{sorted(set(landed))}")


def served_by(client: requests.Session, stack: DevStack, n: int = 10) -> set[str]:
    """The nodes that serve `client`'s next n requests. Its kept-alive connections are
    closed first (after a reload they lead to the old worker): only its cookie is kept."""
    client.close()
    return {client.get(f"{stack.frontend}/info", timeout=5).headers["X-Node"] for _ in range(n)}


def test_join_serves_and_cookie_sticks(stack: DevStack, haproxy_bin: HAProxyBin) -> None:
    stack.add_member(1)
    stack.add_member(2)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 15, "node1 and node2 UP")
    assert nodes_answering(stack, 20) == {"node1", "node2"}  # leastconn uses both

    client = requests.Session()
    first = client.get(f"{stack.frontend}/info", timeout=5)
    sticky = first.headers["X-Node"]
    assert client.cookies.get("SERVERID") == expected_cookie(stack, haproxy_bin, sticky)
    assert served_by(client, stack, 20) == {sticky}
    assert " node1 " in config_text(stack) and " node2 " in config_text(stack)
    assert_converged(stack)


def test_cookies_keep_clients_on_their_node_across_a_join_and_a_reload(
        stack: DevStack, haproxy_bin: HAProxyBin) -> None:
    """The cookie of a server lbsync added at runtime is the one it has from haproxy.cfg
    after a reload (node name on 3.0, dynamic hash on 2.6), so no client changes node."""
    stack.add_member(1)
    stack.add_member(2)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 15, "node1 and node2 UP")
    clients = {name: client_on(stack, name) for name in ("node1", "node2")}

    stack.add_member(3)
    wait_for(lambda: len(stack.up_servers()) == 3, 15, "node3 UP")
    clients["node3"] = client_on(stack, "node3")
    for name, client in clients.items():
        assert client.cookies.get("SERVERID") == expected_cookie(stack, haproxy_bin, name)
        assert served_by(client, stack) == {name}, f"{name}'s client moved after the join"
    if haproxy_bin.explicit_cookies:
        assert all(f" cookie node{i}" in config_text(stack) for i in (1, 2, 3))
    else:
        assert " cookie " not in config_text(stack).split("# lbsync:servers begin")[1]
    assert stack.master().status().reloads == 0

    # A structure change: lbsync saves the server state and reloads; the servers now
    # come from haproxy.cfg, node3 included.
    stack.agent_args = ["--check-rise", "2"]
    stack.restart_agent()
    wait_for(lambda: stack.master().status().reloads == 1, 15, "one reload")
    wait_for(lambda: len(stack.up_servers()) == 3, 15, "3 UP after the reload")
    for name, client in clients.items():
        assert served_by(client, stack) == {name}, f"{name}'s client moved after the reload"
        # A newcomer on the same node gets the same cookie as before the reload.
        fresh = client_on(stack, name)
        assert fresh.cookies.get("SERVERID") == client.cookies.get("SERVERID")
    assert stack.master().status().reloads == 1


class Held:
    """A request on `name` through HAProxy, held there `seconds` by the backend's /slow."""

    def __init__(self, stack: DevStack, client: requests.Session, name: str,
                 seconds: float) -> None:
        self.name = name
        self.result: dict[str, object] = {}
        cookies = client.cookies.copy()
        self._thread = threading.Thread(target=self._run, args=(
            f"{stack.frontend}/slow?s={seconds:g}", cookies, seconds), daemon=True)
        self._thread.start()

    def _run(self, url: str, cookies: requests.cookies.RequestsCookieJar,
             seconds: float) -> None:
        try:
            r = requests.get(url, timeout=seconds + 30, cookies=cookies)
            self.result = {"status": r.status_code, "node": r.headers.get("X-Node")}
        except requests.RequestException as e:  # a cut session: the test says so
            self.result = {"error": str(e)}

    def join(self, timeout: float) -> dict[str, object]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the held request never ended"
        return self.result


def hold_on(stack: DevStack, name: str, seconds: float) -> tuple[requests.Session, Held]:
    """A client pinned to `name`, and one of its requests held open there."""
    client = client_on(stack, name)
    held = Held(stack, client, name, seconds)
    wait_for(lambda: stack.servers()[name].sessions == 1, 5, f"the held session on {name}")
    return client, held


def test_graceful_leave_redispatches_cookie_holders_then_removes(stack: DevStack) -> None:
    stack.add_member(1)
    stack.add_member(2)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 15, "both UP")
    client, held = hold_on(stack, "node2", 4)
    stack.leave_member("node2")
    # Maintenance, not drain: drain would still send node2's cookie holders to node2.
    wait_for(lambda: stack.servers()["node2"].state_word == "MAINT", 5, "node2 in MAINT")
    assert served_by(client, stack, 5) == {"node1"}, "a cookie holder went to the leaver"
    assert "node2" in stack.servers(), "removed before its session ended"
    assert held.join(20) == {"status": 200, "node": "node2"}, "the held session was cut"
    wait_for(lambda: "node2" not in stack.servers(), 10, "node2 removed after its session")
    # The file follows the runtime change a few milliseconds later.
    wait_for(lambda: " node2 " not in config_text(stack), 5, "node2 out of haproxy.cfg")
    assert nodes_answering(stack, 5) == {"node1"}
    assert "shutdown sessions" not in stack.log("agent").split("maint server=node2")[0]
    assert_converged(stack)


@pytest.fixture
def slow_drain_stack(tmp_path: Path, haproxy_bin: HAProxyBin) -> Iterator[DevStack]:
    yield from make_stack(tmp_path, haproxy_bin, agent_args=["--drain-timeout", "12s"])


def test_leave_goes_on_across_an_agent_restart(slow_drain_stack: DevStack) -> None:
    """The agent restarts in the middle of a leave: the open session is not cut early (the
    maint is not taken for a half-done removal), cookie holders stay redispatched, and
    the server is removed at the leave's deadline, not at one counted from the restart."""
    stack = slow_drain_stack
    stack.add_member(1)
    stack.add_member(2)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 15, "both UP")
    client, short = hold_on(stack, "node2", 6)
    across = Held(stack, client, "node2", 10)  # open across the restart, ends before 12 s
    forever = Held(stack, client, "node2", 40)  # outlives the drain timeout
    wait_for(lambda: stack.servers()["node2"].sessions == 3, 5, "3 held sessions on node2")
    stack.leave_member("node2")
    wait_for(lambda: stack.servers()["node2"].state_word == "MAINT", 5, "node2 in MAINT")
    left = time.monotonic()
    memory_file = stack.paths["config"].with_name("lbsync-memory.json")
    wait_for(lambda: memory_file.exists() and "node2" in memory_file.read_text(), 5,
             "node2 in lbsync's memory file")
    assert served_by(client, stack, 5) == {"node1"}, "a cookie holder went to the leaver"
    assert short.join(20) == {"status": 200, "node": "node2"}
    stack.restart_agent()
    restarted = time.monotonic()
    assert restarted - left > 4, "the restart must come well into the drain"
    assert served_by(client, stack, 5) == {"node1"}, "a cookie holder went to the leaver"
    assert across.join(20) == {"status": 200, "node": "node2"}, "cut after the restart"
    wait_for(lambda: "node2" not in stack.servers(), 20, "node2 removed at its deadline")
    removed = time.monotonic() - left
    # Counted from the restart, the deadline would be more than 16 s after the leave.
    assert removed < 12 + 2.5, f"removed {removed:.1f} s after the leave (timeout 12 s)"
    # The 40 s session did not keep node2 past the deadline: it was cut there (3.0 says
    # so to the client; 2.6 replays the GET on node1, retry-on empty-response).
    assert forever.result.get("node") != "node2", "removed only once every session ended"
    wait_for(lambda: " node2 " not in config_text(stack), 5, "node2 out of haproxy.cfg")
    assert_converged(stack)


def test_maint_lbsync_set_is_undone_after_an_agent_restart(stack: DevStack) -> None:
    """A member that says ready=0 gets lbsync's maint; it says ready=1 again after the
    agent restarted: lbsync remembers the maint was its own and undoes it."""
    for i in (1, 2):
        stack.add_member(i)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 15, "both UP")
    _, held = hold_on(stack, "node2", 8)  # keeps node2 in HAProxy while it is out
    set_ready(stack, "node2", "0")
    wait_for(lambda: stack.servers()["node2"].state_word == "MAINT", 5, "node2 in MAINT")
    stack.restart_agent()
    set_ready(stack, "node2", "1")
    wait_for(lambda: "node2" in stack.up_servers(), 10, "node2 UP again")
    assert held.join(20) == {"status": 200, "node": "node2"}
    assert_converged(stack)


def set_ready(stack: DevStack, name: str, value: str) -> None:
    m = stack.members[name]
    subprocess.run(["serf", "tags", "-rpc-addr", f"{m.ip}:7373", "-set", f"ready={value}"],
                   check=True, capture_output=True, timeout=10)


def test_serf_failed_alone_cuts_no_session(stack: DevStack) -> None:
    """Gossip lost while HTTP flows (the member's Serf agent frozen): the server is drained
    (Serf says failed), but HAProxy's check passes, so its session is not cut after
    --failed-grace; it finishes, and the member serves again when gossip comes back."""
    for i in (1, 2):
        stack.add_member(i)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 15, "both UP")
    _, held = hold_on(stack, "node2", 14)
    serf = stack.members["node2"].serf
    assert serf is not None
    os.kill(serf.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "member-failed member=node2" in stack.log("agent"), 30,
                 "Serf calls node2 failed")
        wait_for(lambda: stack.servers()["node2"].state_word == "DRAIN", 5, "node2 drained")
        assert stack.servers()["node2"].sessions == 1
        assert held.join(30) == {"status": 200, "node": "node2"}, "Serf's word cut it"
    finally:
        os.kill(serf.pid, signal.SIGCONT)
    assert "kill server=node2" not in stack.log("agent")
    wait_for(lambda: "node2" in stack.up_servers(), 30, "node2 back in rotation")
    assert_converged(stack)


def test_crash_is_removed_after_failure_detection(stack: DevStack) -> None:
    stack.add_member(1)
    stack.add_member(2)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 15, "both UP")
    stack.kill_member("node1")
    wait_for(lambda: "node1" not in stack.servers(), 30, "node1 removed after kill -9")
    wait_for(lambda: " node1 " not in config_text(stack), 5, "node1 out of haproxy.cfg")
    assert "member-failed member=node1" in stack.log("agent")
    assert nodes_answering(stack, 5) == {"node2"}
    assert_converged(stack)


def test_last_server_is_kept(stack: DevStack) -> None:
    stack.add_member(1)
    wait_for(lambda: stack.up_servers() == {"node1"}, 15, "node1 UP")
    stack.kill_member("node1")
    wait_for(lambda: "keeping servers=node1" in stack.log("agent"), 30, "the keep warning")
    assert "node1" in stack.servers()
    wait_for(lambda: stack.servers()["node1"].state_word == "DOWN", 10, "node1 marked DOWN")
    assert " node1 " in config_text(stack)


def test_agent_restart_loses_and_duplicates_nothing(stack: DevStack) -> None:
    for i in (1, 2, 3):
        stack.add_member(i)
    wait_for(lambda: len(stack.up_servers()) == 3, 15, "3 UP")
    before = stack.servers()
    stack.restart_agent()
    stack.add_member(4)
    wait_for(lambda: len(stack.up_servers()) == 4, 15, "4 UP after the agent restart")
    after = stack.servers()
    assert {n: (s.addr, s.port) for n, s in before.items()} == {
        n: (s.addr, s.port) for n, s in after.items() if n != "node4"}
    assert "failed" not in stack.log("agent").split("signal SIGTERM")[-1]
    assert_converged(stack)


def test_member_that_left_while_agent_was_down_is_removed(stack: DevStack) -> None:
    stack.add_member(1)
    stack.add_member(2)
    wait_for(lambda: len(stack.up_servers()) == 2, 15, "2 UP")
    stack.kill("agent")
    stack.leave_member("node2")
    stack.start_agent()
    wait_for(lambda: "node2" not in stack.servers(), 15, "node2 removed by the resync")
    assert_converged(stack)


def test_haproxy_restart_brings_the_same_servers_back(stack: DevStack) -> None:
    for i in (1, 2):
        stack.add_member(i)
    wait_for(lambda: len(stack.up_servers()) == 2, 15, "2 UP")
    stack.restart_haproxy()
    # From the file alone: the agent has not had to add anything.
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 10, "both back from haproxy.cfg")
    assert nodes_answering(stack, 10) == {"node1", "node2"}
    assert_converged(stack)


def test_structure_change_reloads_once_and_keeps_servers(stack: DevStack) -> None:
    for i in (1, 2):
        stack.add_member(i)
    wait_for(lambda: len(stack.up_servers()) == 2, 15, "2 UP")
    stack.agent_args = ["--check-rise", "2"]
    stack.restart_agent()
    wait_for(lambda: stack.master().status().reloads == 1, 15, "one reload")
    assert "rise 2" in config_text(stack)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 10, "servers after the reload")
    stack.add_member(3)
    wait_for(lambda: len(stack.up_servers()) == 3, 15, "3 UP")
    assert stack.master().status().reloads == 1, "the join after the reload reloaded again"


def test_unsafe_member_input_never_reaches_haproxy(stack: DevStack) -> None:
    stack.add_member(1)
    stack.add_member(2, tags={"port": "99999"})
    stack.add_member(3, tags={"weight": "heavy"})
    stack.add_member(4, name="bad;name")
    wait_for(lambda: stack.up_servers() == {"node1"}, 15, "node1 UP")
    wait_for(lambda: "refused member=node2" in stack.log("agent")
             and "refused member=node3" in stack.log("agent")
             and "refused member='bad;name'" in stack.log("agent"), 10, "the refusals")
    text = config_text(stack)
    assert "node2" not in text and "node3" not in text and "bad" not in text
    assert set(stack.servers()) == {"node1"}
    status = status_check(stack)
    assert "refused" in status.stdout


@pytest.fixture
def handler_stack(tmp_path: Path, haproxy_bin: HAProxyBin) -> Iterator[DevStack]:
    yield from make_stack(tmp_path, haproxy_bin, handler_mode=True)


def test_event_handler_wiring(handler_stack: DevStack) -> None:
    """Classic wiring: serf -event-handler 'lbsync handle' writes the registry, the agent
    (no RPC) follows the folder."""
    stack = handler_stack
    stack.add_member(1)
    stack.add_member(2)
    wait_for(lambda: stack.up_servers() == {"node1", "node2"}, 20, "both UP via the handler")
    assert (stack.paths["registry"] / "node1.json").exists()
    stack.leave_member("node2")
    wait_for(lambda: "node2" not in stack.servers(), 20, "node2 removed via the handler")
    assert_converged(stack)
