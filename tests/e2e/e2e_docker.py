"""What the Docker end-to-end modules share: commands, waiting, the prepared engine, and
what the lb container says (test_compose.py, test_swarm.py)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cluster_rig import NOT_YET

from tests.rig.procs import wait_for

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = "http://127.0.0.1:8080"
NODE_UP = 180.0  # Crossbar nodes starting side by side on 2 cores take a while


class CommandFailed(AssertionError):
    """A command `run` checked exited non-zero: the test fails, or, inside `wait`, not yet."""


def wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    """cluster_rig.wait, where a failing command of `run` (docker exec of a service that is
    still starting, say) also means "not yet"."""
    wait_for(cond, timeout, what, 0.2, retry_on=(*NOT_YET, CommandFailed))


def run(*cmd: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=env, input=input, check=False)
    if check and r.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited {r.returncode}:\n"
                             f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60,
                          check=False).returncode == 0




def node_in_info(html: str) -> str:
    m = re.search(r"<h1>node ([^<]+)</h1>", html)
    assert m, f"no node name in /info: {html[:200]!r}"
    return m.group(1)


def assert_every_node_serves(frontend: str, names: set[str], tries: int = 60) -> None:
    """GET /info through HAProxy until every node has answered once (all answers 200)."""
    seen: set[str] = set()
    for _ in range(tries):
        r = requests.get(f"{frontend}/info", timeout=5)
        assert r.status_code == 200
        seen.add(node_in_info(r.text))
        if seen == names:
            break
    assert seen == names


def wait_links_up(exec_in: Callable[..., subprocess.CompletedProcess[str]],
                  nodes: dict[str, str]) -> dict[str, str]:
    """Wait until every node's router links are up (`lbsync links --check` in it); return
    each container's `lbsync links` table."""
    tables = {}
    for cid, name in nodes.items():
        wait(lambda cid=cid: exec_in(cid, "lbsync", "links", "--check",
                                     check=False).returncode == 0, 60,
             f"{name}'s router links up")
        tables[cid] = exec_in(cid, "lbsync", "links").stdout
    return tables


def assert_one_realm(ws_url: str, sessions: int) -> None:
    """`lbsync probe` with SESSIONS sessions at once through HAProxy: they land on as many
    nodes, and every one calls the others and gets their events exactly once."""
    probe = subprocess.run([sys.executable, "-m", "lbsync", "probe", *[ws_url] * sessions],
                           capture_output=True, text=True, timeout=120, check=False)
    print(probe.stdout)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert f"ok: {sessions} sessions on {sessions} node(s) are one realm" in probe.stdout


CONTROL_DONE = "=== control done"


def http_info(host: str, port: int) -> str:
    """A shell line for a probe container: GET /info from HOST:PORT with nc, the positive
    control run before a negative check (then `after_control` reads the output)."""
    return (f'printf "GET /info HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {host} {port}; '
            f'echo "{CONTROL_DONE}"')


def after_control(probe: subprocess.CompletedProcess[str]) -> str:
    """What a probe printed after its `http_info` control, once the control reached the
    frontend: a probe that fails for any other reason (no image, no network, no nc) would
    pass the negative check as well, and proves nothing."""
    out = probe.stdout + probe.stderr
    control, done, rest = probe.stdout.partition(CONTROL_DONE)
    status = control.split("\n", 1)[0]
    assert done and status.startswith("HTTP/1.") and " 200 " in status, out
    assert "<h1>node " in control, out
    return rest


def parse_show_proc(out: str) -> tuple[int, list[str]]:
    """The master's reload count and its workers' pids, from the master CLI's `show proc`."""
    reloads, workers = -1, []
    for line in out.splitlines():
        f = line.split()
        if len(f) > 2 and f[1] == "master":
            reloads = int(f[2])
        elif len(f) > 2 and f[1] == "worker":
            workers.append(f[0])
    assert reloads >= 0, f"no master line in show proc: {out!r}"
    return reloads, workers


SHOW_PROC = 'echo "show proc" | nc -U -w 3 "$LBSYNC_MASTER_SOCKET"'


def logs(cid: str, since: str | None = None) -> str:
    r = run("docker", "logs", *(["--since", since] if since else []), cid)
    return r.stdout + r.stderr


def utc_now() -> str:
    return run("date", "-u", "+%Y-%m-%dT%H:%M:%S").stdout.strip()


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


@contextlib.contextmanager
def prepared_engine() -> Iterator[None]:
    """scripts/docker-prepare.sh: an engine that answers, with lbsync-lb and lbsync-node
    built; a dockerd it started is stopped at the end.

    Only a run that asked for the e2e tests gets here (conftest.py skips them otherwise),
    so when Docker cannot be prepared they fail, with the reason, rather than skip."""
    was_up = engine_answers()
    if not was_up and os.geteuid() != 0:
        pytest.fail("no Docker engine answers, and only root can install and start one")
    pid_file = ROOT / ".cache" / "dockerd.pid"
    if not was_up:
        pid_file.unlink(missing_ok=True)
    t0 = time.monotonic()
    prep = subprocess.run(["bash", "scripts/docker-prepare.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800, check=False)
    started_dockerd = not was_up and pid_file.exists()
    try:
        if prep.returncode != 0:
            tail = (prep.stdout + prep.stderr)[-3000:]
            pytest.fail(f"scripts/docker-prepare.sh failed (exit {prep.returncode}):\n{tail}")
        print(f"\ndocker-prepare: {time.monotonic() - t0:.0f}s\n{prep.stderr}")
        yield
    finally:
        if started_dockerd:
            _stop_dockerd(pid_file)
