"""The Docker stack end to end: scripts/docker-prepare.sh builds the images (installing and
starting Docker when it must), then docker-compose.yml runs `lb` and N `node` containers.

One compose project (`lbsynce2e`) serves the whole module; each test scales it to the
nodes it needs itself (`Stack.nodes_up`), so it passes alone (`-k`) as in file order. The
project is always taken down (with its key volume), also on failure, and a dockerd that
the preparation started is stopped. It runs with no SERF_ENCRYPT_KEY and no .env, as a
fresh clone does: the lb makes the gossip key; the last test sets SERF_ENCRYPT_KEY to
check that it overrides the made one.

Select with `pytest -m e2e tests/e2e`. LBSYNC_COMPOSE picks the compose command
(default: `docker compose` when the plugin answers, else `docker-compose`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from e2e_docker import (
    FRONTEND,
    NODE_UP,
    SHOW_PROC,
    after_control,
    assert_every_node_serves,
    assert_one_realm,
    http_info,
    logs,
    node_in_info,
    parse_show_proc,
    prepared_engine,
    run,
    utc_now,
    wait,
    wait_links_up,
)
from loadgen import HttpLoad

from lbsync.haproxy.runtime import RuntimeAPI, parse_servers_state
from lbsync.lab.screenshot import png_problem
from lbsync.lab.spec import SNAPSHOT
from lbsync.model import ServerState
from lbsync.status import config_servers

PROJECT = "lbsynce2e"
INTRUDER_LABEL = "lbsync-e2e=intruder"
KEY_VOLUME = f"{PROJECT}_lbsync-keys"
KEY_FILE = "/var/lib/lbsync-keys/serf.key"

pytestmark = pytest.mark.e2e


def compose_command() -> list[str]:
    if chosen := os.environ.get("LBSYNC_COMPOSE"):
        return chosen.split()
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True,
                            timeout=30, check=False)
    return ["docker", "compose"] if plugin.returncode == 0 else ["docker-compose"]


@dataclass
class Stack:
    compose_cmd: list[str]
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run(*self.compose_cmd, "-p", PROJECT, *args, timeout=timeout, env=self.env)

    def containers(self, service: str) -> list[str]:
        out = run("docker", "ps", "-q", "--no-trunc",
                  "--filter", f"label=com.docker.compose.project={PROJECT}",
                  "--filter", f"label=com.docker.compose.service={service}").stdout
        return out.split()

    def lb(self, service: str = "lb") -> str:
        (cid,) = self.containers(service)
        return cid

    def node_names(self) -> dict[str, str]:
        """Running node containers -> their node name (s6/node/.node-env)."""
        return {cid: "node_" + run("docker", "inspect", "-f", "{{.Config.Hostname}}",
                                   cid).stdout.strip()
                for cid in self.containers("node")}

    def exec(self, cid: str, *cmd: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run("docker", "exec", cid, *cmd, check=check, timeout=timeout)

    def servers(self, runtime: str = "127.0.0.1:9999") -> dict[str, ServerState]:
        return {s.name: s for s in RuntimeAPI(runtime).servers_state("nodes")}

    def up_servers(self, runtime: str = "127.0.0.1:9999") -> set[str]:
        return {n for n, s in self.servers(runtime).items() if s.up}

    def nodes_up(self, n: int) -> dict[str, str]:
        """The precondition of a test: N node containers (`up --scale node=N`), all UP in
        HAProxy; container -> node name."""
        self.compose("up", "-d", "--scale", f"node={n}")
        nodes = self.node_names()
        assert len(nodes) == n, nodes
        wait(lambda: self.up_servers() == set(nodes.values()), NODE_UP, f"{n} servers UP")
        return nodes

    def show_proc(self) -> tuple[int, list[str]]:
        """The master's reload count and its workers' pids (master CLI `show proc`)."""
        return parse_show_proc(self.exec(self.lb(), "sh", "-c", SHOW_PROC).stdout)

    def status_check(self) -> bool:
        return self.exec(self.lb(), "lbsync", "status", "--check", check=False).returncode == 0

    def network(self) -> str:
        return run("docker", "inspect", "-f",
                   "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
                   self.lb()).stdout.strip()

    def down(self) -> None:
        intruders = run("docker", "ps", "-aq", "--filter", f"label={INTRUDER_LABEL}").stdout
        if intruders.split():
            run("docker", "rm", "-f", *intruders.split(), check=False)
        self.compose("--profile", "ha", "down", "-v", "--remove-orphans", "--timeout", "30")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with prepared_engine():
        # No SERF_ENCRYPT_KEY at all, and no .env of this checkout: the stack runs on the
        # key its lb makes (test_serf_encrypt_key_overrides_the_made_key sets one).
        env_file = tmp_path_factory.mktemp("compose") / "empty.env"
        env_file.write_text("")
        env = {k: v for k, v in os.environ.items() if k != "SERF_ENCRYPT_KEY"}
        # One proxy worker per node: five Crossbar nodes on two cores start faster.
        env.update(LBSYNC_PROXIES="1", LBSYNC_DRAIN_TIMEOUT="10s")
        s = Stack([*compose_command(), "--env-file", str(env_file)], env)
        s.down()  # what an interrupted run may have left
        try:
            s.compose("up", "-d", "--scale", "node=3")
            yield s
        finally:
            s.down()


def test_three_nodes_are_up_and_all_serve(stack: Stack) -> None:
    nodes = stack.nodes_up(3)
    # What the README tells a user to type.
    out = run("sh", "-c", 'echo "show servers state" | nc -w 3 127.0.0.1 9999').stdout
    rows = [line.split() for line in out.splitlines() if not line.startswith("#")]
    up = sorted(r[3] for r in rows if len(r) > 6 and r[1] == "nodes" and r[5] == "2")
    assert up == sorted(nodes.values()), out
    assert_every_node_serves(FRONTEND, set(nodes.values()))


def test_the_nodes_are_one_realm_through_their_router_links(stack: Stack) -> None:
    nodes = stack.nodes_up(3)
    # Each node links to the two others (the fleet key comes from the gossip key).
    for cid, table in wait_links_up(stack.exec, nodes).items():
        assert "2/2 links up" in table, table
        assert "router link to" in logs(cid)
    # The load balancer sees them through each node's `links` tag (at most 10 s late).
    def linked_in_status() -> bool:
        table = stack.exec(stack.lb(), "lbsync", "status").stdout
        return all(re.search(rf"^{n}\s.*\s2/2\s", table, re.M) for n in nodes.values())
    wait(linked_in_status, 30, "LINKS 2/2 for every node in lbsync status")
    assert_one_realm("ws://127.0.0.1:8080/ws", 3)


def serf_keys(stack: Stack, cid: str) -> str:
    """`serf keys -list` of a container's agent: the keys its keyring holds."""
    return stack.exec(cid, "serf", "keys", "-list").stdout


