"""lbsync.lab without processes: lab.toml read and checked; a lab folder graded (a complete
synthetic one made by hand, then one defect at a time); the generated pages; the screenshot
checks; collect() with a fake stack; `lbsync lab` through click's CliRunner."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import shutil
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lbsync.cli import main
from lbsync.lab import check, collect
from lbsync.lab.check import Problem, answers, check_folder, check_step
from lbsync.lab.collect import MANIFEST, MARKER
from lbsync.lab.pages import BEGIN, END, deliverables_table, expected_pages, with_table
from lbsync.lab.screenshot import png_problem, png_size
from lbsync.lab.spec import CHECKS, COLLECTORS, SNAPSHOT, LabError, Step, lab_file, load_lab
from lbsync.model import Member, MemberStatus
from lbsync.registry import to_json
from lbsync.render import BEGIN as CFG_BEGIN
from lbsync.render import END as CFG_END
from lbsync.render import load_template

LABS = Path(__file__).resolve().parents[2] / "labs"
LAB = load_lab()

# --- images --------------------------------------------------------------------------------


def png(width: int, height: int, row: bytes) -> bytes:
    """An 8-bit RGB PNG whose every row is `row` (width * 3 bytes, filter type 0)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = (b"\x00" + row) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))


def gradient_png(width: int = 1000, height: int = 500) -> bytes:
    row = bytes(c for x in range(width)
                for c in (x * 255 // width, 128, 255 - x * 255 // width))
    return png(width, height, row)


def flat_png(width: int = 1000, height: int = 500) -> bytes:
    return png(width, height, b"\xf0\xf0\xf0" * width)


GOOD_PNG = gradient_png()

# --- a complete lab folder, made by hand ------------------------------------------------

PIDS = {"lb:haproxy": 101, "lb:agent": 102, "lb:serf": 103,
        "node1:crossbar": 201, "node1:serf": 202, "node1:sidecar": 203,
        "node2:crossbar": 301, "node2:serf": 302, "node2:sidecar": 303}
FOUR = ("node1", "node2", "node3", "node4")
CFG_SHIPPED = "balance roundrobin"
CFG_EDITED = "balance leastconn"
CFG_EDITED_MORE = "balance leastconn\n    http-response set-header X-Lab edited"

STATE_HEADER = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    "srv_agent_port\n")
STAT_HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
    "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,"
    "sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,\n")
