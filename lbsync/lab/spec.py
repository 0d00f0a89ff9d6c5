"""The lab as data: labs/lab.toml read into tasks, steps and questions (pure).

lab.toml is the one description the collector, the checker and the generated parts of the
task pages and the report template all read; this module is its only reader.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..model import LbsyncError

# What a step may collect: each name is one collector in lbsync/lab/collect.py.
COLLECTORS = ("processes", "logs", "serf", "config", "registry", "runtime", "master",
              "screenshot", "status", "sticky", "render", "handler", "probe", "bench")
SNAPSHOT = ("processes", "logs", "serf", "config", "registry", "runtime", "master",
            "screenshot")
# Content checks by name (lbsync/lab/check.py implements each).
CHECKS = ("process-restarted", "serf-experiments", "handler-events", "distinct-configs",
          "broken-kept-old", "config-follows", "scaled-up", "sticky", "both-modes",
          "crash-seen", "recovered")
_STEP_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
_QUESTION_ID = re.compile(r"(M[1-9]|T[0-9]\.Q[1-9])")
_ATTACH = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class LabError(LbsyncError):
    """The lab description, a lab folder or a lab command's arguments are wrong."""


@dataclass(frozen=True)
class Step:
    task: int
    name: str
    what: str
    collect: tuple[str, ...]  # collectors, "snapshot" expanded
    attach: tuple[str, ...]  # student files from WORKDIR/work/

    @property
    def folder(self) -> str:
        """The step's folder under the lab folder: logs/task-N/NAME."""
        return f"logs/task-{self.task}/{self.name}"


@dataclass(frozen=True)
class Task:
    id: int
    title: str
    minutes: int
    questions: tuple[str, ...]
    checks: tuple[str, ...]
    steps: tuple[Step, ...]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        names = ", ".join(s.name for s in self.steps)
        raise LabError(f"task {self.id} has no step {name!r} (its steps: {names})")


@dataclass(frozen=True)
class Lab:
    title: str
    version: int
    tasks: tuple[Task, ...]

    def task(self, task_id: int) -> Task:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise LabError(f"no task {task_id} (tasks: "
                       f"{', '.join(str(t.id) for t in self.tasks)})")


def lab_file(name: str) -> str:
    """A file of labs/ as shipped (lab.toml, report/TEMPLATE.md, tasks/*.md)."""
    node = resources.files("lbsync.labs")
    for part in name.split("/"):
        node = node.joinpath(part)
    return node.read_text(encoding="utf-8")


def load_lab(path: Path | None = None) -> Lab:
    """labs/lab.toml (the shipped one unless `path` is given), checked."""
    label = str(path) if path else "labs/lab.toml"
    try:
        text = path.read_text(encoding="utf-8") if path else lab_file("lab.toml")
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LabError(f"{label}: {e}") from None
    try:
        return _parse(data)
    except KeyError as e:
        raise LabError(f"{label}: a task or step has no {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise LabError(f"{label}: {e}") from None


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(value)


def _parse(data: dict[str, Any]) -> Lab:
    tasks: list[Task] = []
    for t in data["task"]:
        task_id = int(t["id"])
        where = f"task {task_id}"
        questions = _strings(t.get("questions", []), f"{where}: questions")
        for q in questions:
            if not _QUESTION_ID.fullmatch(q) or (q[0] == "T" and q[1] != str(task_id)):
                raise ValueError(f"{where}: question id {q!r} is not M1-M9 or T{task_id}.QN")
        checks = _strings(t.get("checks", []), f"{where}: checks")
        if unknown := [c for c in checks if c not in CHECKS]:
            raise ValueError(f"{where}: unknown checks {unknown}")
        steps: list[Step] = []
        for s in t["step"]:
            name = str(s["name"])
            if not _STEP_NAME.fullmatch(name):
                raise ValueError(f"{where}: step name {name!r} is not [a-z][a-z0-9-]*")
            collect: list[str] = []
            for c in _strings(s.get("collect", []), f"{where} step {name}: collect"):
                for kind in (SNAPSHOT if c == "snapshot" else (c,)):
                    if kind not in COLLECTORS:
                        raise ValueError(f"{where} step {name}: unknown collector {kind!r}")
                    if kind not in collect:
                        collect.append(kind)
            attach = _strings(s.get("attach", []), f"{where} step {name}: attach")
            for a in attach:
                if not _ATTACH.fullmatch(a):
                    raise ValueError(f"{where} step {name}: attach {a!r} is not a plain name")
            if not collect and not attach:
                raise ValueError(f"{where} step {name}: collects nothing")
            steps.append(Step(task_id, name, str(s["what"]), tuple(collect), attach))
        if len({s.name for s in steps}) != len(steps):
            raise ValueError(f"{where}: two steps have the same name")
        tasks.append(Task(task_id, str(t["title"]), int(t["minutes"]), questions, checks,
                          tuple(steps)))
    ids = [t.id for t in tasks]
    if ids != list(range(len(tasks))):
        raise ValueError(f"tasks must be numbered 0, 1, 2... in order (got {ids})")
    all_questions = [q for t in tasks for q in t.questions]
    if len(set(all_questions)) != len(all_questions):
        raise ValueError("a question id appears twice")
    lab = data["lab"]
    return Lab(str(lab["title"]), int(lab["version"]), tuple(tasks))