def test_the_gossip_key_is_made_once_and_shared_with_the_project_alone(stack: Stack) -> None:
    nodes = stack.nodes_up(3)
    lb = stack.lb()
    # The lb made it, once, in the volume; mode 0600 in a 0700 folder.
    made = [line for line in logs(lb).splitlines() if "made a new gossip key" in line]
    assert len(made) == 1 and KEY_FILE in made[0], made
    assert stack.exec(lb, "stat", "-c", "%a %U", KEY_FILE).stdout.split() == ["600", "root"]
    assert stack.exec(lb, "stat", "-c", "%a", os.path.dirname(KEY_FILE)).stdout.strip() == "700"
    key = stack.exec(lb, "lbsync-serf-key").stdout.strip()
    assert len(base64.b64decode(key)) == 32
    # Every node read the same one (they joined: the servers are UP), and nothing else has
    # it: the volume is mounted by the lb and the nodes alone, the environment holds no
    # key, and it is on no command line (serf reads it from a 0600 config file).
    assert stack.exec(sorted(nodes)[0], "lbsync-serf-key").stdout.strip() == key
    mounting = run("docker", "ps", "-q", "--no-trunc", "--filter",
                   f"volume={KEY_VOLUME}").stdout.split()
    assert set(mounting) == {lb, *nodes}
    for cid in (lb, *nodes):
        env = run("docker", "inspect", "-f", "{{json .Config.Env}}", cid).stdout
        assert key not in env and "SERF_ENCRYPT_KEY=" in env
        assert key not in stack.exec(cid, "ps", "-eo", "args").stdout
        assert key in serf_keys(stack, cid)