SHOW_PROC = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
3299            master          0 [failed: 0]   0d00h00m58s     2.6.12-1+deb12u4
# workers
3706            worker          0               0d00h00m58s     2.6.12-1+deb12u4
# programs
"""
STATS_HTML = ("<html><head><title>Statistics Report for HAProxy</title></head><body>"
              "<h1>HAProxy version 2.6.12</h1><h2>Statistics Report for pid 3706</h2>"
              "</body></html>\n")
SEEDS = {
    "join.txt": ("$ serf agent -node play1 -join 127.0.0.1:7950\n==> Joining cluster...\n"
                 "==> Failed to join 127.0.0.1:7950: dial tcp 127.0.0.1:7950: connect: "
                 "connection refused\n"),
    "retry-join.txt": ("$ serf agent -node play2 -retry-join 127.0.0.1:7950\n"
                       "==> Failed to join 127.0.0.1:7950: connection refused\n"
                       "==> Failed to join 127.0.0.1:7950: connection refused\n"
                       "==> Join completed. Synced with 1 initial agents\n"),
    "no-key.txt": ("$ serf agent -node play3 -join 127.0.0.1:7951\n==> Failed to join: "
                   "memberlist: Encryption is configured but remote state is not encrypted\n"),
    "with-key.txt": ("==> Serf agent running!\n                      Encrypted: true\n"
                     "==> Joining cluster...(replay: false)\n"
                     "    Join completed. Synced with 1 initial agents\n"),
}
SESSIONS = ("sessions: 6 through ws://127.0.0.1:8080/ws (realm realm1) for 40s\n"
            "summary: 6 clients, 9 joins, 3 sessions closed by the server (node2: 3), "
            "3 rejoined, 0 failed connects\n")


@dataclass(frozen=True)
class Scene:
    """What the stack looked like when a step was collected."""

    alive: tuple[str, ...] = ("node1", "node2")  # edge nodes alive, in haproxy.cfg, UP
    left: tuple[str, ...] = ()  # in the registries as left; not in haproxy.cfg
    failed: tuple[str, ...] = ()  # in the registry as failed; DOWN in HAProxy
    pids: Mapping[str, int] = field(default_factory=lambda: dict(PIDS))
    check_exit: int = 0
    cfg: str = CFG_SHIPPED  # the rendered config's own line(s)
    template: str = "{# shipped #}"
    render_exit: int = 0
    sticky_node: str = "node1"


SCENES: dict[tuple[int, str], Scene] = {
    (1, "after-kill"): Scene(pids={**PIDS, "node1:crossbar": 4242}),
    (3, "after-leave"): Scene(alive=("node1",), left=("node2",)),
    (4, "edited"): Scene(cfg=CFG_EDITED, template="{# edited #}"),
    (4, "edited-more"): Scene(cfg=CFG_EDITED_MORE, template="{# edited more #}"),
    (4, "broken"): Scene(cfg=CFG_EDITED_MORE, template="{# broken #}", render_exit=1),
    (5, "three-nodes"): Scene(alive=("node1", "node2", "node3")),
    (5, "node-stopped"): Scene(alive=("node1", "node3"), left=("node2",)),
    (6, "scaled"): Scene(alive=FOUR),
    (6, "sticky-after"): Scene(alive=FOUR),
    (7, "crash"): Scene(alive=("node1",), failed=("node2",), check_exit=1),
}


def ip(node: str) -> str:
    return "127.0.0.1" + node.removeprefix("node")  # node1 -> 127.0.0.11


def haproxy_cfg(servers: Sequence[str], own: str = CFG_SHIPPED) -> str:
    lines = ["global", "    master-worker", "", "backend nodes", f"    {own}",
             "    cookie SERVERID insert indirect nocache dynamic", f"    {CFG_BEGIN}"]
    lines += [f"    server {n} {ip(n)}:8080 check agent-check agent-port 9100 weight 100"
              for n in servers]
    return "\n".join([*lines, f"    {CFG_END}", ""])


def servers_state(up: Sequence[str], down: Sequence[str] = ()) -> str:
    rows = [f"3 nodes {i} {n} {ip(n)} {2 if n in up else 0} 0 100 100 5 6 3 4 6 0 0 0 - "
            "8080 - 0 0 - - 0" for i, n in enumerate(sorted({*up, *down}), 1)]
    return STATE_HEADER + "".join(r + "\n" for r in rows)


def entry(name: str, status: MemberStatus = MemberStatus.ALIVE, role: str = "edge") -> str:
    event = {MemberStatus.ALIVE: "member-join", MemberStatus.LEFT: "member-leave",
             MemberStatus.FAILED: "member-failed"}[status]
    tags = {"role": role, "port": "8080"} if role == "edge" else {"role": role}
    return json.dumps(to_json(Member(name, ip(name) if role == "edge" else "127.0.0.1", tags,
                                     status, event, 1700000000.0)), indent=2) + "\n"


def registry_files(scene: Scene, folder: str = "registry") -> dict[str, str]:
    files = {f"{folder}/lb.json": entry("lb", role="lb")}
    for names, status in ((scene.alive, MemberStatus.ALIVE), (scene.left, MemberStatus.LEFT),
                          (scene.failed, MemberStatus.FAILED)):
        files |= {f"{folder}/{n}.json": entry(n, status) for n in names}
    return files


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def sticky_json(node: str) -> str:
    return dumps({"url": "http://127.0.0.1:8080/mydata", "cookies": {"SERVERID": node},
                  "requests": [{"status": 200, "node": node, "sent_cookies": {"SERVERID": node},
                                "set_cookie": None} for _ in range(10)]})


def processes_json(pids: Mapping[str, int]) -> str:
    return dumps({"track": "local", "pids": dict(pids)})


def collector_files(kind: str, scene: Scene) -> dict[str, str | bytes]:
    """What collector `kind` would have written into a step folder in `scene`."""
    everyone = [*scene.alive, *scene.failed]
    if kind == "processes":
        text = "".join(f"{k:20} RUNNING   pid {p}, uptime 0:05:00\n"
                       for k, p in scene.pids.items())
        return {"processes.txt": text, "processes.json": processes_json(scene.pids)}
    if kind == "logs":
        return {"logs/lb-agent.log": "lbsync agent: add server=node1\n",
                "logs/node1-crossbar.log": "Crossbar.io started\n"}
    if kind == "serf":
        members = "".join(f"{n:8} {ip(n)}:7946  alive  role=edge\n" for n in scene.alive)
        return {"serf-members.txt": f"$ serf members\n{members}(exit code 0)\n",
                "serf.log": "serf: EventMemberJoin: node1 127.0.0.11\n"}
    if kind == "config":
        return {"haproxy.cfg": haproxy_cfg(scene.alive, scene.cfg)}
    if kind == "registry":
        return {"registry.txt": "FILE STATUS\n", **registry_files(scene)}
    if kind == "runtime":
        stat = "".join(f"nodes,{n},0,0,0,0,,0,0,0,,0,,0,0,0,0,"
                       f"{'UP' if n in scene.alive else 'DOWN'},100,1,0,0,0,4,0,,1,3,1,,"
                       "0,,2,0,,0,L7OK,200,\n" for n in everyone)
        return {"servers-state.txt": servers_state(scene.alive, scene.failed),
                "stat.csv": STAT_HEADER + stat, "info.txt": "Name: HAProxy\nVersion: 2.6.12\n"}
    if kind == "master":
        return {"show-proc.txt": SHOW_PROC}
    if kind == "screenshot":
        return {"stats.png": GOOD_PNG, "stats.html": STATS_HTML}
    if kind == "status":
        return {"status.txt": f"$ lbsync status --check\n(exit code {scene.check_exit})\n",
                "status.json": dumps({"status_exit": 0, "check_exit": scene.check_exit})}
    if kind == "sticky":
        return {"sticky.json": sticky_json(scene.sticky_node)}
    if kind == "render":
        return {"render.txt": f"$ lbsync render\n(exit code {scene.render_exit})\n",
                "render.json": dumps({"exit": scene.render_exit}),
                "haproxy.cfg.j2": scene.template + "\n",
                "haproxy.cfg": haproxy_cfg(scene.alive, scene.cfg), **registry_files(scene)}
    if kind == "handler":
        return {"handler.txt": "FILE STATUS\n", **registry_files(scene, "handler"),
                "handler/watcher.json": entry("watcher", role="watcher")}
    if kind == "probe":
        return {"probe.txt": "ok: joined realm1 on node1, call and publish in 12 ms\n"}
    if kind == "bench":
        return {"bench.json": dumps({"side_by_side": {"runtime-api": {"reloads": 0},
                                                       "reload-baseline": {"reloads": 12}}})}
    raise AssertionError(f"no synthetic files for collector {kind}")


def step_deliverables(step: Step) -> dict[str, str | bytes]:
    scene = SCENES.get((step.task, step.name), Scene())
    files: dict[str, str | bytes] = {}
    for kind in step.collect:
        files |= collector_files(kind, scene)
    for name in step.attach:
        files[name] = SEEDS.get(name) or SESSIONS
    return files


def write_manifest(root: Path, step: Step, collectors: Sequence[str] | None = None) -> None:
    """MANIFEST.json as `lbsync lab collect` writes it, for the files the folder has now."""
    where = root / step.folder
    files = {str(p.relative_to(where)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(where.rglob("*")) if p.is_file() and p != where / MANIFEST}
    manifest = {"lab_version": LAB.version, "task": step.task, "step": step.name,
                "track": "local", "stack": {}, "collected_utc": "2025-01-01T00:00:00Z",
                "versions": {}, "collectors": list(step.collect if collectors is None
                                                   else collectors),
                "attached": list(step.attach), "files": files}
    (where / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def write_files(where: Path, files: Mapping[str, str | bytes | None]) -> None:
    for name, content in files.items():
        path = where / name
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


def answered_report() -> str:
    """The shipped report template with a few words under every heading it checks."""
    out = []
    for line in lab_file("report/TEMPLATE.md").splitlines():
        out.append(line)
        if m := re.fullmatch(r"#{2,4} (\S+)", line):  # "### M1", "## Conclusion"
            out.append(f"My answer to {m.group(1)}, in a few words.")
    return "\n".join(out) + "\n"


def build_lab(root: Path) -> Path:
    (root / "logs").mkdir(parents=True)
    (root / "work").mkdir()
    (root / MARKER).write_text("{}\n")
    (root / "work" / "haproxy.cfg.j2").write_text(load_template(None)[1])
    for task in LAB.tasks:
        for step in task.steps:
            write_files(root / step.folder, step_deliverables(step))
            write_manifest(root, step)
    (root / "report.md").write_text(answered_report())
    return root


_cached_png_problem = functools.lru_cache(maxsize=16)(png_problem)


@pytest.fixture(autouse=True)
def _png_problem_once_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """png_problem is pure but reads every pixel: the checker asks it once per image here
    (a full lab folder has 8 screenshots, and most tests check the whole folder)."""
    monkeypatch.setattr(check, "png_problem", _cached_png_problem)


@pytest.fixture(scope="module")
def complete_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lab(tmp_path_factory.mktemp("lab") / "complete")


@pytest.fixture
def lab_dir(complete_lab: Path, tmp_path: Path) -> Path:
    """A fresh copy of the complete lab folder, for one test to damage."""
    return Path(shutil.copytree(complete_lab, tmp_path / "lab", symlinks=True))


def step_of(task: int, name: str) -> Step:
    return LAB.task(task).step(name)


def recollect(root: Path, task: int, name: str,
              files: Mapping[str, str | bytes | None]) -> None:
    """Change a step's files and its manifest, as a new `lab collect` would have."""
    step = step_of(task, name)
    write_files(root / step.folder, files)
    write_manifest(root, step)


