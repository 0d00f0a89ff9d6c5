"""The Docker stack end to end: scripts/docker-prepare.sh builds the images (installing and
starting Docker when it must), then docker-compose.yml runs `lb` and N `node` containers.

One compose project (`lbsynce2e`) serves the whole module; the tests run in file order,
each leaving the stack as the next one expects. The project is always taken down, also on
failure, and a dockerd that the preparation started is stopped.

Select with `pytest -m e2e tests/e2e`. LBSYNC_COMPOSE picks the compose command
(default: `docker compose` when the plugin answers, else `docker-compose`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from loadgen import HttpLoad

from lbsync.haproxy.runtime import RuntimeAPI, parse_servers_state
from lbsync.lab.screenshot import png_problem
from lbsync.lab.spec import SNAPSHOT
from lbsync.model import ServerState
from lbsync.status import config_servers

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "lbsynce2e"
FRONTEND = "http://127.0.0.1:8080"
INTRUDER_LABEL = "lbsync-e2e=intruder"
NODE_UP = 180.0  # Crossbar nodes starting side by side on 2 cores take a while

pytestmark = pytest.mark.e2e


def run(*cmd: str, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=env, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n"
                             f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60,
                          check=False).returncode == 0


def compose_command() -> list[str]:
    if chosen := os.environ.get("LBSYNC_COMPOSE"):
        return chosen.split()
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True,
                            timeout=30, check=False)
    return ["docker", "compose"] if plugin.returncode == 0 else ["docker-compose"]


def wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception as e:  # noqa: BLE001  (the world is still settling)
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}"
                         + (f" (last error: {last!r})" if last else ""))


def node_in_info(html: str) -> str:
    m = re.search(r"<h1>node ([^<]+)</h1>", html)
    assert m, f"no node name in /info: {html[:200]!r}"
    return m.group(1)


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

    def show_proc(self) -> tuple[int, list[str]]:
        """The master's reload count and its workers' pids (master CLI `show proc`)."""
        out = self.exec(self.lb(), "sh", "-c",
                        'echo "show proc" | nc -U -w 3 "$LBSYNC_MASTER_SOCKET"').stdout
        reloads, workers = -1, []
        for line in out.splitlines():
            f = line.split()
            if len(f) > 2 and f[1] == "master":
                reloads = int(f[2])
            elif len(f) > 2 and f[1] == "worker":
                workers.append(f[0])
        assert reloads >= 0, f"no master line in show proc: {out!r}"
        return reloads, workers

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


def _stop_dockerd(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(60):
            os.kill(pid, 0)
            time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    was_up = engine_answers()
    if not was_up and os.geteuid() != 0:
        pytest.skip("no Docker engine answers, and only root can install and start one")
    pid_file = ROOT / ".cache" / "dockerd.pid"
    if not was_up:
        pid_file.unlink(missing_ok=True)
    t0 = time.monotonic()
    prep = subprocess.run(["bash", "scripts/docker-prepare.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800, check=False)
    started_dockerd = not was_up and pid_file.exists()
    s: Stack | None = None
    try:
        if prep.returncode != 0:
            tail = (prep.stdout + prep.stderr)[-3000:]
            if not engine_answers():
                pytest.skip(f"Docker is unavailable here (scripts/docker-prepare.sh):\n{tail}")
            pytest.fail(f"scripts/docker-prepare.sh failed:\n{tail}")
        print(f"\ndocker-prepare: {time.monotonic() - t0:.0f}s\n{prep.stderr}")
        env = {**os.environ,
               "SERF_ENCRYPT_KEY": base64.b64encode(os.urandom(32)).decode(),
               # One proxy worker per node: five Crossbar nodes on two cores start faster.
               "LBSYNC_PROXIES": "1", "LBSYNC_DRAIN_TIMEOUT": "10s"}
        s = Stack(compose_command(), env)
        s.down()  # what an interrupted run may have left
        s.compose("up", "-d", "--scale", "node=3")
        yield s
    finally:
        try:
            if s is not None:
                s.down()
        finally:
            if started_dockerd:
                _stop_dockerd(pid_file)


def test_three_nodes_are_up_and_all_serve(stack: Stack) -> None:
    nodes = stack.node_names()
    assert len(nodes) == 3
    wait(lambda: stack.up_servers() == set(nodes.values()), NODE_UP, "3 servers UP")
    # What the README tells a user to type.
    out = run("sh", "-c", 'echo "show servers state" | nc -w 3 127.0.0.1 9999').stdout
    rows = [line.split() for line in out.splitlines() if not line.startswith("#")]
    up = sorted(r[3] for r in rows if len(r) > 6 and r[1] == "nodes" and r[5] == "2")
    assert up == sorted(nodes.values()), out
    seen: set[str] = set()
    for _ in range(60):
        r = requests.get(f"{FRONTEND}/info", timeout=5)
        assert r.status_code == 200
        seen.add(node_in_info(r.text))
        if seen == set(nodes.values()):
            break
    assert seen == set(nodes.values())


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
    nodes = set(stack.node_names().values())
    assert len(nodes) == 3
    wait(lambda: stack.up_servers() == nodes, NODE_UP, "3 servers UP")
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
    since = run("date", "-u", "+%Y-%m-%dT%H:%M:%S").stdout.strip()
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
    # They left: deleted once drained (the agent-check drains them first), never treated
    # as failed.
    logs = run("docker", "logs", "--since", since, stack.lb())
    log = logs.stdout + logs.stderr
    for name in set(five.values()) - set(one.values()):
        assert f"del server={name} drained" in log
        assert f"kill server={name}" not in log


def test_docker_stop_of_a_node_is_a_graceful_leave_within_the_stop_timeout(
        stack: Stack) -> None:
    stack.compose("up", "-d", "--scale", "node=3")
    nodes = stack.node_names()
    wait(lambda: stack.up_servers() == set(nodes.values()), NODE_UP, "3 servers UP")
    victim = sorted(nodes)[0]
    since = run("date", "-u", "+%Y-%m-%dT%H:%M:%S").stdout.strip()
    t0 = time.monotonic()
    run("docker", "stop", "-t", "30", victim, timeout=60)
    took = time.monotonic() - t0
    print(f"\ndocker stop of a node: {took:.1f}s")
    assert took < 25
    # s6-svscan exited by itself (0), not killed by Docker (137) at the timeout.
    assert run("docker", "inspect", "-f", "{{.State.ExitCode}}", victim).stdout.strip() == "0"
    logs = run("docker", "logs", victim)
    log = logs.stdout + logs.stderr
    for step in ("stop requested: draining", "left the serf cluster",
                 "serf: left the cluster; not restarting", "stop command 's6-svc"):
        assert step in log, f"{step!r} missing from the node's log"
    assert set(stack.servers()) == set(nodes.values()) - {nodes[victim]}
    lb_logs = run("docker", "logs", "--since", since, stack.lb())
    assert f"del server={nodes[victim]} drained" in lb_logs.stdout + lb_logs.stderr
    # Else a later `--scale` may start this container again and stop a running one.
    run("docker", "rm", victim)


def test_killed_node_leaves_the_server_list(stack: Stack) -> None:
    nodes = stack.node_names()
    assert len(nodes) == 2
    wait(lambda: stack.up_servers() == set(nodes.values()), NODE_UP, "2 servers UP")
    victim, survivor = sorted(nodes, key=lambda cid: nodes[cid])
    run("docker", "kill", victim)
    # Serf's failure detection, then lbsync removes it at once.
    wait(lambda: set(stack.servers()) == {nodes[survivor]}, 30,
         f"{nodes[victim]} removed from HAProxy")
    assert stack.up_servers() == {nodes[survivor]}
    run("docker", "rm", victim)


def test_restarted_lb_comes_back_with_the_same_servers(stack: Stack) -> None:
    before = {n: (s.addr, s.port) for n, s in stack.servers().items()}
    assert before
    run("docker", "restart", stack.lb(), timeout=90)
    wait(lambda: {n: (s.addr, s.port) for n, s in stack.servers().items()} == before, 60,
         "the same servers after the restart")
    wait(lambda: stack.up_servers() == set(before), 30, "them UP")
    wait(stack.status_check, 60, "lbsync status --check to pass")


def test_killed_lbsync_agent_is_restarted_by_s6_and_nothing_drifts(stack: Stack) -> None:
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
    stack.compose("up", "-d", "--scale", "node=2")
    nodes = set(stack.node_names().values())
    wait(lambda: stack.up_servers() == nodes, NODE_UP, "2 servers UP")
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
    time.sleep(8)  # a member with these tags would be a server within a second or two
    members = stack.exec(stack.lb(), "serf", "members").stdout
    for name in intruders:
        assert name not in members
    assert set(stack.servers()) == before
    for cid in run("docker", "ps", "-aq", "--filter", f"label={INTRUDER_LABEL}").stdout.split():
        log = run("docker", "logs", cid)  # they reached the load balancer, were turned away
        assert "Failed to join" in log.stdout + log.stderr
    # Nor can a container of the network use HAProxy's Runtime API: only the host can.
    probe = run("docker", "run", "--rm", "--label", INTRUDER_LABEL, "--network", net,
                "--entrypoint", "sh", "lbsync-node", "-c",
                'echo "show servers state" | nc -w 3 lb 9999', check=False)
    assert "nodes" not in probe.stdout
