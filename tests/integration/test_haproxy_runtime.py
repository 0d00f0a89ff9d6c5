"""lbsync.haproxy against a real HAProxy (master-worker) on loopback, 2.6 and 3.0.

Every test that starts HAProxy (`haproxy_rig`) runs once per binary of `haproxy_bin`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from haproxy_fixtures import (
    BACKEND,
    COOKIE_KEY,
    HAProxyRig,
    HeldRequest,
    dynamic_cookie,
    http_get,
)

from lbsync.edge.agentcheck import AgentCheck
from lbsync.haproxy import runtime as runtime_module
from lbsync.haproxy.binary import ConfigInvalid, check_haproxy_config, haproxy_version
from lbsync.haproxy.master import MasterCLI, ReloadFailed
from lbsync.haproxy.runtime import (
    CommandFailed,
    RuntimeAPI,
    RuntimeAPIError,
    response_error,
)
from lbsync.model import ADMIN_FDRAIN, ADMIN_FMAINT, ServerState
from tests.rig.haproxy import wait_ready
from tests.rig.procs import free_port, wait_for

pytestmark = [pytest.mark.integration]  # haproxy_bin skips when a binary is missing


def server(rt: RuntimeAPI, name: str) -> ServerState | None:
    return next((s for s in rt.servers_state(BACKEND) if s.name == name), None)


def add_and_enable(rt: RuntimeAPI, name: str, port: int, extra: str = "") -> None:
    rt.run([
        f"add server {BACKEND}/{name} 127.0.0.1:{port} check inter 1s weight 5 {extra}".strip(),
        f"enable health {BACKEND}/{name}",
        f"enable server {BACKEND}/{name}",
    ])


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_server_lifecycle(haproxy_rig: HAProxyRig, kind: str) -> None:
    rt = haproxy_rig.runtime(kind)
    port = haproxy_rig.nodes[0].port

    rt.run([f"add server {BACKEND}/n1 127.0.0.1:{port} check inter 1s weight 5"])
    added = server(rt, "n1")
    assert added is not None
    assert (added.addr, added.port, added.uweight) == ("127.0.0.1", port, 5)
    assert added.in_maint, "a dynamic server starts in maintenance"

    rt.run([f"enable health {BACKEND}/n1", f"enable server {BACKEND}/n1"])
    wait_for(lambda: (s := server(rt, "n1")) is not None and s.up, 5.0, "n1 up")
    assert http_get(haproxy_rig.nodes_port).body == "node0"

    rt.run([f"set server {BACKEND}/n1 state drain"])
    drained = server(rt, "n1")
    assert drained is not None and drained.draining and drained.admin_state & ADMIN_FDRAIN
    assert drained.state_word == "DRAIN"

    rt.run([f"set server {BACKEND}/n1 state maint"])
    maint = server(rt, "n1")
    assert maint is not None and maint.in_maint and maint.state_word == "MAINT"

    answers = rt.run([f"shutdown sessions server {BACKEND}/n1", f"del server {BACKEND}/n1"])
    assert answers == ["", "Server deleted."]
    assert server(rt, "n1") is None


def test_batch_of_many_commands_uses_one_connection(
    haproxy_rig: HAProxyRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    connects: list[str] = []
    real_connect = runtime_module._connect

    def counting_connect(address: runtime_module.Address, timeout: float) -> object:
        connects.append(address.text)
        return real_connect(address, timeout)

    monkeypatch.setattr(runtime_module, "_connect", counting_connect)
    rt = haproxy_rig.runtime()
    port = haproxy_rig.nodes[0].port
    commands = []
    for i in range(40):
        commands += [
            f"add server {BACKEND}/b{i} 127.0.0.1:{port} check inter 2s weight {i + 1}",
            f"enable health {BACKEND}/b{i}",
            f"enable server {BACKEND}/b{i}",
        ]
    commands.append(f"show servers state {BACKEND}")

    answers = rt.execute(commands)

    assert connects == [haproxy_rig.admin_socket]
    assert len(answers) == len(commands)
    assert [response_error(c, a) for c, a in zip(commands, answers, strict=True)] == [None] * 121
    rows = runtime_module.parse_servers_state(answers[-1])
    assert sorted(s.uweight for s in rows) == list(range(1, 41))


def test_pipelined_windows_answer_in_order_as_one_at_a_time(
    haproxy_rig: HAProxyRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch goes a window at a time: one send per window, and every answer (empty,
    one line, a refusal, a long table) lands on its own command, as when sent one by one."""
    sends: list[str] = []
    real_send = runtime_module.CLISession._send

    def counting_send(self: runtime_module.CLISession, text: str) -> None:
        sends.append(text)
        real_send(self, text)

    rt = haproxy_rig.runtime()
    port = haproxy_rig.nodes[0].port
    adds = [c for i in range(30) for c in (
        f"add server {BACKEND}/w{i} 127.0.0.1:{port} weight {i + 1}",
        f"set server {BACKEND}/w{i} state drain", f"bogus{i}")]
    shows = [f"show servers state {BACKEND}", f"del server {BACKEND}/nope", "show info"] * 10
    monkeypatch.setattr(runtime_module.CLISession, "_send", counting_send)
    with rt.session() as session:
        pipelined = session.commands(adds + shows, window=16)
    assert len(sends) == 1 + 8  # `prompt`, then 120 commands in windows of 16

    assert pipelined[0:len(adds):3] == ["New server registered."] * 30
    assert pipelined[1:len(adds):3] == [""] * 30
    assert [response_error(c, a) for c, a in zip(adds[2::3], pipelined[2:len(adds):3],
                                                 strict=True)] == ["unknown command"] * 30
    with rt.session() as session:
        one_by_one = [session.command(c) for c in shows]

    def gist(answer: str) -> object:
        """What does not change between two reads: servers' names and weights, show
        info's keys (its values count uptime and streams), other answers as they are."""
        if answer.startswith("1\n# be_id"):
            return sorted((r.name, r.uweight) for r in runtime_module.parse_servers_state(answer))
        if answer.startswith("Name: HAProxy"):
            return [line.split(":")[0] for line in answer.splitlines()]
        return answer

    assert [gist(a) for a in pipelined[len(adds):]] == [gist(a) for a in one_by_one]
    assert gist(one_by_one[0]) == sorted((f"w{i}", i + 1) for i in range(30))