def only_problem(problems: list[Problem], task: int | None, item: str,
                 fragment: str) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    (p,) = problems
    assert (p.task, p.item) == (task, item), p
    assert fragment in p.problem, p
    assert p.hint, p
    return p


# --- spec: lab.toml ------------------------------------------------------------------


def test_shipped_lab_has_tasks_0_to_7_with_known_collectors_and_checks() -> None:
    assert [t.id for t in LAB.tasks] == list(range(8))
    assert LAB.title and LAB.version >= 1
    questions = [q for t in LAB.tasks for q in t.questions]
    assert len(questions) == len(set(questions))
    assert {"M1", "M6", "T0.Q1", "T7.Q4"} <= set(questions)
    for task in LAB.tasks:
        assert task.steps and task.minutes > 0
        assert set(task.checks) <= set(CHECKS)
        for step in task.steps:
            assert step.task == task.id
            assert step.folder == f"logs/task-{task.id}/{step.name}"
            assert step.collect or step.attach
            assert set(step.collect) <= set(COLLECTORS), step
            assert "snapshot" not in step.collect
            assert len(set(step.collect)) == len(step.collect)
    assert step_of(0, "up").collect == SNAPSHOT
    assert step_of(7, "crash").collect == (*SNAPSHOT, "status")
    assert step_of(7, "leave").attach == ("sessions.txt",)
    assert step_of(2, "seeds").collect == ()


def test_every_collector_and_check_has_an_implementation() -> None:
    assert set(check.FILES) == set(COLLECTORS)
    assert set(collect.COLLECT) == set(COLLECTORS) == set(collect.WHAT)
    assert set(check.CHECKS) == set(CHECKS)


def test_shipped_lab_toml_is_the_packaged_one() -> None:
    assert load_lab(LABS / "lab.toml") == LAB


def test_unknown_step_and_task_name_what_exists() -> None:
    with pytest.raises(LabError, match=r"task 4 has no step 'nosuch' \(its steps: shipped, "
                                       r"edited, edited-more, broken\)"):
        LAB.task(4).step("nosuch")
    with pytest.raises(LabError, match=r"no task 99 \(tasks: 0, 1, 2, 3, 4, 5, 6, 7\)"):
        LAB.task(99)


SMALL_LAB = """\
[lab]
title = "A small lab"
version = 3

[[task]]
id = 0
title = "zero"
minutes = 5
questions = ["M1", "T0.Q1"]

[[task.step]]
name = "up"
what = "the stack"
collect = ["snapshot", "processes"]

[[task]]
id = 1
title = "one"
minutes = 10
questions = ["T1.Q1"]
checks = ["recovered"]

[[task.step]]
name = "recovered"
what = "status passes"
collect = ["status"]
attach = ["notes.txt"]
"""


def test_a_small_lab_toml_loads(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(SMALL_LAB)
    lab = load_lab(path)
    assert (lab.title, lab.version, [t.id for t in lab.tasks]) == ("A small lab", 3, [0, 1])
    assert lab.task(0).step("up").collect == SNAPSHOT  # expanded, "processes" once
    assert lab.task(1).step("recovered").attach == ("notes.txt",)
    assert lab.task(1).checks == ("recovered",)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('collect = ["status"]', 'collect = ["status", "bogus"]',
         "task 1 step recovered: unknown collector 'bogus'"),
        ('name = "up"', 'name = "Up step"', "task 0: step name 'Up step' is not [a-z]"),
        ('name = "recovered"', 'name = "up"\nwhat = "x"\ncollect = ["status"]\n'
         '[[task.step]]\nname = "up"', "task 1: two steps have the same name"),
        ('questions = ["T1.Q1"]', 'questions = ["T3.Q1"]',
         "task 1: question id 'T3.Q1' is not M1-M9 or T1.QN"),
        ('questions = ["T1.Q1"]', 'questions = ["Q1"]', "question id 'Q1' is not M1-M9"),
        ('questions = ["T1.Q1"]', 'questions = ["T1.Q1", "M1"]', "a question id appears twice"),
        ('id = 1\ntitle = "one"\nminutes = 10\nquestions = ["T1.Q1"]',
         'id = 2\ntitle = "one"\nminutes = 10\nquestions = ["M2"]',
         "tasks must be numbered 0, 1, 2... in order (got [0, 2])"),
        ('id = 0\ntitle = "zero"\nminutes = 5\nquestions = ["M1", "T0.Q1"]',
         'id = 1\ntitle = "zero"\nminutes = 5\nquestions = ["M1"]',
         "tasks must be numbered 0, 1, 2... in order (got [1, 1])"),
        ('checks = ["recovered"]', 'checks = ["recovered", "nope"]',
         "task 1: unknown checks ['nope']"),
        ('collect = ["status"]\nattach = ["notes.txt"]', 'collect = []',
         "task 1 step recovered: collects nothing"),
        ('attach = ["notes.txt"]', 'attach = ["../notes.txt"]',
         "task 1 step recovered: attach '../notes.txt' is not a plain name"),
        ('collect = ["status"]', 'collect = "status"',
         "task 1 step recovered: collect must be a list of strings"),
        ('checks = ["recovered"]', 'checks = "recovered"', "task 1: checks must be a list"),
        ("minutes = 10", 'minutes = "ten"', "ten"),
        ("[lab]", "[lab", "lab.toml"),  # not TOML
    ],
)
def test_broken_lab_toml_is_one_clear_lab_error(tmp_path: Path, old: str, new: str,
                                                message: str) -> None:
    assert old in SMALL_LAB
    path = tmp_path / "lab.toml"
    path.write_text(SMALL_LAB.replace(old, new, 1))
    with pytest.raises(LabError) as caught:
        load_lab(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("drop", ['what = "status passes"\n', 'title = "A small lab"\n',
                                  'minutes = 10\n'])
def test_lab_toml_missing_a_key_is_a_lab_error(tmp_path: Path, drop: str) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(SMALL_LAB.replace(drop, ""))
    with pytest.raises(LabError, match=re.escape(str(path))):
        load_lab(path)


def test_missing_lab_toml_is_a_lab_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="No such file"):
        load_lab(tmp_path / "nope.toml")


