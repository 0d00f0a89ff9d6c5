"""lbsync: keep HAProxy in step with a Serf gossip cluster, without reloads."""

import os
import signal
import sys
from pathlib import Path

__version__ = "0.1.0"


def self_command() -> list[str]:
    """How a child process runs this same lbsync: this interpreter, with the current
    folder kept off sys.path (-P), so that a source checkout there cannot shadow the
    installed package (a plain `python -m lbsync` in a checkout imports the tree)."""
    return [sys.executable, "-P", "-m", "lbsync"]


# The source checkout this lbsync runs from, when it does: bench/ lives beside lbsync/ there
# and is not in the wheel.
CHECKOUT = Path(__file__).resolve().parent.parent
BENCH_RUN = CHECKOUT / "bench" / "run.py"


def bench_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """`python -m bench.run ARGS` of the checkout, and the environment it runs in: the
    checkout first on PYTHONPATH, so the bench package and the tests' rig it imports are
    found from any folder (relative paths in ARGS stay the caller's), and the current folder
    kept off sys.path (-P), so that a bench/ or tests/ there cannot shadow them."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT) + (os.pathsep + path if path else "")}
    return [sys.executable, "-P", "-m", "bench.run", *args], env


def stop_on_sigterm() -> None:
    """SIGTERM raises SystemExit in the main thread, so `finally` blocks and `run`'s
    cleanup (lbsync.lab.tracks.run) run instead of the process vanishing with its children
    left behind."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