def test_an_address_change_in_a_batch_is_seen_by_the_next_command(
    haproxy_rig: HAProxyRig,
) -> None:
    """HAProxy 3.0 applies `set server ... addr` after reading it: pipelined with the
    next command, `port+1` then `port` answered "nothing changed" and left port+1 (the
    removal's idle-pool purge). The batch waits for an address change's answer."""
    rt = haproxy_rig.runtime()
    port = haproxy_rig.nodes[0].port
    rt.execute([f"add server {BACKEND}/a1 127.0.0.1:{port}"])
    answers = rt.execute([f"set server {BACKEND}/a1 addr 127.0.0.1 port {port + 1}",
                          f"set server {BACKEND}/a1 addr 127.0.0.1 port {port}",
                          f"show servers state {BACKEND}"])
    assert "nothing changed" not in answers[1], answers[1]
    [row] = [r for r in runtime_module.parse_servers_state(answers[2]) if r.name == "a1"]
    assert row.port == port


def test_refusals_carry_haproxy_text(haproxy_rig: HAProxyRig) -> None:
    rt = haproxy_rig.runtime()
    add_and_enable(rt, "n1", haproxy_rig.nodes[0].port)

    with pytest.raises(CommandFailed) as failed:
        rt.run([f"del server {BACKEND}/n1"])
    assert "Only servers in maintenance mode can be deleted." in str(failed.value)
    assert haproxy_rig.admin_socket in str(failed.value)

    commands = [
        f"add server {BACKEND}/n1 127.0.0.1:1",
        f"del server {BACKEND}/nope",
        f"set server {BACKEND}/n1 weight 999",
        "show servers state nosuchbackend",
        "bogus command",
    ]
    answers = rt.execute(commands)  # refusals are answers, not exceptions
    errors = [response_error(c, a) for c, a in zip(commands, answers, strict=True)]
    assert errors == [
        "Already exists a server with the same name in backend.",
        "No such server.",
        "Absolute weight can only be between 0 and 256 inclusive.",
        "Can't find backend.",
        "unknown command",
    ]

    with pytest.raises(CommandFailed) as failed:
        rt.run(commands)
    assert len(failed.value.failures) == 5
    assert "(and 4 more)" in str(failed.value)