# --- check: a complete folder, then one defect at a time --------------------------------


def test_the_synthetic_png_is_a_real_png() -> None:
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(io.BytesIO(GOOD_PNG)) as image:
        image.load()
        assert image.size == (1000, 500)
        colours = image.getcolors(1 << 16)
        assert colours is not None and len(colours) > 100


def test_complete_folder_has_no_problem(complete_lab: Path) -> None:
    assert check_folder(complete_lab, LAB) == []
    for task in LAB.tasks:
        assert check_folder(complete_lab, LAB, task.id) == []


def test_missing_step_folder(lab_dir: Path) -> None:
    shutil.rmtree(lab_dir / "logs/task-1/after-kill")
    p = only_problem(check_folder(lab_dir, LAB), 1, "step after-kill",
                     "logs/task-1/after-kill/ is missing")
    assert "lbsync lab collect 1 --step after-kill" in p.hint
    # Content checks are not run on a task with a missing step.
    assert check_folder(lab_dir, LAB, 1) == [p]


@pytest.mark.parametrize("content", ["", "{not json", '{"collectors": []}', "[1, 2]"])
def test_missing_or_damaged_manifest(lab_dir: Path, content: str) -> None:
    path = lab_dir / "logs/task-0/up" / MANIFEST
    if content:
        path.write_text(content)
    else:
        path.unlink()
    only_problem(check_folder(lab_dir, LAB), 0, "step up", "MANIFEST.json is missing or damaged")


@pytest.mark.parametrize("files", ['[]', '"haproxy.cfg"', "null"])
def test_manifest_whose_files_is_not_a_mapping_is_damaged(lab_dir: Path, files: str) -> None:
    where = lab_dir / "logs/task-0/up"
    manifest = json.loads((where / MANIFEST).read_text())
    (where / MANIFEST).write_text(json.dumps({**manifest, "files": json.loads(files)}))
    only_problem(check_folder(lab_dir, LAB), 0, "step up", "MANIFEST.json is missing or damaged")


@pytest.mark.parametrize(("task", "step", "name"), [
    (0, "up", "haproxy.cfg"), (0, "up", "stats.png"), (0, "up", "logs/lb-agent.log"),
    (0, "up", "stats.html"), (2, "seeds", "join.txt"), (4, "broken", "registry/node1.json"),
])
def test_deliverable_deleted_after_collection(lab_dir: Path, task: int, step: str,
                                              name: str) -> None:
    (lab_dir / step_of(task, step).folder / name).unlink()
    only_problem(check_folder(lab_dir, LAB), task, f"step {step}",
                 f"{name} is listed in MANIFEST.json but missing")


@pytest.mark.parametrize(("task", "step", "name"), [
    (0, "up", "haproxy.cfg"), (0, "up", "stats.png"), (6, "measure", "bench.json"),
    (7, "leave", "sessions.txt"),
])
def test_deliverable_changed_after_collection(lab_dir: Path, task: int, step: str,
                                              name: str) -> None:
    path = lab_dir / step_of(task, step).folder / name
    path.write_bytes(path.read_bytes() + b"\n")
    p = only_problem(check_folder(lab_dir, LAB), task, f"step {step}",
                     f"{name} was changed after it was collected (sha256 differs)")
    assert "not to be edited" in p.hint


@pytest.mark.parametrize(("task", "step", "name", "message"), [
    (0, "up", "haproxy.cfg", "haproxy.cfg is missing (config)"),
    (0, "up", "show-proc.txt", "show-proc.txt is missing (master)"),
    (0, "up", "logs", "no file in logs/ (logs)"),
    (3, "handler", "handler", "no file in handler/ (handler)"),
    (2, "seeds", "no-key.txt", "your file no-key.txt is missing"),
])
def test_deliverable_never_collected(lab_dir: Path, task: int, step: str, name: str,
                                     message: str) -> None:
    path = lab_dir / step_of(task, step).folder / name
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    write_manifest(lab_dir, step_of(task, step))
    only_problem(check_folder(lab_dir, LAB), task, f"step {step}", message)


def test_step_collected_with_other_collectors(lab_dir: Path) -> None:
    write_manifest(lab_dir, step_of(5, "two-nodes"), collectors=["processes"])
    only_problem(check_folder(lab_dir, LAB), 5, "step two-nodes",
                 "collected with another lab.toml")


@pytest.mark.parametrize(("content", "message"), [
    (flat_png(), "stats.png is not a real screenshot: the image is blank"),
    (flat_png(1400, 900), "the image is blank"),
    (b"<html>Statistics Report</html>", "stats.png is not a real screenshot: not a PNG file"),
    (gradient_png(640, 300), "640x300 pixels, smaller than a page"),
])
def test_screenshot_that_is_not_a_screenshot(lab_dir: Path, content: bytes,
                                             message: str) -> None:
    recollect(lab_dir, 5, "three-nodes", {"stats.png": content})
    only_problem(check_folder(lab_dir, LAB), 5, "step three-nodes", message)


def test_stats_html_that_is_not_the_stats_page(lab_dir: Path) -> None:
    recollect(lab_dir, 0, "up", {"stats.html": "<html>503 Service Unavailable</html>"})
    only_problem(check_folder(lab_dir, LAB), 0, "step up", "stats.html is not HAProxy's")


