"""`lbsync lab collect`: one step's deliverables, from the running stack into the lab folder.

Every collector writes its files into a staging folder; only when all of them succeeded
is the staging folder, with its MANIFEST.json (sha256 of every file), renamed to
logs/task-N/STEP. A failure leaves the lab folder as it was and says what failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import requests

from .. import BENCH_RUN, bench_command, self_command
from ..haproxy.runtime import RuntimeAPI
from ..model import LbsyncError
from ..settings import env_of
from .screenshot import find_chromium, screenshot
from .spec import Lab, LabError, Step
from .tracks import DockerTrack, LocalTrack, Run, run, versions

MARKER = ".lbsync-lab"
MANIFEST = "MANIFEST.json"
STICKY_REQUESTS = 10


def check_workdir(workdir: Path) -> Path:
    if not (workdir / MARKER).is_file():
        raise LabError(f"{workdir} is not a lab folder (make one with `lbsync lab init DIR`, "
                       "then run lab commands inside it or pass --dir DIR)")
    return workdir.resolve()


@dataclass
class Context:
    """What one collector needs: the stack, the lab folder, the staging folder."""

    track: LocalTrack | DockerTrack
    workdir: Path
    out: Path  # the staging folder
    final: Path  # where the staging folder goes once every collector succeeded

    def write(self, name: str, text: str | bytes) -> None:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")

    def write_json(self, name: str, data: object) -> None:
        self.write(name, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _processes(c: Context) -> str:
    text, pids = c.track.processes()
    c.write("processes.txt", text)
    c.write_json("processes.json", {"track": c.track.name, "pids": pids})
    return f"{len(pids)} processes"


def _logs(c: Context) -> str:
    logs = c.track.logs()
    for name, text in logs.items():
        c.write(f"logs/{name}", text)
    inspected = c.track.inspect()
    for name, text in inspected.items():
        c.write(f"inspect/{name}", text)
    return f"{len(logs)} logs" + (f", {len(inspected)} docker inspect" if inspected else "")


def _serf(c: Context) -> str:
    members = c.track.serf_members()
    if members.code != 0:
        raise LabError(f"serf members failed: {members.out.strip()[-200:]}")
    c.write("serf-members.txt", members.transcript())
    c.write("serf.log", c.track.serf_log())
    return f"{len(members.out.splitlines())} members"


def _config(c: Context) -> str:
    text = c.track.haproxy_config()
    c.write("haproxy.cfg", text)
    return f"{len(text.splitlines())} lines"


def _registry_listing(files: dict[str, str]) -> str:
    lines = [f"{'FILE':28} {'STATUS':8} {'LAST EVENT':16} {'ADDRESS':16} TAGS"]
    for name, text in files.items():
        try:
            m = json.loads(text)
            tags = ",".join(f"{k}={v}" for k, v in sorted(m.get("tags", {}).items()))
            lines.append(f"{name:28} {m.get('status', '?'):8} {m.get('last_event', '?'):16} "
                         f"{m.get('address', '?'):16} {tags}")
        except (ValueError, AttributeError):
            lines.append(f"{name:28} (not a registry entry: {text[:40]!r})")
    return "\n".join(lines) + "\n"


def _registry(c: Context) -> str:
    files = c.track.registry()
    c.write("registry.txt", _registry_listing(files))
    for name, text in files.items():
        c.write(f"registry/{name}", text)
    return f"{len(files)} members"


def _runtime(c: Context) -> str:
    state, stat, info = RuntimeAPI(c.track.runtime).run(
        ["show servers state", "show stat", "show info"])
    c.write("servers-state.txt", state)
    c.write("stat.csv", stat)
    c.write("info.txt", info)
    return f"show servers state, show stat, show info from {c.track.runtime}"


def _master(c: Context) -> str:
    text = c.track.show_proc()
    c.write("show-proc.txt", text)
    return "show proc"


def _screenshot(c: Context) -> str:
    html = requests.get(c.track.stats_url, timeout=10).text
    png = screenshot(c.track.stats_url)
    c.write("stats.html", html)
    c.write("stats.png", png)
    return f"{c.track.stats_url}, {len(png) // 1024} KB"


def _status(c: Context) -> str:
    table, check = c.track.status(False), c.track.status(True)
    c.write("status.txt", table.transcript() + "\n" + check.transcript())
    c.write_json("status.json", {"status_exit": table.code, "check_exit": check.code})
    return f"--check exited {check.code}"


def _sticky(c: Context) -> str:
    """A client that keeps its cookies across steps: WORKDIR/work/cookies.txt."""
    jar_path = c.workdir / "work" / "cookies.txt"
    jar = http.cookiejar.MozillaCookieJar(str(jar_path))
    with contextlib.suppress(FileNotFoundError):
        jar.load(ignore_discard=True, ignore_expires=True)
    url = f"{c.track.frontend_url}/mydata"
    answers = []
    with requests.Session() as session:
        session.cookies = jar  # type: ignore[assignment]
        for _ in range(STICKY_REQUESTS):
            sent = {k.name: k.value for k in jar}
            r = session.get(url, timeout=10)
            node = r.json().get("node") if r.ok else None
            answers.append({"status": r.status_code, "node": node, "sent_cookies": sent,
                            "set_cookie": r.headers.get("set-cookie")})
    jar.save(ignore_discard=True, ignore_expires=True)
    c.write_json("sticky.json", {"url": url, "requests": answers,
                                 "cookies": {k.name: k.value for k in jar}})
    nodes = sorted({str(a["node"]) for a in answers})
    return f"{len(answers)} requests answered by {', '.join(nodes)}"


def _render(c: Context) -> str:
    """`lbsync render` of the student's template against the stack's registry, into
    WORKDIR/work/haproxy.cfg (the running stack is never touched)."""
    work = c.workdir / "work"
    template = work / "haproxy.cfg.j2"
    if not template.is_file():
        raise LabError(f"{template} is missing (lbsync lab init puts a copy of the shipped "
                       "template there)")
    registry = c.out / "registry"
    registry.mkdir()
    for name, text in c.track.registry().items():
        c.write(f"registry/{name}", text)
    env = {**os.environ, **env_of({
        "template": str(template), "registry_dir": str(registry),
        "haproxy_config": str(work / "haproxy.cfg"),
        "runtime_socket": str(work / "run" / "admin.sock"),
        "master_socket": str(work / "run" / "master.sock")})}
    r = run([*self_command(), "render"], env=env)
    # The transcript shows the command as a student would type it in the lab folder.
    r = Run(["lbsync", "render", "--template", "work/haproxy.cfg.j2", "--registry-dir",
             "REGISTRY-COPY", "--haproxy-config", "work/haproxy.cfg"], r.code, r.out)
    c.write("render.txt", r.transcript())
    c.write_json("render.json", {"exit": r.code})
    shutil.copyfile(template, c.out / "haproxy.cfg.j2")
    if (work / "haproxy.cfg").is_file():
        shutil.copyfile(work / "haproxy.cfg", c.out / "haproxy.cfg")
    return "rendered" if r.code == 0 else "the render failed (kept for the report)"


def _handler(c: Context) -> str:
    files = c.track.handler_registry(c.workdir)
    if not files:
        where = (c.workdir / "work" / "handler" if c.track.name == "local"
                 else "/tmp/lab-handler in the lb container")
        raise LabError(f"the watcher's registry ({where}) is empty: start the watcher agent "
                       "of task 3 first")
    c.write("handler.txt", _registry_listing(files))
    for name, text in files.items():
        c.write(f"handler/{name}", text)
    return f"{len(files)} entries"


def _probe(c: Context) -> str:
    """One WAMP round trip through HAProxy, then two sessions at once (on two nodes) that
    must reach each other's procedures and events: one realm across the fleet."""
    from ..edge.probe import probe, probe_across

    url = c.track.frontend_url.replace("http://", "ws://") + "/ws"
    try:
        line = probe(url, "realm1", 10.0).line()
    except LbsyncError as e:
        line = f"failed: {e}"
    try:
        across = probe_across([url, url], "realm1", 10.0).lines()
    except LbsyncError as e:
        across = [f"across two sessions: failed: {e}"]
    c.write("probe.txt", "\n".join([line, "", *across]) + "\n")
    return line