def test_cookie_on_add_server_refused_before_3_0_and_used_from_3_0(
        haproxy_rig: HAProxyRig) -> None:
    """Why lbsync has two cookie paths: `add server ... cookie NAME` only works on 3.0+."""
    rt = haproxy_rig.runtime()
    assert rt.version() == haproxy_rig.haproxy.version
    port = haproxy_rig.nodes[0].port
    command = f"add server {BACKEND}/c1 127.0.0.1:{port} check inter 1s weight 5 cookie c1"
    if not haproxy_rig.haproxy.explicit_cookies:
        (answer,) = rt.execute([command])
        assert response_error("add server", answer) == (
            "'cookie' option is not accepted for dynamic server"
        )
        return
    rt.run([command, f"enable health {BACKEND}/c1", f"enable server {BACKEND}/c1"])
    add_and_enable(rt, "c2", haproxy_rig.nodes[1].port)  # no cookie: a dynamic one
    rt.run([f"enable dynamic-cookie backend {BACKEND}"])
    wait_for(lambda: all((s := server(rt, n)) is not None and s.up
                         for n in ("c1", "c2")), 5.0, "c1 and c2 up")
    # The explicit cookie wins over the backend's dynamic ones, and pins the client.
    cookies = {}
    for _ in range(6):  # round robin, equal weights
        response = http_get(haproxy_rig.nodes_port)
        cookies[response.body] = [c.split(";")[0] for c in response.set_cookie]
    dynamic = dynamic_cookie(COOKIE_KEY, "127.0.0.1", haproxy_rig.nodes[1].port)
    assert cookies == {"node0": ["SERVERID=c1"], "node1": [f"SERVERID={dynamic}"]}
    assert {http_get(haproxy_rig.nodes_port, cookie="SERVERID=c1").body
            for _ in range(4)} == {"node0"}


def test_servers_state_counts_sessions_of_held_requests(haproxy_rig: HAProxyRig) -> None:
    rt = haproxy_rig.runtime("tcp")
    node = haproxy_rig.nodes[0]
    add_and_enable(rt, "n1", node.port)
    wait_for(lambda: (s := server(rt, "n1")) is not None and s.up, 5.0, "n1 up")

    held = [HeldRequest(haproxy_rig.nodes_port) for _ in range(2)]
    node.wait_held(2)
    add_and_enable(rt, "n2", haproxy_rig.nodes[1].port)

    sessions = {s.name: s.sessions for s in rt.servers_state(BACKEND)}
    assert sessions == {"n1": 2, "n2": 0}

    node.release()
    for request in held:
        result = request.join()
        assert not isinstance(result, BaseException) and result is not None
        assert (result.status, result.body) == (200, "node0")
    wait_for(lambda: (s := server(rt, "n1")) is not None and not s.sessions, 5.0,
             "sessions back to 0")


def test_del_refused_while_a_session_is_open(haproxy_rig: HAProxyRig) -> None:
    rt = haproxy_rig.runtime()
    node = haproxy_rig.nodes[0]
    add_and_enable(rt, "n1", node.port)
    wait_for(lambda: (s := server(rt, "n1")) is not None and s.up, 5.0, "n1 up")
    held = HeldRequest(haproxy_rig.nodes_port)
    node.wait_held()

    # Maintenance stops new traffic but leaves the open session alone.
    answers = rt.execute([f"set server {BACKEND}/n1 state maint", f"del server {BACKEND}/n1"])
    assert response_error(f"del server {BACKEND}/n1", answers[1]) == (
        "Server still has connections attached to it, cannot remove it."
    )

    rt.run([f"shutdown sessions server {BACKEND}/n1"])
    # The killed stream goes away asynchronously, a few milliseconds later.
    wait_for(
        lambda: rt.execute([f"del server {BACKEND}/n1"]) == ["Server deleted."],
        5.0, "del server to succeed",
    )
    node.release()
    result = held.join()
    assert isinstance(result, BaseException) or (result is not None and result.status != 200)