# (task, step, files to write (None: delete), check, fragment of its problem)
CONTENT_DEFECTS = [
    pytest.param(1, "after-kill", {"processes.json": processes_json(PIDS)},
                 "process-restarted", "no process has a new pid in after-kill",
                 id="process-restarted:same-pids"),
    pytest.param(1, "after-kill", {"processes.json": processes_json({})},
                 "process-restarted", "no process has a new pid", id="process-restarted:empty"),
    pytest.param(1, "before-kill", {"processes.json": "{not json"}, "process-restarted",
                 "cannot read what it needs (JSONDecodeError", id="process-restarted:unreadable"),
    pytest.param(2, "seeds", {"join.txt": "==> Joining cluster...\n==> Join completed.\n"},
                 "serf-experiments", "join.txt shows no failed -join",
                 id="serf-experiments:join-worked"),
    pytest.param(2, "seeds", {"retry-join.txt": "==> Failed to join 127.0.0.1:7950\n"},
                 "serf-experiments", "retry-join.txt must show failed attempts, then",
                 id="serf-experiments:never-joined"),
    pytest.param(2, "seeds", {"retry-join.txt": "==> Join completed. Synced with 1\n"},
                 "serf-experiments", "retry-join.txt must show failed attempts",
                 id="serf-experiments:never-failed"),
    pytest.param(2, "seeds", {"no-key.txt": "==> Join completed.\n"}, "serf-experiments",
                 "no-key.txt shows no encryption refusal", id="serf-experiments:no-refusal"),
    pytest.param(2, "seeds", {"with-key.txt": "==> Failed to join: Remote state is "
                              "encrypted and encryption is not configured\n"},
                 "serf-experiments", "with-key.txt shows no join with the key",
                 id="serf-experiments:with-key-refused"),
    pytest.param(3, "handler", {"handler/node2.json": None}, "handler-events",
                 "the watcher's registry has 1 edge nodes in step handler",
                 id="handler-events:one-edge"),
    pytest.param(3, "after-leave", {"handler/node2.json": entry("node2")}, "handler-events",
                 "no member-leave in the watcher's registry", id="handler-events:no-leave"),
    pytest.param(3, "after-leave", {"registry/node2.json": entry("node2")}, "handler-events",
                 "the daemon's registry does not say ['node2'] left",
                 id="handler-events:daemon-disagrees"),
    pytest.param(4, "edited", {"haproxy.cfg": haproxy_cfg(("node1", "node2"), CFG_SHIPPED)},
                 "distinct-configs", "three different configs", id="distinct-configs:equal"),
    pytest.param(4, "edited-more", {"render.json": dumps({"exit": 1})}, "distinct-configs",
                 "the render of step edited-more failed", id="distinct-configs:render-failed"),
    pytest.param(4, "broken", {"render.json": dumps({"exit": 0})}, "broken-kept-old",
                 "the broken template rendered fine", id="broken-kept-old:exit-0"),
    pytest.param(4, "broken", {"haproxy.cfg": haproxy_cfg(("node1",), "balance first")},
                 "broken-kept-old", "work/haproxy.cfg is not the edited-more one",
                 id="broken-kept-old:config-replaced"),
    pytest.param(5, "three-nodes", {"registry/node3.json": entry("node3", MemberStatus.FAILED)},
                 "config-follows", "step three-nodes: the registry's live nodes ['node1', "
                 "'node2'] differ from haproxy.cfg's servers ['node1', 'node2', 'node3']",
                 id="config-follows:registry-disagrees"),
    pytest.param(5, "node-stopped", {"registry/node2.json": entry("node2")}, "config-follows",
                 "step node-stopped: the registry's live nodes", id="config-follows:not-left"),
    pytest.param(5, "two-nodes", {"haproxy.cfg": haproxy_cfg(("node1", "node2", "node3"))},
                 "config-follows", "haproxy.cfg should list 2 then 3 servers",
                 id="config-follows:three-at-first"),
    pytest.param(5, "node-stopped", {"haproxy.cfg": haproxy_cfg(("node1", "node2", "node3"))},
                 "config-follows", "should list one server fewer",
                 id="config-follows:none-stopped"),
    pytest.param(6, "scaled", {"servers-state.txt": servers_state(("node1", "node2"),
                                                                  ("node3", "node4"))},
                 "scaled-up", "step scaled has 2 servers UP", id="scaled-up:two-up"),
    pytest.param(6, "sticky-after", {"sticky.json": sticky_json("node2")}, "sticky",
                 "the cookie's node changed with scaling: node1 then node2",
                 id="sticky:node-changed"),
    pytest.param(6, "sticky-before", {"sticky.json": dumps({"requests": [
        {"status": 200, "node": "node1"}, {"status": 200, "node": "node2"}]})}, "sticky",
        "step sticky-before: requests went to ['node1', 'node2']", id="sticky:not-sticky"),
    pytest.param(6, "sticky-after", {"sticky.json": dumps({"requests": [
        {"status": 200, "node": "node1"}, {"status": 503, "node": None}]})}, "sticky",
        "step sticky-after", id="sticky:an-error"),
    pytest.param(6, "measure", {"bench.json": dumps({"side_by_side": {
        "runtime-api": {"reloads": 0}}})}, "both-modes",
        "bench.json has no reload count for mode reload-baseline", id="both-modes:one-mode"),
    pytest.param(6, "measure", {"bench.json": dumps({"join": {}})}, "both-modes",
                 "no reload count for mode runtime-api", id="both-modes:no-side-by-side"),
    pytest.param(7, "crash", {"registry/node2.json": entry("node2"),
                              "servers-state.txt": servers_state(("node1", "node2")),
                              "status.json": dumps({"status_exit": 0, "check_exit": 0})},
                 "crash-seen", "step crash shows every node alive and UP",
                 id="crash-seen:all-fine"),
    pytest.param(7, "recovered", {"status.json": dumps({"status_exit": 1, "check_exit": 1})},
                 "recovered", "lbsync status --check failed in step recovered",
                 id="recovered:check-exit-1"),
]


@pytest.mark.parametrize(("task", "step", "files", "name", "message"), CONTENT_DEFECTS)
def test_content_check_fails_on_its_defect(lab_dir: Path, task: int, step: str,
                                           files: dict[str, str | None], name: str,
                                           message: str) -> None:
    recollect(lab_dir, task, step, files)
    assert check_step(lab_dir, step_of(task, step)) == []  # the step itself is fine
    p = only_problem(check_folder(lab_dir, LAB), task, f"check {name}", message)
    assert p.hint.startswith("see task")


