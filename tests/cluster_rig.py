"""What the tests of the local cluster share: running `lbsync`, and waiting for the world.

(tests/ is on pytest's pythonpath, like loadgen.py.)
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from lbsync.cluster.local import Layout, leftovers

CROSSBAR = Path(sys.executable).parent / "crossbar"
# The marks of a module that starts the local cluster.
NEEDS_CLUSTER = [
    pytest.mark.integration,
    pytest.mark.skipif(not (shutil.which("haproxy") and shutil.which("serf")
                            and CROSSBAR.exists()),
                       reason="needs haproxy, serf and the edge extra (crossbar)"),
]


def lbsync(*args: str, timeout: float = 300, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m lbsync ARGS` as a user would run it; ENV is the whole environment."""
    return subprocess.run([sys.executable, "-m", "lbsync", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=cwd, env=env)


def wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Call COND every 0.2 s until it is true; an exception means "not yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception as e:  # noqa: BLE001 (the world is still settling)
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f" ({last!r})" if last else ""))


def stop_cluster(layout: Layout) -> None:
    """`lbsync down`, then kill whatever a failed test left of the cluster."""
    lbsync("down", "--dir", str(layout.dir))
    for p in leftovers(layout):
        with contextlib.suppress(psutil.Error):
            p.kill()