def test_reload_through_master_keeps_serving(haproxy_rig: HAProxyRig) -> None:
    master = haproxy_rig.master()
    before = master.status()
    assert before.workers and before.failed_reloads == 0
    assert http_get(haproxy_rig.static_port).body == "static"

    master.reload()

    after = master.status()
    assert master.status().reloads == before.reloads + 1
    assert after.workers and set(after.workers).isdisjoint(before.workers)
    assert http_get(haproxy_rig.static_port).body == "static"
    wait_ready(haproxy_rig.runtime(), 5)
    assert list(master.status().workers) == list(after.workers)


def test_failed_reload_raises_and_old_worker_keeps_serving(haproxy_rig: HAProxyRig) -> None:
    master = haproxy_rig.master()
    good = haproxy_rig.config.read_text()
    workers = list(master.status().workers)
    haproxy_rig.config.write_text(good + "\nbackend broken\n    no_such_keyword here\n")

    with pytest.raises(ReloadFailed, match=re.escape(haproxy_rig.master_socket)):
        master.reload()

    assert master.status().failed_reloads == 1
    assert list(master.status().workers) == workers
    assert http_get(haproxy_rig.static_port).body == "static"

    haproxy_rig.config.write_text(good)
    master.reload()
    assert master.status().failed_reloads == 0


def test_check_config_returns_haproxys_alerts(haproxy_rig: HAProxyRig, tmp_path: Path) -> None:
    binary = haproxy_rig.haproxy.path
    check_haproxy_config(haproxy_rig.config, binary)  # the running config is valid

    broken = tmp_path / "broken.cfg"
    broken.write_text(
        "defaults\n    mode http\nbackend b\n    server s 127.0.0.1:80 chek\n    bogus_kw 1\n"
    )
    with pytest.raises(ConfigInvalid) as invalid:
        check_haproxy_config(broken, binary)
    alerts = invalid.value.alerts
    assert any("unknown keyword 'chek'" in a and "broken.cfg:4" in a for a in alerts), alerts
    assert any("bogus_kw" in a for a in alerts), alerts
    assert not any("Fatal errors" in a or "[ALERT]" in a for a in alerts), alerts
    assert str(broken) in str(invalid.value)


def test_version_matches_the_binary(haproxy_rig: HAProxyRig) -> None:
    version = haproxy_version(haproxy_rig.haproxy.path)
    assert haproxy_rig.runtime().version() == version == haproxy_rig.haproxy.version
    assert haproxy_rig.haproxy.explicit_cookies == (haproxy_rig.haproxy.label == "3.0")


def test_dynamic_cookie_needs_enable_after_add(haproxy_rig: HAProxyRig) -> None:
    rt = haproxy_rig.runtime()
    add_and_enable(rt, "c1", haproxy_rig.nodes[0].port)
    wait_for(lambda: (s := server(rt, "c1")) is not None and s.up, 5.0, "c1 up")
    if rt.version() < (3, 0, 0):
        # 2.6 computes dynamic cookies only when asked: the new server has none, and
        # HAProxy even tells the client to drop its cookie.
        first = http_get(haproxy_rig.nodes_port)
        assert any(c.startswith("SERVERID=;") for c in first.set_cookie), first.set_cookie

    add_and_enable(rt, "c2", haproxy_rig.nodes[1].port)
    rt.run([f"enable dynamic-cookie backend {BACKEND}"])
    cookies: dict[str, str] = {}
    for _ in range(4):
        response = http_get(haproxy_rig.nodes_port)
        for header in response.set_cookie:
            match = re.match(r"SERVERID=([0-9a-f]{16});", header)
            if match:
                cookies[response.body] = match[1]
    # The hash of key, address and port, on either version: the same on every load balancer.
    assert cookies == {node.name: dynamic_cookie(COOKIE_KEY, "127.0.0.1", node.port)
                       for node in haproxy_rig.nodes[:2]}

    sticky = {http_get(haproxy_rig.nodes_port, cookie=f"SERVERID={cookies['node1']}").body
              for _ in range(4)}
    assert sticky == {"node1"}


