"""`lbsync lab check`: is a lab folder a complete report? (pure, reads files only)

For every step of lab.toml: the folder, its MANIFEST.json, every file the manifest lists
with its hash unchanged, the files each collector makes; then each task's content checks
(named in lab.toml), then every question id answered in report.md. A problem is one row
with a hint; a folder is complete when it has none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..haproxy.runtime import parse_servers_state
from ..status import config_servers
from .collect import MANIFEST, sha256
from .screenshot import png_problem
from .spec import Lab, Step, Task

# The files each collector leaves in a step folder ("logs/" and the like: at least one file).
FILES: dict[str, tuple[str, ...]] = {
    "processes": ("processes.txt", "processes.json"), "logs": ("logs/",),
    "serf": ("serf-members.txt", "serf.log"), "config": ("haproxy.cfg",),
    "registry": ("registry.txt",), "runtime": ("servers-state.txt", "stat.csv", "info.txt"),
    "master": ("show-proc.txt",), "screenshot": ("stats.png", "stats.html"),
    "status": ("status.txt", "status.json"), "sticky": ("sticky.json",),
    "render": ("render.txt", "render.json", "haproxy.cfg.j2"), "handler": ("handler/",),
    "probe": ("probe.txt",), "bench": ("bench.json",),
}
EXTRA_HEADINGS = ("Difficulties", "Conclusion")


@dataclass(frozen=True)
class Problem:
    task: int | None
    item: str  # a step, a check, a question id
    problem: str
    hint: str


class StepView:
    """A collected step folder, read lazily."""

    def __init__(self, root: Path, step: Step) -> None:
        self.step, self.dir = step, root / step.folder

    def text(self, name: str) -> str:
        return (self.dir / name).read_text(encoding="utf-8", errors="replace")

    def json(self, name: str) -> Any:
        return json.loads(self.text(name))

    def servers_up(self) -> set[str]:
        states = parse_servers_state(self.text("servers-state.txt"))
        return {s.name for s in states if s.backend == "nodes" and s.up}

    def config_servers(self, name: str = "haproxy.cfg") -> set[str]:
        return config_servers(self.text(name))

    def registry(self, folder: str = "registry") -> dict[str, dict[str, Any]]:
        entries = {}
        for path in sorted((self.dir / folder).glob("*.json")):
            data = json.loads(path.read_text())
            entries[str(data["name"])] = data
        return entries


def check_step(root: Path, step: Step) -> list[Problem]:
    where = root / step.folder
    cmd = f"lbsync lab collect {step.task} --step {step.name}"

    def problem(text: str, hint: str = f"collect it again: {cmd}") -> list[Problem]:
        return [Problem(step.task, f"step {step.name}", text, hint)]

    if not where.is_dir():
        return problem(f"{step.folder}/ is missing", f"run `{cmd}` ({step.what})")
    try:
        manifest = json.loads((where / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError("files is not a table of hashes")
    except (OSError, ValueError, KeyError, TypeError):
        return problem(f"{step.folder}/{MANIFEST} is missing or damaged")
    found: list[Problem] = []
    for name, digest in sorted(files.items()):
        path = where / name
        if not path.is_file():
            found += problem(f"{name} is listed in {MANIFEST} but missing")
        elif sha256(path) != digest:
            found += problem(f"{name} was changed after it was collected (sha256 differs)",
                             f"deliverables are evidence, not to be edited: {cmd}")
    if manifest.get("collectors") != list(step.collect):
        found += problem("collected with another lab.toml (its collectors differ)")
    for kind in step.collect:
        for name in FILES[kind]:
            if name.endswith("/"):
                if not any(n.startswith(name) for n in files):
                    found += problem(f"no file in {name} ({kind})")
            elif name not in files:
                found += problem(f"{name} is missing ({kind})")
    for name in step.attach:
        if name not in files:
            found += problem(f"your file {name} is missing", f"make work/{name}, then {cmd}")
    png, html = where / "stats.png", where / "stats.html"
    if "screenshot" in step.collect and png.is_file():
        if bad := png_problem(png.read_bytes()):
            found += problem(f"stats.png is not a real screenshot: {bad}")
        elif html.is_file() and "Statistics Report" not in html.read_text(errors="replace"):
            found += problem("stats.html is not HAProxy's stats page")
    return found


# --- content checks, by name (lab.toml `checks`) --------------------------------------

Check = Callable[[dict[str, StepView]], str | None]


def _process_restarted(s: dict[str, StepView]) -> str | None:
    before = s["before-kill"].json("processes.json")["pids"]
    after = s["after-kill"].json("processes.json")["pids"]
    restarted = [k for k, pid in after.items() if pid and before.get(k) not in (None, 0, pid)]
    if not restarted:
        return "no process has a new pid in after-kill: kill one between the two steps"
    return None


def _serf_experiments(s: dict[str, StepView]) -> str | None:
    seeds = s["seeds"]
    join, retry, nokey, withkey = (seeds.text(n) for n in (
        "join.txt", "retry-join.txt", "no-key.txt", "with-key.txt"))
    if "Failed to join" not in join:
        return "join.txt shows no failed -join (start the agent while no seed runs)"
    if "Join completed" not in retry or "Failed to join" not in retry:
        return ("retry-join.txt must show failed attempts, then 'Join completed' (start the "
                "seed while the agent retries)")
    if "encrypt" not in nokey.lower():
        return "no-key.txt shows no encryption refusal (join a seed that has -encrypt)"
    if "Join completed" not in withkey or "Encrypted: true" not in withkey:
        return ("with-key.txt shows no join with the key (the same agent with -encrypt and "
                "the cluster's key)")
    return None


def _handler_events(s: dict[str, StepView]) -> str | None:
    handler = s["handler"].registry("handler")
    edges = [n for n, m in handler.items() if m.get("tags", {}).get("role") == "edge"]
    if len(edges) < 2:
        return f"the watcher's registry has {len(edges)} edge nodes in step handler (want 2+)"
    after_handler, after_daemon = (s["after-leave"].registry("handler"),
                                   s["after-leave"].registry())
    left = {n for n, m in after_handler.items() if m.get("last_event") == "member-leave"}
    if not left:
        return "no member-leave in the watcher's registry in after-leave: stop one node first"
    daemon_left = {n for n, m in after_daemon.items() if m.get("status") == "left"}
    if missing := left - daemon_left - {"watcher"}:
        return f"the daemon's registry does not say {sorted(missing)} left"
    return None


def _distinct_configs(s: dict[str, StepView]) -> str | None:
    steps = ("shipped", "edited", "edited-more")
    for name in steps:
        if s[name].json("render.json")["exit"] != 0:
            return f"the render of step {name} failed: see its render.txt"
    configs = {s[name].text("haproxy.cfg") for name in steps}
    if len(configs) < 3:
        return "shipped, edited and edited-more must be three different configs"
    return None


def _broken_kept_old(s: dict[str, StepView]) -> str | None:
    broken = s["broken"]
    if broken.json("render.json")["exit"] == 0:
        return "the broken template rendered fine: break it so that haproxy -c refuses it"
    if broken.text("haproxy.cfg") != s["edited-more"].text("haproxy.cfg"):
        return "after the broken render, work/haproxy.cfg is not the edited-more one"
    return None


def _alive_edges(view: StepView) -> set[str]:
    return {n for n, m in view.registry().items()
            if m.get("status") == "alive" and m.get("tags", {}).get("role") == "edge"}


def _config_follows(s: dict[str, StepView]) -> str | None:
    counts = {name: len(s[name].config_servers()) for name in
              ("two-nodes", "three-nodes", "node-stopped")}
    if counts["two-nodes"] != 2 or counts["three-nodes"] != 3:
        return f"haproxy.cfg should list 2 then 3 servers (it lists {counts})"
    if counts["node-stopped"] != counts["three-nodes"] - 1:
        return f"after the stop haproxy.cfg should list one server fewer (it lists {counts})"
    for name in counts:
        if (alive := _alive_edges(s[name])) != (servers := s[name].config_servers()):
            return (f"step {name}: the registry's live nodes {sorted(alive)} differ from "
                    f"haproxy.cfg's servers {sorted(servers)}")
    return None


def _scaled_up(s: dict[str, StepView]) -> str | None:
    up = s["scaled"].servers_up()
    if len(up) <= 2:
        return f"step scaled has {len(up)} servers UP (more than 2 expected: scale to 4)"
    return None


def _sticky(s: dict[str, StepView]) -> str | None:
    nodes = []
    for name in ("sticky-before", "sticky-after"):
        answers = s[name].json("sticky.json")["requests"]
        seen = {a["node"] for a in answers if a["status"] == 200}
        if len(seen) != 1 or any(a["status"] != 200 for a in answers):
            return f"step {name}: requests went to {sorted(map(str, seen))} (one node expected)"
        nodes.append(seen.pop())
    if nodes[0] != nodes[1]:
        return f"the cookie's node changed with scaling: {nodes[0]} then {nodes[1]}"
    return None


def _both_modes(s: dict[str, StepView]) -> str | None:
    sides = s["measure"].json("bench.json").get("side_by_side", {})
    for mode in ("runtime-api", "reload-baseline"):
        if not isinstance(sides.get(mode, {}).get("reloads"), int):
            return f"bench.json has no reload count for mode {mode}"
    return None


def _crash_seen(s: dict[str, StepView]) -> str | None:
    crash = s["crash"]
    failed = [n for n, m in crash.registry().items() if m.get("status") == "failed"]
    states = parse_servers_state(crash.text("servers-state.txt"))
    not_up = [x.name for x in states if x.backend == "nodes" and not x.up]
    drift = crash.json("status.json")["check_exit"] != 0
    if not (failed or not_up or drift):
        return ("step crash shows every node alive and UP: collect it within a few seconds "
                "of the kill")
    return None


def _recovered(s: dict[str, StepView]) -> str | None:
    if s["recovered"].json("status.json")["check_exit"] != 0:
        return "lbsync status --check failed in step recovered: wait until it passes"
    return None


CHECKS: dict[str, tuple[Check, str]] = {
    "process-restarted": (_process_restarted, "task 1: kill one process between the two steps"),
    "serf-experiments": (_serf_experiments, "task 2, the playground"),
    "handler-events": (_handler_events, "task 3"),
    "distinct-configs": (_distinct_configs, "task 4, edit the template between steps"),
    "broken-kept-old": (_broken_kept_old, "task 4, the broken template"),
    "config-follows": (_config_follows, "task 5"),
    "scaled-up": (_scaled_up, "task 6, scale to 4 nodes"),
    "sticky": (_sticky, "task 6, the sticky client"),
    "both-modes": (_both_modes, "task 6, the measure step"),
    "crash-seen": (_crash_seen, "task 7, collect right after the kill"),
    "recovered": (_recovered, "task 7, wait for status --check"),
}


def check_task_content(root: Path, task: Task) -> list[Problem]:
    views = {s.name: StepView(root, s) for s in task.steps}
    found = []
    for name in task.checks:
        fn, hint = CHECKS[name]
        try:
            bad = fn(views)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            bad = f"cannot read what it needs ({type(e).__name__}: {e})"
        if bad:
            found.append(Problem(task.id, f"check {name}", bad, f"see {hint}"))
    return found


# --- the report --------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{2,4})\s+(.+?)\s*$", re.MULTILINE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def answers(report: str) -> dict[str, str]:
    """Heading text (the question id, or Difficulties/Conclusion) -> the text under it."""
    found: dict[str, str] = {}
    report = _COMMENT.sub("", report)  # a commented-out heading or answer is not one
    heads = list(_HEADING.finditer(report))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(report)
        body = report[m.end():end].strip()
        found[m.group(2).split()[0].rstrip(".:")] = body
    return found


def check_report(root: Path, lab: Lab, tasks: list[Task]) -> list[Problem]:
    try:
        text = (root / "report.md").read_text(encoding="utf-8")
    except OSError:
        return [Problem(None, "report.md", "report.md is missing",
                        "lbsync lab init makes it from labs/report/TEMPLATE.md")]
    given = answers(text)
    found = []
    for task in tasks:
        for q in task.questions:
            if q not in given:
                found.append(Problem(task.id, q, "no heading for this question",
                                     f"keep the '### {q}' heading of the template"))
            elif len(given[q].split()) < 3:
                found.append(Problem(task.id, q, "not answered",
                                     f"write your answer under '### {q}' in report.md"))
    if len(tasks) == len(lab.tasks):
        for name in EXTRA_HEADINGS:
            if len(given.get(name, "").split()) < 3:
                found.append(Problem(None, name, "section empty",
                                     f"write it under '## {name}' in report.md"))
    return found


def check_folder(root: Path, lab: Lab, task_id: int | None = None) -> list[Problem]:
    tasks = [lab.task(task_id)] if task_id is not None else list(lab.tasks)
    found: list[Problem] = []
    for task in tasks:
        missing_steps = []
        for step in task.steps:
            step_problems = check_step(root, step)
            found += step_problems
            if step_problems:
                missing_steps.append(step.name)
        if not missing_steps:  # content checks read the steps; no use on missing ones
            found += check_task_content(root, task)
    return found + check_report(root, lab, tasks)


def format_problems(root: Path, problems: list[Problem]) -> str:
    if not problems:
        return f"{root}: complete\n"
    lines = [f"{root}: {len(problems)} missing"]
    width = max(len(p.item) for p in problems)
    for p in problems:
        task = "-" if p.task is None else str(p.task)
        lines.append(f"  task {task:2} {p.item.ljust(width)}  {p.problem}\n"
                     f"  {'':7} {''.ljust(width)}  hint: {p.hint}")
    return "\n".join(lines) + "\n"


def as_json(results: dict[Path, list[Problem]]) -> str:
    return json.dumps([{"dir": str(root), "complete": not problems,
                        "problems": [asdict(p) for p in problems]}
                       for root, problems in results.items()], indent=2) + "\n"


# Read by the task pages' tables: which files each collector leaves (pages.py).
def step_files(step: Step) -> list[str]:
    return [name for kind in step.collect for name in FILES[kind]] + list(step.attach)
