"""The lab on the local track, as a student walks it: tasks 0-7 driven as the task pages
say, on the real cluster (supervisord, HAProxy, Serf, Crossbar), every step collected with
`lbsync lab collect`, ending with `lbsync lab check` exiting 0; then the checker failing
on copies with a missing file, a changed file and an unanswered question.

One cluster and one lab folder serve the module; the tests run in file order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from cluster_rig import NEEDS_CLUSTER, lbsync, stop_cluster, wait
from loadgen import HttpLoad

from lbsync.cluster.local import Layout, Supervisor
from lbsync.haproxy.master import parse_proc
from lbsync.haproxy.runtime import RuntimeAPI
from lbsync.lab.check import answers
from lbsync.lab.spec import load_lab

NET = 152
DRAIN = 4.0

pytestmark = NEEDS_CLUSTER


@dataclass
class Walk:
    layout: Layout
    lab: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 300) -> str:
        r = lbsync(*args, timeout=timeout, cwd=self.lab)
        assert r.returncode == 0, f"lbsync {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def collect(self, task: int, step: str, timeout: float = 300) -> Path:
        out = self.run("lab", "collect", str(task), "--step", step, "--mode", "local",
                       "--cluster-dir", str(self.layout.dir), timeout=timeout)
        assert "MANIFEST.json written" in out, out
        return self.lab / "logs" / f"task-{task}" / step

    def scale(self, n: int) -> None:
        self.run("scale", str(n), "--dir", str(self.layout.dir))

    def up(self) -> set[str]:
        api = RuntimeAPI(f"{self.layout.lb_ip}:9999")
        return {s.name for s in api.servers_state("nodes") if s.up}

    def serf(self, *args: str, out: Path | None = None) -> subprocess.Popen[str]:
        sink = out.open("w") if out else subprocess.DEVNULL
        p = subprocess.Popen(["serf", *args], stdout=sink, stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        return p


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    root = tmp_path_factory.mktemp("lab")
    w = Walk(Layout(root / "cluster", NET), root / "student")
    try:
        yield w
    finally:
        for p in w.procs:  # the playground's and the watcher's Serf agents
            with contextlib.suppress(OSError):
                p.kill()
            p.wait(10)
        stop_cluster(w.layout)


def ip(w: Walk, host: int) -> str:
    return f"127.{NET}.0.{host}"


def test_task_0_init_up_and_the_stats_page(walk: Walk) -> None:
    out = lbsync("lab", "init", str(walk.lab))
    assert out.returncode == 0, out.stderr
    assert (walk.lab / "report.md").is_file() and (walk.lab / "work/haproxy.cfg.j2").is_file()
    walk.run("up", "--nodes", "2", "--proxies", "1", "--drain-timeout", f"{DRAIN:g}s",
             "--dir", str(walk.layout.dir), "--net", str(NET))
    step = walk.collect(0, "up")
    assert "Statistics Report" in (step / "stats.html").read_text()
    manifest = json.loads((step / "MANIFEST.json").read_text())
    assert manifest["track"] == "local" and "stats.png" in manifest["files"]
    assert "node1" in (step / "serf-members.txt").read_text()


def test_task_1_a_killed_process_comes_back(walk: Walk) -> None:
    walk.collect(1, "before-kill")
    api = Supervisor(walk.layout).rpc().supervisor
    old = api.getProcessInfo("node1:node1-crossbar")["pid"]
    controller = psutil.Process(old)
    for p in [controller, *controller.children(recursive=True)]:
        p.send_signal(signal.SIGKILL)
    wait(lambda: api.getProcessInfo("node1:node1-crossbar")["pid"] not in (0, old)
         and walk.up() == {"node1", "node2"}, 90, "node1's Crossbar restarted and UP")
    walk.collect(1, "after-kill")


def test_task_2_members_and_the_serf_playground(walk: Walk) -> None:
    walk.collect(2, "members")
    work = walk.lab / "work"
    seed, agent = ip(walk, 20), ip(walk, 21)
    # (a) -join with no seed there: the agent gives up at once.
    walk.serf("agent", "-node", "early", "-bind", f"{agent}:7946", "-rpc-addr",
              f"{agent}:7373", "-join", f"{seed}:7946", out=work / "join.txt").wait(20)
    # (b) -retry-join: it keeps trying until the seed starts.
    retry = walk.serf("agent", "-node", "patient", "-bind", f"{agent}:7946", "-rpc-addr",
                      f"{agent}:7373", "-retry-join", f"{seed}:7946", "-retry-interval", "1s",
                      out=work / "retry-join.txt")
    time.sleep(2)
    seed_p = walk.serf("agent", "-node", "seed", "-bind", f"{seed}:7946", "-rpc-addr",
                       f"{seed}:7373")
    wait(lambda: "Join completed" in (work / "retry-join.txt").read_text(), 20, "the retry")
    for p in (retry, seed_p):
        p.terminate()
        p.wait(10)
    # (c) on the local track, the real cluster: an agent without its key, tagged as an
    # edge node, is refused; with the key from the cluster folder it joins.
    lb = f"{walk.layout.lb_ip}:7946"
    refused = walk.serf("agent", "-node", "no-key", "-bind", f"{agent}:7946", "-rpc-addr",
                        f"{agent}:7373", "-tag", "role=edge", "-tag", "port=8080", "-tag",
                        "ready=1", "-join", lb, out=work / "no-key.txt")
    assert refused.wait(20) != 0
    assert "Remote state is encrypted" in (work / "no-key.txt").read_text()
    servers = RuntimeAPI(f"{walk.layout.lb_ip}:9999").servers_state("nodes")
    assert {s.name for s in servers} == {"node1", "node2"}  # no server for no-key
    key = walk.layout.serf_key.read_text().strip()
    joined = walk.serf("agent", "-node", "with-key", "-bind", f"{agent}:7946", "-rpc-addr",
                       f"{agent}:7373", "-encrypt", key, "-tag", "role=student", "-join", lb,
                       out=work / "with-key.txt")
    env = {**os.environ, "LBSYNC_CLUSTER_DIR": str(walk.layout.dir)}  # as `lbsync up` left it
    wait(lambda: "with-key" in lbsync("members", env=env).stdout, 20,
         "with-key in lbsync members")
    subprocess.run(["serf", "leave", "-rpc-addr", f"{agent}:7373"], capture_output=True,
                   timeout=30, check=False)
    assert joined.wait(20) == 0
    assert "Join completed" in (work / "with-key.txt").read_text()
    step = walk.collect(2, "seeds")
    # The RPC token never lands in the student's folder (serf members got it from
    # SERF_RPC_AUTH; the transcript says where it came from).
    token = walk.layout.serf_token.read_text().strip()
    members = (walk.lab / "logs/task-2/members/serf-members.txt").read_text()
    assert "-rpc-auth" in members and token not in members
    assert not any(token in f.read_text(errors="replace")
                   for f in step.parent.rglob("*") if f.is_file())


def test_task_3_an_event_handler_fills_a_registry(walk: Walk) -> None:
    handler = walk.lab / "work" / "handler"
    watcher = ip(walk, 2)
    walk.serf("agent", "-node", "watcher", "-bind", f"{watcher}:7946", "-rpc-addr",
              f"{watcher}:7373", "-join", f"{walk.layout.lb_ip}:7946", "-encrypt",
              walk.layout.serf_key.read_text().strip(), "-tag", "role=watcher",
              "-event-handler", f"{sys.executable} -m lbsync handle --registry-dir {handler}")
    walk.scale(3)
    wait(lambda: {"node1.json", "node2.json", "node3.json"} <= {p.name for p in
                                                               handler.glob("*.json")},
         30, "the handler's registry")
    walk.collect(3, "handler")
    walk.scale(2)
    wait(lambda: json.loads((handler / "node3.json").read_text())["status"] == "left", 30,
         "node3 left in the handler's registry")
    walk.collect(3, "after-leave")
    subprocess.run(["serf", "leave", "-rpc-addr", f"{watcher}:7373"], capture_output=True,
                   timeout=30, check=False)


def test_task_4_templates_and_what_haproxy_c_catches(walk: Walk) -> None:
    template = walk.lab / "work" / "haproxy.cfg.j2"
    shipped = template.read_text()
    walk.collect(4, "shipped")
    template.write_text(shipped.replace("balance leastconn", "balance roundrobin"))
    walk.collect(4, "edited")
    edited_more = template.read_text().replace(
        "balance roundrobin", "balance roundrobin\n    http-response set-header X-Lab %[srv_name]")
    template.write_text(edited_more)
    walk.collect(4, "edited-more")
    template.write_text(edited_more.replace("balance roundrobin", "balance nosuchalgo"))
    step = walk.collect(4, "broken")
    assert "balance only supports" in (step / "render.txt").read_text()
    assert "X-Lab" in (walk.lab / "work" / "haproxy.cfg").read_text()  # the old one stayed
    template.write_text(shipped)


def test_task_5_the_config_follows_the_cluster(walk: Walk) -> None:
    walk.collect(5, "two-nodes")
    walk.scale(3)
    walk.collect(5, "three-nodes")
    walk.scale(2)
    walk.collect(5, "node-stopped")


def test_task_6_sticky_across_scaling_and_both_modes_measured(walk: Walk) -> None:
    before = walk.collect(6, "sticky-before")
    walk.scale(4)
    scaled = walk.collect(6, "scaled")
    assert parse_proc((scaled / "show-proc.txt").read_text()).reloads == 0
    after = walk.collect(6, "sticky-after")
    nodes = [{a["node"] for a in json.loads((s / "sticky.json").read_text())["requests"]}
             for s in (before, after)]
    assert len(nodes[0]) == 1 and nodes[0] == nodes[1]
    walk.scale(2)  # as the page says: the benchmark runs its own members beside the stack
    measure = walk.collect(6, "measure", timeout=1200)
    sides = json.loads((measure / "bench.json").read_text())["side_by_side"]
    assert sides["runtime-api"]["reloads"] == 0
    assert sides["reload-baseline"]["reloads"] > 0


def test_task_7_crash_leave_and_recovery(walk: Walk) -> None:
    # As the page says: 2 nodes; node2's Serf agent and Crossbar (with its workers) die.
    api = Supervisor(walk.layout).rpc().supervisor
    frontend = f"http://{walk.layout.lb_ip}:8080"
    with HttpLoad(f"{frontend}/mydata") as load:
        controller = psutil.Process(api.getProcessInfo("node2:node2-crossbar")["pid"])
        victims = [psutil.Process(api.getProcessInfo("node2:node2-serf")["pid"]),
                   controller, *controller.children(recursive=True)]
        for p in victims:
            p.send_signal(signal.SIGKILL)
        wait(lambda: "node2" not in walk.up(), 15, "node2 out of rotation")
        walk.collect(7, "crash")
    assert load.failures == [], load.failures[:5]
    wait(lambda: walk.up() == {"node1", "node2"}, 90, "node2 back")
    sessions = walk.lab / "work" / "sessions.txt"
    with sessions.open("w") as sink:
        holder = subprocess.Popen(
            [sys.executable, "-m", "lbsync", "lab", "sessions", "--url",
             f"ws://{walk.layout.lb_ip}:8080/ws", "--count", "6", "--for", "20s"],
            stdout=sink, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(3)
            walk.scale(1)
            assert holder.wait(60) == 0
        finally:
            if holder.poll() is None:
                holder.kill()
    text = sessions.read_text()
    assert "summary: 6 clients" in text, text
    assert "closed by the server" in text, text  # node2 held some until its drain ended
    assert "Traceback" not in text and "ERROR" not in text, text
    walk.collect(7, "leave")
    walk.scale(2)
    env = {**os.environ, "LBSYNC_CLUSTER_DIR": str(walk.layout.dir)}
    wait(lambda: lbsync("status", "--check", env=env).returncode == 0, 60, "status --check")
    recovered = walk.collect(7, "recovered")
    # Two sessions at once land on the two nodes, and reach each other: one realm.
    probe = (recovered / "probe.txt").read_text()
    assert "ok: 2 sessions on 2 node(s) are one realm" in probe, probe


def fill_report(report: Path) -> None:
    text = report.read_text()
    for heading in list(answers(text)):
        text = re.sub(rf"^(#+ {re.escape(heading)})\n", rf"\1\nAnswered by the test: {heading}.\n",
                      text, count=1, flags=re.M)
    report.write_text(text)


def test_the_walk_is_a_complete_report(walk: Walk) -> None:
    report = walk.lab / "report.md"
    r = lbsync("lab", "check", str(walk.lab))
    assert r.returncode == 1 and "not answered" in r.stdout  # only the answers are missing
    assert "step " not in r.stdout and "check " not in r.stdout, r.stdout
    fill_report(report)
    r = lbsync("lab", "check", str(walk.lab))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "complete" in r.stdout
    lab = load_lab()
    assert all((walk.lab / s.folder / "MANIFEST.json").is_file()
               for t in lab.tasks for s in t.steps)


def test_the_checker_finds_a_missing_file_a_changed_file_and_an_unanswered_question(
        walk: Walk, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(walk.lab, copy)
    (copy / "logs/task-5/two-nodes/haproxy.cfg").unlink()
    with (copy / "logs/task-0/up/servers-state.txt").open("a") as f:
        f.write("# edited\n")
    report = copy / "report.md"
    report.write_text(report.read_text().replace("Answered by the test: T3.Q2.", ""))
    r = lbsync("lab", "check", str(copy), str(walk.lab), "--json")
    assert r.returncode == 1
    by_dir = {Path(d["dir"]).name: d for d in json.loads(r.stdout)}
    assert by_dir[walk.lab.name]["complete"] is True
    problems = {(p["task"], p["item"], p["problem"]) for p in by_dir["copy"]["problems"]}
    assert (5, "step two-nodes", "haproxy.cfg is listed in MANIFEST.json but missing") \
        in problems
    assert (0, "step up", "servers-state.txt was changed after it was collected "
            "(sha256 differs)") in problems
    assert (3, "T3.Q2", "not answered") in problems
    assert len(problems) == 3, problems
