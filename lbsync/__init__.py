"""lbsync: keep HAProxy in step with a Serf gossip cluster, without reloads."""

import sys

__version__ = "0.1.0"


def self_command() -> list[str]:
    """How a child process runs this same lbsync: this interpreter, with the current
    folder kept off sys.path (-P), so that a source checkout there cannot shadow the
    installed package (a plain `python -m lbsync` in a checkout imports the tree)."""
    return [sys.executable, "-P", "-m", "lbsync"]