@pytest.mark.parametrize("sign", [
    {"registry/node2.json": entry("node2", MemberStatus.FAILED)},
    {"servers-state.txt": servers_state(("node1",), ("node2",))},
    {"status.json": dumps({"status_exit": 1, "check_exit": 1})},
], ids=["registry-failed", "server-down", "check-exit-1"])
def test_crash_seen_by_any_one_sign(lab_dir: Path, sign: dict[str, str]) -> None:
    all_fine = {"registry/node2.json": entry("node2"),
                "servers-state.txt": servers_state(("node1", "node2")),
                "status.json": dumps({"status_exit": 0, "check_exit": 0})}
    recollect(lab_dir, 7, "crash", all_fine | sign)
    assert check_folder(lab_dir, LAB, 7) == []


# --- check: the report ---------------------------------------------------------------


def edit_report(root: Path, edit: Callable[[str], str]) -> None:
    path = root / "report.md"
    before = path.read_text()
    after = edit(before)
    assert after != before
    path.write_text(after)


ANSWER = "My answer to T1.Q2, in a few words."


@pytest.mark.parametrize(("replacement", "message"), [
    ("", "not answered"),
    ("<!-- labs/tasks/task-1.md -->", "not answered"),
    ("<!-- Answer here: what does the supervisor\n     do when Crossbar dies? -->\n",
     "not answered"),
    ("Yes, restarted.", "not answered"),
    ("Restarted <!-- by s6 or supervisord --> again.", "not answered"),
])
def test_unanswered_question(lab_dir: Path, replacement: str, message: str) -> None:
    edit_report(lab_dir, lambda text: text.replace(ANSWER, replacement))
    p = only_problem(check_folder(lab_dir, LAB), 1, "T1.Q2", message)
    assert "### T1.Q2" in p.hint


def test_missing_question_heading(lab_dir: Path) -> None:
    edit_report(lab_dir, lambda text: text.replace(f"### T1.Q2\n{ANSWER}\n", ""))
    p = only_problem(check_folder(lab_dir, LAB), 1, "T1.Q2", "no heading for this question")
    assert "'### T1.Q2'" in p.hint


def test_headings_may_carry_the_question_text(lab_dir: Path) -> None:
    edit_report(lab_dir, lambda text: text.replace("### T1.Q2\n", "#### T1.Q2: Who restarts "
                                                   "it?\n"))
    assert check_folder(lab_dir, LAB) == []


@pytest.mark.parametrize("name", ["Difficulties", "Conclusion"])
def test_empty_closing_section(lab_dir: Path, name: str) -> None:
    edit_report(lab_dir, lambda text: text.replace(f"My answer to {name}, in a few words.",
                                                   "None."))
    only_problem(check_folder(lab_dir, LAB), None, name, "section empty")
    # One task alone is graded without them.
    assert check_folder(lab_dir, LAB, 1) == []


def test_missing_report(lab_dir: Path) -> None:
    (lab_dir / "report.md").unlink()
    only_problem(check_folder(lab_dir, LAB), None, "report.md", "report.md is missing")


def test_one_task_is_graded_alone(lab_dir: Path) -> None:
    shutil.rmtree(lab_dir / "logs/task-0")
    edit_report(lab_dir, lambda text: text.replace("My answer to T0.Q1, in a few words.", ""))
    assert check_folder(lab_dir, LAB, 1) == []
    problems = check_folder(lab_dir, LAB, 0)
    assert [(p.task, p.item) for p in problems] == [(0, "step up"), (0, "T0.Q1")]


def test_answers_parses_headings_and_ignores_comments() -> None:
    report = """\
# Lab report: a title, not a question
<!-- Made by lbsync lab init. -->

## Task 0: The problems
<!-- labs/tasks/task-0.md -->
### M1
<!-- several
     lines -->
It is a single point of failure.

### M2:
<!-- only a comment -->

#### T0.Q1. Why did it fail?
Because <!-- inline --> the seed was down.
##### not a heading
## Conclusion
Done.
"""
    got = answers(report)
    assert got["M1"] == "It is a single point of failure."
    assert got["M2"] == ""
    assert got["T0.Q1"] == "Because  the seed was down.\n##### not a heading"
    assert got["Conclusion"] == "Done."
    assert got["Task"] == ""
    assert "Lab" not in got  # "#" is the title, not a heading


def test_answers_ignores_headings_inside_comments() -> None:
    got = answers("### M1\nMy answer to M1.\n<!-- ### M2\nA draft I do not hand in. -->\n"
                  "<!--\n### M3\n-->\n")
    assert got == {"M1": "My answer to M1."}


def test_commented_out_answer_does_not_count(lab_dir: Path) -> None:
    edit_report(lab_dir, lambda text: text.replace(f"### T1.Q2\n{ANSWER}\n",
                                                   f"<!--\n### T1.Q2\n{ANSWER}\n-->\n"))
    only_problem(check_folder(lab_dir, LAB), 1, "T1.Q2", "no heading for this question")


# --- pages: labs/tasks/*.md and labs/report/TEMPLATE.md ----------------------------------