def lab(*args: str | Path, check: bool = True,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`lbsync lab ARGS` as a student types it (this checkout's lbsync)."""
    return run(sys.executable, "-m", "lbsync", "lab", *map(str, args), check=check,
               timeout=timeout)


def serf_rows(transcript: str) -> list[list[str]]:
    """The member rows of a `serf members` transcript: NAME ADDR STATUS [TAGS]."""
    return [f for f in (line.split() for line in transcript.splitlines())
            if len(f) >= 3 and f[2] in ("alive", "leaving", "left", "failed")]


def test_lab_collect_from_the_compose_stack(stack: Stack, tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed, and `lbsync lab collect` of a snapshot step "
                    "screenshots the stats page with it: apt-get install -y chromium (or "
                    "bash scripts/setup.sh)")
    nodes = set(stack.nodes_up(3).values())
    workdir = tmp_path / "lab"
    lab("init", workdir)
    t0 = time.monotonic()
    out = lab("collect", "0", "--step", "up", "--mode", "docker", "--project", PROJECT,
              "--dir", workdir).stdout
    print(f"\nlab collect 0 --step up: {time.monotonic() - t0:.1f}s\n{out}")
    step = workdir / "logs" / "task-0" / "up"
    assert step.is_dir(), out

    # Every container's log and docker inspect.
    for name in ("lb-1", "node-1", "node-2", "node-3"):
        assert (step / "logs" / f"{name}.log").is_file(), name
        (inspected,) = json.loads((step / "inspect" / f"{name}.json").read_text())
        image = "lbsync-lb" if name == "lb-1" else "lbsync-node"
        assert image in inspected["Config"]["Image"], (name, inspected["Config"]["Image"])
    assert (step / "logs" / "lb-1.log").stat().st_size > 0
    # s6's view of each container, and the pids it reports.
    assert "up (pid" in (step / "processes.txt").read_text()
    processes = json.loads((step / "processes.json").read_text())
    assert processes["track"] == "docker"
    pids = processes["pids"]
    assert pids.get("lb-1:haproxy", 0) > 0, pids
    for i in (1, 2, 3):
        assert pids.get(f"node-{i}:crossbar", 0) > 0, pids
    # Serf: the load balancer and the 3 nodes, all alive.
    members = serf_rows((step / "serf-members.txt").read_text())
    assert len(members) == 4, members
    assert all(m[2] == "alive" for m in members), members
    assert nodes <= {m[0] for m in members}
    assert (step / "serf.log").is_file()
    # haproxy.cfg, the registry and the Runtime API agree on the 3 nodes.
    assert config_servers((step / "haproxy.cfg").read_text()) == nodes
    registry = {json.loads(p.read_text())["name"]: json.loads(p.read_text())
                for p in (step / "registry").glob("*.json")}
    assert nodes <= set(registry), sorted(registry)
    assert all(registry[n]["status"] == "alive" for n in nodes)
    assert (step / "registry.txt").is_file()
    states = parse_servers_state((step / "servers-state.txt").read_text())
    assert {s.name for s in states if s.backend == "nodes" and s.up} == nodes
    stat = (step / "stat.csv").read_text()
    assert stat.startswith("# pxname,svname,") and all(n in stat for n in nodes)
    assert "Version:" in (step / "info.txt").read_text()
    assert re.search(r"^\d+\s+master\s", (step / "show-proc.txt").read_text(), re.MULTILINE)
    # The stats page: a real screenshot, and its HTML.
    assert png_problem((step / "stats.png").read_bytes()) is None
    assert "Statistics Report" in (step / "stats.html").read_text()
    manifest = json.loads((step / "MANIFEST.json").read_text())
    assert manifest["track"] == "docker"
    assert manifest["stack"]["compose_project"] == PROJECT
    assert manifest["collectors"] == list(SNAPSHOT)
    assert {"logs/lb-1.log", "stats.png", "haproxy.cfg"} <= set(manifest["files"])

    # The checker finds the step complete: only the questions are left.
    r = lab("check", workdir, "--task", "0", "--json", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    (report,) = json.loads(r.stdout)
    assert report["complete"] is False
    assert [p for p in report["problems"] if p["item"].startswith("step")] == []
    assert {p["problem"] for p in report["problems"]} == {"not answered"}

    # Task 3's watcher does not run in this stack: a clear error, and nothing written.
    r = lab("collect", "3", "--step", "handler", "--mode", "docker", "--project", PROJECT,
            "--dir", workdir, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("lbsync: error:")]
    assert len(errors) == 1 and "watcher" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (workdir / "logs" / "task-3" / "handler").exists()
    task3 = workdir / "logs" / "task-3"
    assert not task3.exists() or list(task3.iterdir()) == []  # no staging folder left


def test_scale_to_5_then_1_under_load_loses_nothing_and_never_reloads(stack: Stack) -> None:
    reloads, workers = stack.show_proc()
    since = utc_now()
    with HttpLoad(f"{FRONTEND}/info") as load:
        stack.compose("up", "-d", "--scale", "node=5")
        five = stack.node_names()
        assert len(five) == 5
        wait(lambda: stack.up_servers() == set(five.values()), NODE_UP, "5 servers UP")
        stack.compose("up", "-d", "--scale", "node=1", timeout=300)
        one = stack.node_names()
        assert len(one) == 1
        wait(lambda: set(stack.servers()) == set(one.values()), 60,
             "the 4 leavers deleted from HAProxy")
        time.sleep(2)
    print(f"\nscale 3 -> 5 -> 1: {load.ok} requests served, {len(load.failures)} failed")
    assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
    assert load.ok > 200
    assert stack.show_proc() == (reloads, workers), "HAProxy reloaded"
    # They left: deleted once their sessions ended (their agent-check put them in
    # maintenance first), never treated as failed.
    log = logs(stack.lb(), since)
    for name in set(five.values()) - set(one.values()):
        assert f"del server={name} leave done" in log
        assert f"kill server={name}" not in log


def test_docker_stop_of_a_node_is_a_graceful_leave_within_the_stop_timeout(
        stack: Stack) -> None:
    nodes = stack.nodes_up(3)
    victim = sorted(nodes)[0]
    since = utc_now()
    t0 = time.monotonic()
    run("docker", "stop", "-t", "30", victim, timeout=60)
    took = time.monotonic() - t0
    print(f"\ndocker stop of a node: {took:.1f}s")
    assert took < 25
    # s6-svscan exited by itself (0), not killed by Docker (137) at the timeout.
    assert run("docker", "inspect", "-f", "{{.State.ExitCode}}", victim).stdout.strip() == "0"
    log = logs(victim)
    for step in ("stop requested: draining", "left the serf cluster",
                 "serf: left the cluster; not restarting", "stop command 's6-svc"):
        assert step in log, f"{step!r} missing from the node's log"
    assert set(stack.servers()) == set(nodes.values()) - {nodes[victim]}
    assert f"del server={nodes[victim]} leave done" in logs(stack.lb(), since)
    # Else a later `--scale` may start this container again and stop a running one.
    run("docker", "rm", victim)


def test_killed_node_leaves_the_server_list(stack: Stack) -> None:
    nodes = stack.nodes_up(2)
    victim, survivor = sorted(nodes, key=lambda cid: nodes[cid])
    run("docker", "kill", victim)
    # Serf's failure detection, then lbsync removes it at once.
    wait(lambda: set(stack.servers()) == {nodes[survivor]}, 30,
         f"{nodes[victim]} removed from HAProxy")
    assert stack.up_servers() == {nodes[survivor]}
    run("docker", "rm", victim)


def test_restarted_lb_comes_back_with_the_same_servers(stack: Stack) -> None:
    stack.nodes_up(1)
    before = {n: (s.addr, s.port) for n, s in stack.servers().items()}
    assert before
    run("docker", "restart", stack.lb(), timeout=90)
    wait(lambda: {n: (s.addr, s.port) for n, s in stack.servers().items()} == before, 60,
         "the same servers after the restart")
    wait(lambda: stack.up_servers() == set(before), 30, "them UP")
    wait(stack.status_check, 60, "lbsync status --check to pass")


def test_killed_lbsync_agent_is_restarted_by_s6_and_nothing_drifts(stack: Stack) -> None:
    stack.nodes_up(1)
    wait(stack.status_check, 60, "lbsync status --check to pass before the kill")
    lb = stack.lb()
    pid = stack.exec(lb, "s6-svstat", "-p", "/etc/s6/lb/agent").stdout.strip()
    assert int(pid) > 0
    stack.exec(lb, "kill", "-9", pid)

    def restarted() -> bool:
        now = stack.exec(lb, "s6-svstat", "-p", "/etc/s6/lb/agent").stdout.strip()
        return int(now) > 0 and now != pid

    wait(restarted, 15, "s6 to restart lbsync agent")
    cmdline = stack.exec(lb, "ps", "-o", "args=", "-p",
                         stack.exec(lb, "s6-svstat", "-p", "/etc/s6/lb/agent").stdout.strip())
    assert "lbsync agent" in cmdline.stdout
    wait(stack.status_check, 30, "lbsync status --check to pass")


def test_second_lb_agrees_on_servers_and_cookies(stack: Stack) -> None:
    nodes = set(stack.nodes_up(2).values())
    stack.compose("--profile", "ha", "up", "-d", "--no-deps", "lb2")
    wait(lambda: stack.up_servers("127.0.0.1:9998") == nodes, 60, "lb2 to list the same")
    for frontend in (FRONTEND, "http://127.0.0.1:8081"):
        for name in nodes:
            # Every load balancer hands out the node's name as its cookie, and honours it.
            r = requests.get(f"{frontend}/info", cookies={"SERVERID": name}, timeout=5)
            assert r.status_code == 200 and node_in_info(r.text) == name, frontend
        for _ in range(10):
            r = requests.get(f"{frontend}/info", timeout=5)
            assert r.cookies.get("SERVERID") == node_in_info(r.text), frontend
    run("docker", "rm", "-f", "-v", stack.lb("lb2"))


def test_container_without_the_gossip_key_does_not_become_a_server(stack: Stack) -> None:
    stack.nodes_up(2)
    net = stack.network()
    before = set(stack.servers())
    wrong_key = base64.b64encode(os.urandom(32)).decode()
    intruders: dict[str, list[str]] = {"intruder_plain": [],
                                       "intruder_wrong_key": ["-encrypt", wrong_key]}
    for name, extra in intruders.items():
        # A Serf agent that claims to be a ready edge node, without the cluster's key.
        run("docker", "run", "-d", "--label", INTRUDER_LABEL, "--network", net,
            "--entrypoint", "serf", "lbsync-node", "agent", "-node", name,
            "-bind", "0.0.0.0:7946", "-rpc-addr", "127.0.0.1:7373",
            "-tag", "role=edge", "-tag", "port=8080", "-tag", "ready=1",
            "-retry-join", "lb:7946", "-retry-interval", "1s", *extra)
    serf_intruders = run("docker", "ps", "-aq", "--filter", f"label={INTRUDER_LABEL}").stdout
    # The lb image itself, on the network but with no key source (no SERF_ENCRYPT_KEY, no
    # key volume): its serf run script says so in one line and keeps Serf down.
    keyless = run("docker", "run", "-d", "--label", INTRUDER_LABEL, "--network", net,
                  "-e", "SERF_JOIN=lb:7946", "lbsync-lb").stdout.strip()
    time.sleep(8)  # a member with these tags would be a server within a second or two
    members = stack.exec(stack.lb(), "serf", "members").stdout
    for name in intruders:
        assert name not in members
    assert keyless[:12] not in members
    assert set(stack.servers()) == before
    for cid in serf_intruders.split():
        log = run("docker", "logs", cid)  # they reached the load balancer, were turned away
        assert "Failed to join" in log.stdout + log.stderr
    refusals = [line for line in logs(keyless).splitlines() if "gossip key" in line]
    assert len(refusals) == 1, refusals
    assert "no gossip key" in refusals[0] and "SERF_ENCRYPT_KEY" in refusals[0], refusals
    assert "down" in stack.exec(keyless, "s6-svstat", "/etc/s6/lb/serf").stdout
    assert stack.exec(keyless, "pgrep", "-x", "serf", check=False).returncode == 1
    # Nor can a container of the network use HAProxy's Runtime API: only the host can.
    # Controls: the same command inside the lb answers, and the same probe container
    # reaches the lb's frontend before it tries the Runtime API.
    query = 'echo "show servers state" | nc -w 3 {} 9999'
    assert "nodes" in stack.exec(stack.lb(), "sh", "-c", query.format("127.0.0.1")).stdout
    probe = run("docker", "run", "--rm", "--label", INTRUDER_LABEL, "--network", net,
                "--entrypoint", "sh", "lbsync-node", "-c",
                f"{http_info('lb', 8080)}; {query.format('lb')}", check=False)
    assert "nodes" not in after_control(probe)


def test_serf_encrypt_key_overrides_the_made_key(stack: Stack) -> None:
    made = stack.exec(stack.lb(), "cat", KEY_FILE).stdout.strip()
    key = base64.b64encode(os.urandom(32)).decode()
    # A changed environment: compose recreates the lb and the node with the key.
    overridden = Stack(stack.compose_cmd, {**stack.env, "SERF_ENCRYPT_KEY": key})
    overridden.compose("up", "-d", "--scale", "node=1")
    nodes = overridden.node_names()
    assert len(nodes) == 1
    wait(lambda: overridden.up_servers() == set(nodes.values()), NODE_UP, "the node UP")
    lb = overridden.lb()
    for cid in (lb, *nodes):
        keyring = serf_keys(overridden, cid)
        assert key in keyring and made not in keyring, keyring
    # The made key is still in the volume, unused: an empty SERF_ENCRYPT_KEY brings it back.
    assert overridden.exec(lb, "cat", KEY_FILE).stdout.strip() == made
    assert "made a new gossip key" not in logs(lb)
