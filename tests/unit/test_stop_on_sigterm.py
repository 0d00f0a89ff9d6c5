"""A stopped `lbsync lab collect` stops the benchmark it runs, and lets it clean up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.rig.procs import wait_for

# The benchmark's stand-in: SIGTERM unwinds it (lbsync.stop_on_sigterm), its `finally`
# marks that it cleaned up, as bench.run's parts stop their stacks.
CHILD = """
import sys, time
from pathlib import Path
from lbsync import stop_on_sigterm
stop_on_sigterm()
d = Path(sys.argv[1])
try:
    (d / "child-ready").write_text("")
    time.sleep(60)
finally:
    (d / "child-cleaned").write_text("")
"""

# `lbsync lab collect`'s side: it runs the child through lab.tracks.run.
PARENT = """
import sys
from pathlib import Path
from lbsync import stop_on_sigterm
from lbsync.lab.tracks import run
stop_on_sigterm()
d = Path(sys.argv[1])
try:
    run([sys.executable, "-c", sys.argv[2], str(d)], timeout=60)
finally:
    (d / "parent-unwound").write_text("")
"""


def test_sigterm_to_the_collector_reaches_the_benchmark_and_it_cleans_up(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), CHILD],
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        wait_for(lambda: (tmp_path / "child-ready").exists(), 30, "the child to start")
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 128 + signal.SIGTERM
    finally:
        if parent.poll() is None:
            parent.kill()
    assert (tmp_path / "child-cleaned").exists(), "the benchmark was killed, not stopped"
    assert (tmp_path / "parent-unwound").exists()