def test_shipped_pages_are_in_sync_with_lab_toml() -> None:
    stale = [str(path.relative_to(LABS)) for path, text in expected_pages(LAB, LABS).items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    assert stale == [], f"out of date with lab.toml (run `lbsync lab pages`): {stale}"


def test_report_template_is_the_shipped_one() -> None:
    assert lab_file("report/TEMPLATE.md") == (LABS / "report" / "TEMPLATE.md").read_text()
    given = answers(lab_file("report/TEMPLATE.md"))
    for task in LAB.tasks:
        for q in task.questions:
            assert given[q] == "", q
    assert given["Difficulties"] == given["Conclusion"] == ""


@pytest.mark.parametrize("task_id", range(8))
def test_task_page_asks_its_questions_and_names_its_steps(task_id: int) -> None:
    task = LAB.task(task_id)
    path = LABS / "tasks" / f"task-{task_id}.md"
    assert path.is_file(), f"{path} is not written yet"
    page = path.read_text(encoding="utf-8")
    for q in task.questions:
        assert f"**{q}**" in page, f"{path} does not ask {q} (as **{q}**)"
    for step in task.steps:
        cmd = f"lbsync lab collect {task_id} --step {step.name}"
        assert cmd in page, f"{path} does not say `{cmd}`"


def test_with_table_replaces_only_between_the_markers() -> None:
    task = LAB.task(1)
    page = f"# Task 1\n\nbefore\n\n{BEGIN}\nold table\n{END}\n\nafter\n"
    made = with_table(page, task, "page.md")
    assert made.startswith(f"# Task 1\n\nbefore\n\n{BEGIN}\n")
    assert made.endswith(f"{END}\n\nafter\n")
    assert "old table" not in made
    assert deliverables_table(task) in made
    assert "| `after-kill` | `lbsync lab collect 1 --step after-kill` |" in made
    assert "`processes.json`" in made and "`MANIFEST.json`" in made
    assert with_table(made, task, "page.md") == made


@pytest.mark.parametrize("page", ["# Task 1\n\nno markers\n", f"{END}\n\n{BEGIN}\n",
                                  f"only {BEGIN}\n"])
def test_with_table_without_markers_is_a_lab_error(page: str) -> None:
    with pytest.raises(LabError, match=r"^page\.md: no '<!-- lab:deliverables begin -->'"):
        with_table(page, LAB.task(1), "page.md")


def test_expected_pages_of_a_labs_folder_without_its_pages(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="README.md"):
        expected_pages(LAB, tmp_path)
    (tmp_path / "README.md").write_text("# The guide, with no generated parts\n")
    with pytest.raises(LabError, match="README.md: no '<!-- lab:times begin -->'"):
        expected_pages(LAB, tmp_path)
    (tmp_path / "README.md").write_text("<!-- lab:times begin -->\n<!-- lab:times end -->\n")
    with pytest.raises(LabError, match=r"tasks/task-0\.md"):
        expected_pages(LAB, tmp_path)


# --- screenshot.png_problem ------------------------------------------------------------


def test_png_problem() -> None:
    assert png_problem(b"") == "not a PNG file"
    assert png_problem(b"GIF89a" + bytes(100)) == "not a PNG file"
    assert png_problem(STATS_HTML.encode()) == "not a PNG file"
    assert png_problem(gradient_png(799, 500)) == ("799x500 pixels, smaller than a page "
                                                   "(800x400)")
    assert png_problem(gradient_png(1000, 399)) is not None
    assert png_problem(flat_png()) == "the image is blank (one flat colour)"
    assert png_problem(GOOD_PNG) is None
    assert png_problem(gradient_png(800, 400)) is None
    assert png_size(GOOD_PNG) == (1000, 500)
    damaged = GOOD_PNG.replace(b"IDAT", b"IDAT\x00\x01\x02\x03", 1)
    assert png_problem(damaged) == "its image data is damaged"
    assert png_problem(GOOD_PNG[:40]) == "its image data is damaged"


# --- collect() with a fake stack (no processes) ------------------------------------------


@dataclass
class FakeTrack:
    """Answers what collectors `processes` and `logs` ask (task 1's steps)."""

    pids: dict[str, int]
    fail_logs: bool = False
    name: str = "fake"
    runtime: str = "127.0.0.1:1"  # nothing answers: the HAProxy version stays "?"
    stats_url: str = "http://127.0.0.1:1/"
    frontend_url: str = "http://127.0.0.1:1"

    def describe(self) -> dict[str, object]:
        return {"fake": True}

    def processes(self) -> tuple[str, dict[str, int]]:
        return "".join(f"{k} RUNNING pid {p}\n" for k, p in self.pids.items()), dict(self.pids)

    def logs(self) -> dict[str, str]:
        if self.fail_logs:
            raise LabError("the logs went away")
        return {"lb-agent.log": "started\n", "node1-crossbar.log": "started\n"}

    def inspect(self) -> dict[str, str]:
        return {}


@pytest.fixture
def fake_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collect, "versions", lambda track, haproxy: {"haproxy": haproxy})


def new_lab(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    collect.init(root, "{# template #}\n", lab_file("report/TEMPLATE.md"))
    return root


def test_collect_writes_a_step_folder_that_checks(tmp_path: Path, fake_versions: None) -> None:
    root = new_lab(tmp_path)
    step = step_of(1, "before-kill")
    out = io.StringIO()
    final = collect.collect(LAB, step, root, FakeTrack(dict(PIDS)), out)
    assert final == root.resolve() / step.folder
    manifest = json.loads((final / MANIFEST).read_text())
    assert manifest["collectors"] == ["processes", "logs"]
    assert (manifest["task"], manifest["step"], manifest["track"]) == (1, "before-kill", "fake")
    assert manifest["versions"] == {"haproxy": "?"}
    assert set(manifest["files"]) == {"processes.txt", "processes.json", "logs/lb-agent.log",
                                      "logs/node1-crossbar.log"}
    assert json.loads((final / "processes.json").read_text())["pids"] == PIDS
    assert check_step(root, step) == []
    assert "collected 4 files" in out.getvalue()
    assert sorted(p.name for p in final.parent.iterdir()) == ["before-kill"]  # no staging


def test_collect_that_fails_leaves_the_old_step(tmp_path: Path, fake_versions: None) -> None:
    root = new_lab(tmp_path)
    step = step_of(1, "after-kill")
    collect.collect(LAB, step, root, FakeTrack({"a:b": 1}), io.StringIO())
    before = (root / step.folder / "processes.json").read_text()
    with pytest.raises(LabError, match="collecting logs: the logs went away"):
        collect.collect(LAB, step, root, FakeTrack({"a:b": 2}, fail_logs=True),
                        io.StringIO())
    assert (root / step.folder / "processes.json").read_text() == before
    assert sorted(p.name for p in (root / "logs/task-1").iterdir()) == ["after-kill"]
    # A new collection replaces the old one whole.
    collect.collect(LAB, step, root, FakeTrack({"a:b": 3}), io.StringIO())
    assert json.loads((root / step.folder / "processes.json").read_text())["pids"] == {"a:b": 3}
    assert sorted(p.name for p in (root / "logs/task-1").iterdir()) == ["after-kill"]


def test_a_failed_benchmark_keeps_its_transcript_in_work(
        tmp_path: Path, fake_versions: None, monkeypatch: pytest.MonkeyPatch) -> None:
    root = new_lab(tmp_path)
    step = step_of(6, "measure")
    monkeypatch.setattr(collect, "preflight", lambda step, workdir: None)
    failed = collect.Run(["bench"], 1, "part 4: timed out waiting for node 2\n")
    monkeypatch.setattr(collect, "run", lambda argv, env, timeout: failed)
    with pytest.raises(LabError, match="timed out waiting for node 2.*measure-failed.txt"):
        collect.collect(LAB, step, root, FakeTrack(dict(PIDS)), io.StringIO())
    assert not (root / step.folder).exists()  # nothing half-collected
    kept = (root / "work" / "measure-failed.txt").read_text()
    assert "timed out waiting for node 2" in kept and "(exit code 1)" in kept


# --- the CLI -------------------------------------------------------------------------------


def lab_cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["lab", *map(str, args)],
                              env={"LBSYNC_CLUSTER_DIR": None})