def _bench(c: Context) -> str:
    argv, env = bench_command("--quick", "--only", "4", "--out", str(c.out / "bench.json"),
                              "--results", str(c.out))
    started = time.monotonic()
    r = run(argv, env=env, timeout=1200)
    c.write("bench.txt", r.transcript())
    if r.code != 0:
        # A failed collection leaves the lab folder as it was, so the transcript goes to
        # the student's own work/ folder: a failed run is worth reading too.
        kept = c.workdir / "work" / f"{c.final.name}-failed.txt"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(r.transcript(), encoding="utf-8")
        raise LabError(f"the benchmark failed (exit {r.code}): "
                       f"{(r.out.strip().splitlines() or ['no output'])[-1]} "
                       f"(its whole output: {kept})")
    # The results name their own paths: name the step folder, not the staging folder.
    for path in c.out.iterdir():
        if path.suffix in (".md", ".json", ".txt"):
            path.write_text(path.read_text().replace(str(c.out), str(c.final)))
    return f"both modes in {time.monotonic() - started:.0f}s"


COLLECT: dict[str, Callable[[Context], str]] = {
    "processes": _processes, "logs": _logs, "serf": _serf, "config": _config,
    "registry": _registry, "runtime": _runtime, "master": _master, "screenshot": _screenshot,
    "status": _status, "sticky": _sticky, "render": _render, "handler": _handler,
    "probe": _probe, "bench": _bench,
}
WHAT = {
    "processes": "process list", "logs": "logs", "serf": "serf members and log",
    "config": "haproxy.cfg", "registry": "registry", "runtime": "Runtime API",
    "master": "master CLI show proc", "screenshot": "stats page screenshot",
    "status": "lbsync status", "sticky": "sticky client", "render": "lbsync render",
    "handler": "watcher registry", "probe": "WAMP probe", "bench": "side-by-side benchmark",
}


