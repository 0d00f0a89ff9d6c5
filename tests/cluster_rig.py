"""What the tests of the local cluster share: running `lbsync`, and waiting for the world.

(tests/ is on pytest's pythonpath, like loadgen.py.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from lbsync.cluster.local import Layout, leftovers
from lbsync.haproxy.runtime import RuntimeAPIError
from lbsync.serf.rpc import SerfError
from tests.rig.procs import wait_for

CROSSBAR = Path(sys.executable).parent / "crossbar"
# The marks of a module that starts the local cluster.
NEEDS_CLUSTER = [
    pytest.mark.integration,
    pytest.mark.skipif(not (shutil.which("haproxy") and shutil.which("serf")
                            and CROSSBAR.exists()),
                       reason="needs haproxy, serf and the edge extra (crossbar)"),
]


def why_no_crossbar() -> str | None:
    """Why Crossbar cannot run here (the edge extra missing, its binary failing), or None.
    Takes seconds (`crossbar version`): call it from a module-scoped fixture."""
    if importlib.util.find_spec("crossbar") is None or importlib.util.find_spec("autobahn") is None:
        return "crossbar/autobahn are not installed (pip install 'lbsync[edge]')"
    if not CROSSBAR.is_file():
        return f"no crossbar binary at {CROSSBAR}"
    r = subprocess.run([str(CROSSBAR), "version"], capture_output=True, timeout=60, check=False)
    if r.returncode != 0:
        return f"`crossbar version` failed: {r.stderr.decode(errors='replace')[-300:]}"
    return None


def lbsync(*args: str, timeout: float = 300, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m lbsync ARGS` as a user would run it; ENV is the whole environment."""
    return subprocess.run([sys.executable, "-m", "lbsync", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=cwd, env=env)


# What a check may raise while the world is still settling: a refused, reset or timed-out
# connection (OSError, requests' errors included), a missing file, a Serf or HAProxy client
# that cannot reach its agent yet, a command that fails until the thing is ready. Anything
# else (a KeyError, a failed assert, a TypeError) is a failure of the test, raised at once;
# a timeout is tests.rig.procs.StackError.
NOT_YET: tuple[type[Exception], ...] = (
    OSError, SerfError, RuntimeAPIError, subprocess.CalledProcessError)


def wait(cond: Callable[[], object], timeout: float, what: str) -> float:
    """tests.rig.procs.wait_for every 0.2 s, with the cluster's NOT_YET."""
    return wait_for(cond, timeout, what, 0.2, retry_on=NOT_YET)


def stop_cluster(layout: Layout) -> None:
    """`lbsync down`, then kill whatever a failed test left of the cluster."""
    lbsync("down", "--dir", str(layout.dir))
    for p in leftovers(layout):
        with contextlib.suppress(psutil.Error):
            p.kill()