def test_missing_socket_and_refused_port_raise_runtime_api_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.sock")
    with pytest.raises(RuntimeAPIError, match=re.escape(missing)):
        RuntimeAPI(missing).execute(["show info"])
    with pytest.raises(RuntimeAPIError, match="not ready after 0.2s"):
        wait_ready(RuntimeAPI(missing), 0.2)
    with pytest.raises(RuntimeAPIError, match=re.escape(missing)):
        MasterCLI(missing).status()

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeAPIError, match=f"{re.escape(address)}: connection refused"):
        RuntimeAPI(address).servers_state(BACKEND)


def test_drain_keeps_cookie_holders_and_maint_redispatches_them(haproxy_rig: HAProxyRig) -> None:
    """Why a leave is maintenance: a drained server still takes the clients that carry its
    cookie; in maintenance they go to another server, while its open session finishes."""
    rt = haproxy_rig.runtime()
    for i, name in enumerate(("n0", "n1")):
        add_and_enable(rt, name, haproxy_rig.nodes[i].port)
    rt.run([f"enable dynamic-cookie backend {BACKEND}"])
    wait_for(lambda: all((s := server(rt, n)) is not None and s.up
                         for n in ("n0", "n1")), 5.0, "both up")
    cookie = f"SERVERID={dynamic_cookie(COOKIE_KEY, '127.0.0.1', haproxy_rig.nodes[0].port)}"
    assert http_get(haproxy_rig.nodes_port, cookie=cookie).body == "node0"

    rt.run([f"set server {BACKEND}/n0 state drain"])
    assert {http_get(haproxy_rig.nodes_port, cookie=cookie).body for _ in range(5)} == {"node0"}

    # A session on n0 (n1 out of the way while it starts), then n0 into maintenance.
    rt.run([f"set server {BACKEND}/n0 state ready", f"set server {BACKEND}/n1 state maint"])
    held = HeldRequest(haproxy_rig.nodes_port)
    haproxy_rig.nodes[0].wait_held()
    rt.run([f"set server {BACKEND}/n1 state ready", f"set server {BACKEND}/n0 state maint"])
    wait_for(lambda: (s := server(rt, "n1")) is not None and s.up, 5.0, "n1 up again")
    assert {http_get(haproxy_rig.nodes_port, cookie=cookie).body for _ in range(5)} == {"node1"}
    n0 = server(rt, "n0")
    assert n0 is not None and n0.forced_maint and n0.sessions == 1
    haproxy_rig.nodes[0].release()
    result = held.join()
    assert not isinstance(result, BaseException) and result is not None, result
    assert (result.status, result.body) == (200, "node0"), "maintenance cut the session"


def test_agent_check_maint_is_forced_maintenance_and_ready_undoes_it(
        haproxy_rig: HAProxyRig) -> None:
    """What the node's agent-check says while it stops: `maint` sets the same bit as
    `set server ... state maint`, and the agent keeps being asked in maintenance, so its
    `ready` takes it back."""
    rt = haproxy_rig.runtime()
    agent = AgentCheck("127.0.0.1", 0, FixedIdle())
    agent.start()
    try:
        add_and_enable(rt, "a0", haproxy_rig.nodes[0].port,
                       f"agent-check agent-port {agent.port} agent-inter 200")
        rt.run([f"enable agent {BACKEND}/a0"])
        wait_for(lambda: (s := server(rt, "a0")) is not None and s.up, 5.0, "a0 up")
        agent.maint()
        wait_for(lambda: (s := server(rt, "a0")) is not None and s.forced_maint, 5.0,
                 "a0 in maintenance")
        s = server(rt, "a0")
        assert s is not None and s.admin_state == ADMIN_FMAINT and s.state_word == "MAINT"
        agent.resume()
        wait_for(lambda: (s := server(rt, "a0")) is not None and s.up, 5.0, "a0 up again")
    finally:
        agent.close()


class FixedIdle:
    percent = 100.0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
