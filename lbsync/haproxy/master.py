"""The master CLI of HAProxy in master-worker mode (-W -S): reloads and process status.

`reload` answers differently across versions. 2.6 re-executes the master, which drops
the connection without a word; success or failure then only shows in `show proc` (the
reload counter moves, and "failed: N" grows on failure, back to 0 on success). 3.x
answers "Success=1" or "Success=0" followed by the startup log. Both are handled, and
`reload` returns only once the master has finished loading the new configuration.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .runtime import CLISession, RuntimeAPIError, parse_address


class ReloadFailed(RuntimeAPIError):
    """The master could not load the new configuration; the old workers keep serving."""


@dataclass(frozen=True)
class ProcStatus:
    """`show proc` on the master CLI."""

    master_pid: int
    reloads: int
    failed_reloads: int
    workers: tuple[int, ...]  # current workers
    old_workers: tuple[int, ...] = ()  # still finishing connections from before a reload


_MASTER_LINE = re.compile(r"^(\d+)\s+master\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?")
_PROC_LINE = re.compile(r"^(\d+)\s+worker\b")


def parse_proc(text: str) -> ProcStatus:
    """A ProcStatus from `show proc`; ValueError when there is no master line."""
    master: re.Match[str] | None = None
    workers: list[int] = []
    old: list[int] = []
    section = "workers"
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            # "# workers", "# old workers", "# programs"; the header starts with "#<PID>".
            section = line.lstrip("# ").lower()
            continue
        if master is None and (match := _MASTER_LINE.match(line)):
            master = match
        elif proc := _PROC_LINE.match(line):
            (old if section.startswith("old") else workers).append(int(proc[1]))
    if master is None:
        raise ValueError(f"no master line in show proc: {text.strip()[:80]!r}")
    return ProcStatus(
        master_pid=int(master[1]),
        reloads=int(master[2]),
        failed_reloads=int(master[3] or 0),
        workers=tuple(workers),
        old_workers=tuple(old),
    )


_STATUS = re.compile(r"^Success=(\d)", re.MULTILINE)


class MasterCLI:
    """The master socket given to `haproxy -W -S PATH` (a unix path or HOST:PORT)."""

    def __init__(self, path: str, timeout: float = 5.0, reload_timeout: float = 60.0):
        self.address = parse_address(path)
        self.timeout = timeout
        self.reload_timeout = reload_timeout

    def __repr__(self) -> str:
        return f"MasterCLI({self.address.text!r})"

    def show_proc(self) -> str:
        with CLISession(self.address, self.timeout) as session:
            return session.command("show proc")

    def status(self) -> ProcStatus:
        text = self.show_proc()
        try:
            return parse_proc(text)
        except ValueError as exc:
            raise RuntimeAPIError(
                f"unexpected 'show proc' from HAProxy master at {self.address.text}: {exc}"
            ) from None

    def reload(self) -> None:
        """Reload and wait until the master has loaded the config; ReloadFailed if it failed."""
        before = self.status()
        with CLISession(self.address, self.timeout) as session:
            answer = session.send_last("reload")
        status = _STATUS.search(answer)
        if status is not None:
            if status[1] != "1":
                raise ReloadFailed(
                    f"HAProxy master at {self.address.text} failed to reload: "
                    f"{_startup_alerts(answer)}"
                )
            return
        if answer.strip():
            raise ReloadFailed(
                f"HAProxy master at {self.address.text} refused 'reload': {answer.strip()[:300]}"
            )
        after = self._wait_reloaded(before.reloads)
        if after.failed_reloads > before.failed_reloads:
            raise ReloadFailed(
                f"HAProxy master at {self.address.text} failed to load the new configuration "
                "(old workers keep serving; run haproxy -c for the reason)"
            )

    def _wait_reloaded(self, reloads_before: int) -> ProcStatus:
        # While the master re-executes, its socket refuses connections; the new master
        # answers only once it has loaded the config and forked the new worker.
        deadline = time.monotonic() + self.reload_timeout
        while True:
            try:
                status = self.status()
                if status.reloads > reloads_before:
                    return status
                problem = f"reload counter still {status.reloads}"
            except RuntimeAPIError as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise RuntimeAPIError(
                    f"HAProxy master at {self.address.text} did not come back from the reload "
                    f"within {self.reload_timeout:g}s: {problem}"
                )
            time.sleep(0.05)


def _startup_alerts(answer: str) -> str:
    alerts = [line.strip() for line in answer.splitlines() if "[ALERT]" in line]
    return "; ".join(alerts) if alerts else answer.strip()[:300]
