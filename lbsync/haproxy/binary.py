"""The haproxy executable: its version and config checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from lbsync.model import LbsyncError

from .runtime import parse_version

_CHECK_TIMEOUT = 60.0  # large configs with many certificates take a while to load


class ConfigInvalid(LbsyncError):
    """`haproxy -c` rejected a configuration; `alerts` holds HAProxy's own complaints."""

    def __init__(self, path: str, alerts: list[str]):
        super().__init__(f"HAProxy rejects {path}: {'; '.join(alerts)}")
        self.path = path
        self.alerts = alerts


def find_binary(binary: str = "haproxy") -> str:
    """The absolute path of `binary`; LbsyncError when it is not there."""
    found = shutil.which(binary)
    if found is None:
        raise LbsyncError(f"haproxy binary {binary!r} not found on PATH")
    return found


def haproxy_version(binary: str = "haproxy") -> tuple[int, int, int]:
    """(major, minor, patch) of the executable, from `haproxy -v`."""
    result = _run([find_binary(binary), "-v"], timeout=10.0)
    try:
        return parse_version(result.stdout + result.stderr)
    except ValueError as exc:
        raise LbsyncError(f"cannot tell the version of {binary!r}: {exc}") from None


def check_haproxy_config(path: str | os.PathLike[str], binary: str = "haproxy") -> None:
    """Run `haproxy -c -f path`; ConfigInvalid with HAProxy's [ALERT] lines when it fails."""
    result = _run([find_binary(binary), "-c", "-f", os.fspath(path)], timeout=_CHECK_TIMEOUT)
    if result.returncode < 0:
        raise LbsyncError(f"haproxy -c on {os.fspath(path)} was killed by signal "
                          f"{-result.returncode}")
    if result.returncode != 0:
        raise ConfigInvalid(os.fspath(path), config_alerts(result.stdout + result.stderr))


# "[ALERT]    (1234) : config : parsing [x.cfg:3] : ..." on 2.4+; older versions print a
# date instead of the pid, and some alerts have no "config :" context.
_ALERT = re.compile(r"^\[ALERT\]\s*(?:\([^)]*\)|\S+)?\s*:\s*(?:config\s*:\s*)?(?P<msg>.*)$")
# Summary lines that repeat what the specific alerts already said.
_NOISE = re.compile(
    r"^(Error\(s\) found in configuration file|Fatal errors found in configuration"
    r"|Configuration file has no error)"
)


def config_alerts(output: str) -> list[str]:
    """HAProxy's specific [ALERT] messages from `haproxy -c` output, summaries dropped.

    Falls back to the last lines of output when there is no [ALERT] (a crash, a usage error).
    """
    alerts: list[str] = []
    for line in output.splitlines():
        match = _ALERT.match(line.strip())
        if match and match["msg"].strip() and not _NOISE.match(match["msg"].strip()):
            alerts.append(match["msg"].strip())
    if alerts:
        return alerts
    tail = [line.strip() for line in output.splitlines() if line.strip()][-3:]
    return tail or ["haproxy -c failed without saying why"]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        # Own session: a supervisor's SIGTERM to lbsync's process group must not kill a
        # check half-way, which would read as HAProxy rejecting the config.
        return subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise LbsyncError(f"'{' '.join(args)}' did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise LbsyncError(f"cannot run {args[0]}: {exc.strerror or exc}") from None
