"""The parts of labs/ made from lab.toml: each task page's deliverables table, the guide's
time table and the whole report template (`lbsync lab pages` writes them)."""

from __future__ import annotations

from pathlib import Path

from .check import EXTRA_HEADINGS, step_files
from .spec import Lab, LabError, Task

BEGIN = "<!-- lab:deliverables begin -->"
END = "<!-- lab:deliverables end -->"
TIMES_BEGIN = "<!-- lab:times begin -->"
TIMES_END = "<!-- lab:times end -->"


def deliverables_table(task: Task) -> str:
    rows = ["| step | collect it with | what it shows | files in `logs/task-"
            f"{task.id}/STEP/` |", "|---|---|---|---|"]
    for s in task.steps:
        files = ", ".join(f"`{f}`" for f in step_files(s))
        rows.append(f"| `{s.name}` | `lbsync lab collect {task.id} --step {s.name}` | "
                    f"{s.what} | {files}, `MANIFEST.json` |")
    checks = ", ".join(f"`{c}`" for c in task.checks) or "none"
    return ("\n".join(rows) + f"\n\n`lbsync lab check --task {task.id}` also runs the "
            f"content checks {checks} and looks for your answers to "
            f"{', '.join(task.questions)} in `report.md`.\n")


def times_table(lab: Lab) -> str:
    rows = ["| task | title | minutes |", "|---|---|---|"]
    rows += [f"| {t.id} | {t.title} | {t.minutes} |" for t in lab.tasks]
    total = sum(t.minutes for t in lab.tasks)
    rows.append(f"| | total | {total} ({total // 60} h {total % 60:02d} min) |")
    return "\n".join(rows) + "\n"


def between(page: str, begin_mark: str, end_mark: str, text: str, label: str) -> str:
    """`page` with `text` between its two marker lines."""
    begin, end = page.find(begin_mark), page.find(end_mark)
    if begin < 0 or end < begin:
        raise LabError(f"{label}: no '{begin_mark}' ... '{end_mark}' block")
    return page[:begin + len(begin_mark)] + "\n" + text + page[end:]


def with_table(page: str, task: Task, label: str) -> str:
    return between(page, BEGIN, END, deliverables_table(task), label)


def report_template(lab: Lab) -> str:
    out = [f"# Lab report: {lab.title}", "",
           "<!-- Made by `lbsync lab init`. Answer under each question id; keep the headings:",
           "     `lbsync lab check` looks for them. Deliverables go in logs/ (lbsync lab",
           "     collect), not in this file. -->", "",
           "Student(s):", "", "Track (Docker or no-Docker):", ""]
    for task in lab.tasks:
        out += [f"## Task {task.id}: {task.title}", "",
                f"<!-- labs/tasks/task-{task.id}.md -->", ""]
        for q in task.questions:
            out += [f"### {q}", "", ""]
    for name in EXTRA_HEADINGS:
        out += [f"## {name}", "", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def expected_pages(lab: Lab, labs_dir: Path) -> dict[Path, str]:
    """Every generated file of labs_dir -> the text it must have."""
    pages: dict[Path, str] = {labs_dir / "report" / "TEMPLATE.md": report_template(lab)}
    guide = labs_dir / "README.md"
    try:
        pages[guide] = between(guide.read_text(encoding="utf-8"), TIMES_BEGIN, TIMES_END,
                               times_table(lab), str(guide))
    except OSError as e:
        raise LabError(f"{guide}: {e}") from None
    for task in lab.tasks:
        path = labs_dir / "tasks" / f"task-{task.id}.md"
        try:
            page = path.read_text(encoding="utf-8")
        except OSError as e:
            raise LabError(f"{path}: {e}") from None
        pages[path] = with_table(page, task, str(path))
    return pages