def preflight(step: Step, workdir: Path) -> None:
    """What can be known to fail before anything is collected."""
    if "screenshot" in step.collect:
        find_chromium()
    if "bench" in step.collect and not BENCH_RUN.is_file():
        raise LabError(f"the benchmark needs a source checkout: {BENCH_RUN} is missing")
    for name in step.attach:
        if not (workdir / "work" / name).is_file():
            raise LabError(f"step {step.name} needs your file work/{name} "
                           f"({workdir / 'work' / name}): see the task page")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def collect(lab: Lab, step: Step, workdir: Path, track: LocalTrack | DockerTrack,
            out: TextIO = sys.stdout) -> Path:
    workdir = check_workdir(workdir)
    preflight(step, workdir)
    final = workdir / step.folder
    made_parent = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{step.name}.", dir=final.parent))
    try:
        context = Context(track, workdir, staging, final)
        total = len(step.collect) + len(step.attach)
        out.write(f"task {step.task}, step {step.name}: {total} deliverable(s) from the "
                  f"{track.name} stack into {final}\n")
        haproxy = "?"
        for i, kind in enumerate(step.collect, 1):
            out.write(f"  [{i}/{total}] {WHAT[kind]} ... ")
            out.flush()
            started = time.monotonic()
            try:
                said = COLLECT[kind](context)
            except (LbsyncError, OSError, requests.RequestException, ValueError) as e:
                out.write("failed\n")
                raise LabError(f"collecting {WHAT[kind]}: {e}") from None
            out.write(f"{said} ({time.monotonic() - started:.1f}s)\n")
        for i, name in enumerate(step.attach, len(step.collect) + 1):
            out.write(f"  [{i}/{total}] work/{name}\n")
            shutil.copyfile(workdir / "work" / name, staging / name)
        with contextlib.suppress(LbsyncError, OSError):
            haproxy = ".".join(map(str, RuntimeAPI(track.runtime, timeout=2).version()))
        files = {str(p.relative_to(staging)): sha256(p)
                 for p in sorted(staging.rglob("*")) if p.is_file()}
        manifest = {
            "lab_version": lab.version, "task": step.task, "step": step.name,
            "track": track.name, "stack": track.describe(),
            "collected_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": versions(track, haproxy), "collectors": list(step.collect),
            "attached": list(step.attach), "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(staging, 0o755)
        _replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made_parent:  # leave the lab folder exactly as it was
            with contextlib.suppress(OSError):
                final.parent.rmdir()
        raise
    out.write(f"collected {len(files)} files, {MANIFEST} written: {final}\n")
    return final


def _replace_dir(new: Path, final: Path) -> None:
    """Put `new` where `final` is, so that a reader finds the old step or the new one."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def init(workdir: Path, template_text: str, report_text: str) -> list[Path]:
    """A student's lab folder: report.md, logs/, work/haproxy.cfg.j2; never overwrites."""
    if (workdir / MARKER).exists():
        raise LabError(f"{workdir} is a lab folder already")
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise LabError(f"{workdir} exists and is not an empty folder: pick a new folder")
    made = []
    for sub in ("logs", "work"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    for path, text in ((workdir / "report.md", report_text),
                       (workdir / "work" / "haproxy.cfg.j2", template_text)):
        path.write_text(text, encoding="utf-8")
        made.append(path)
    (workdir / MARKER).write_text(json.dumps({"created_utc": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    return made