def assert_one_error_line(result: Result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lbsync: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_cli_check_complete_folder(complete_lab: Path) -> None:
    result = lab_cli("check", complete_lab)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{complete_lab}: complete\n"


def test_cli_check_broken_folder_prints_the_table(lab_dir: Path) -> None:
    shutil.rmtree(lab_dir / "logs/task-1/after-kill")
    recollect(lab_dir, 6, "sticky-after", {"sticky.json": sticky_json("node2")})
    result = lab_cli("check", lab_dir)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{lab_dir}: 2 missing"
    assert re.match(r"  task 1\s+step after-kill\s+logs/task-1/after-kill/ is missing$", lines[1])
    assert "hint: run `lbsync lab collect 1 --step after-kill`" in lines[2]
    assert re.match(r"  task 6\s+check sticky\s+the cookie's node changed", lines[3])
    assert "hint: see task 6" in lines[4]


def test_cli_check_json(lab_dir: Path, complete_lab: Path) -> None:
    (lab_dir / "logs/task-0/up/stats.png").unlink()
    result = lab_cli("check", "--json", lab_dir)
    assert result.exit_code == 1
    (report,) = json.loads(result.stdout)
    assert report["dir"] == str(lab_dir) and report["complete"] is False
    assert report["problems"] == [{
        "task": 0, "item": "step up", "problem": "stats.png is listed in MANIFEST.json but "
        "missing", "hint": "collect it again: lbsync lab collect 0 --step up"}]
    result = lab_cli("check", "--json", complete_lab)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [{"dir": str(complete_lab), "complete": True,
                                          "problems": []}]


def test_cli_check_two_folders(lab_dir: Path, complete_lab: Path) -> None:
    shutil.rmtree(lab_dir / "logs/task-7")
    result = lab_cli("check", complete_lab, lab_dir)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{complete_lab}: complete\n{lab_dir}: 3 missing\n")
    assert result.stdout.endswith("1 of 2 folders complete\n")
    result = lab_cli("check", "--json", complete_lab, lab_dir)
    assert [r["complete"] for r in json.loads(result.stdout)] == [True, False]


def test_cli_check_one_task(lab_dir: Path) -> None:
    shutil.rmtree(lab_dir / "logs/task-7")
    assert lab_cli("check", "--task", "6", lab_dir).exit_code == 0
    result = lab_cli("check", "--task", "7", lab_dir)
    assert result.exit_code == 1
    assert "3 missing" in result.stdout


def test_cli_check_unknown_task(complete_lab: Path) -> None:
    assert_one_error_line(lab_cli("check", "--task", "99", complete_lab), "no task 99")


def test_cli_check_of_a_folder_that_is_not_a_lab_folder(tmp_path: Path) -> None:
    assert_one_error_line(lab_cli("check", tmp_path), f"{tmp_path} is not a lab folder",
                          "lbsync lab init")


def test_cli_init_makes_a_lab_folder(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    result = lab_cli("init", root)
    assert result.exit_code == 0, result.output
    assert tree(root) == [".lbsync-lab", "logs", "report.md", "work", "work/haproxy.cfg.j2"]
    assert (root / "report.md").read_text() == lab_file("report/TEMPLATE.md")
    assert (root / "work/haproxy.cfg.j2").read_text() == load_template(None)[1]
    assert f"wrote {root / 'report.md'}" in result.stdout
    # An empty folder is fine too.
    (tmp_path / "empty").mkdir()
    assert lab_cli("init", tmp_path / "empty").exit_code == 0
    # Freshly made, nothing is complete; every question is unanswered.
    problems = check_folder(root, LAB)
    assert {p.item for p in problems} >= {"step up", "M1", "T7.Q4", "Conclusion"}


def test_cli_init_twice_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    assert lab_cli("init", root).exit_code == 0
    (root / "report.md").write_text("my answers\n")
    assert_one_error_line(lab_cli("init", root), "is a lab folder already")
    assert (root / "report.md").read_text() == "my answers\n"


def test_cli_init_on_a_non_empty_folder_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    assert_one_error_line(lab_cli("init", tmp_path), "exists and is not an empty folder")
    assert tree(tmp_path) == ["notes.txt"]


def test_cli_init_on_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "report").write_text("mine\n")
    assert_one_error_line(lab_cli("init", tmp_path / "report"), "report")
    assert (tmp_path / "report").read_text() == "mine\n"


def test_cli_collect_unknown_step_names_the_steps(tmp_path: Path) -> None:
    assert lab_cli("init", tmp_path / "mine").exit_code == 0
    assert_one_error_line(lab_cli("collect", "0", "--step", "nosuch", "--dir", tmp_path / "mine"),
                          "task 0 has no step 'nosuch' (its steps: up)")
    assert_one_error_line(lab_cli("collect", "9", "--step", "up", "--dir", tmp_path / "mine"),
                          "no task 9")
    assert tree(tmp_path / "mine" / "logs") == []


def test_cli_collect_outside_a_lab_folder(tmp_path: Path) -> None:
    assert_one_error_line(lab_cli("collect", "1", "--step", "before-kill", "--dir", tmp_path,
                                  "--mode", "local", "--cluster-dir", tmp_path),
                          "is not a lab folder")
    assert tree(tmp_path) == []


def test_cli_collect_without_a_local_cluster(tmp_path: Path) -> None:
    root, cluster = tmp_path / "mine", tmp_path / "cluster"
    cluster.mkdir()
    assert lab_cli("init", root).exit_code == 0
    assert_one_error_line(lab_cli("collect", "1", "--step", "before-kill", "--dir", root,
                                  "--mode", "local", "--cluster-dir", cluster),
                          f"no local cluster runs in {cluster}")
    assert tree(root / "logs") == []
    assert tree(cluster) == []


def test_cli_collect_needs_the_students_files_first(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    assert lab_cli("init", root).exit_code == 0
    assert_one_error_line(lab_cli("collect", "2", "--step", "seeds", "--dir", root, "--mode",
                                  "local", "--cluster-dir", tmp_path / "none"),
                          "step seeds needs your file work/join.txt")
    assert tree(root / "logs") == []
