"""Process helpers of the tests and the benchmark: wait for a condition, a free port, reap."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

from lbsync.model import LbsyncError


class StackError(LbsyncError):
    """A process of the rig did not start or did not reach the state asked for."""


# What wait_for takes for "not yet" unless told: a socket still starting (OSError), a
# client of lbsync that cannot reach its server yet (an LbsyncError).
RETRY_ON: tuple[type[Exception], ...] = (LbsyncError, OSError)


# Callable[..., object]: a check may be a lambda with defaults (`lambda n=name: ...`), which
# binds a loop's variable; wait_for calls it without arguments.
def wait_for(check: Callable[..., object], timeout: float, what: str,
             interval: float = 0.05, *,
             retry_on: tuple[type[Exception], ...] = RETRY_ON) -> float:
    """Poll `check()` until true; returns the seconds it took, or raises StackError.

    An exception of `retry_on` from `check` means "not yet"; the last one is named in the
    timeout's message and chained to it. Any other exception propagates at once.
    """
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except retry_on as e:
            last = e
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:g}s waiting for {what}"
                     + (f" (last error: {last})" if last else "")) from last


def free_port(ip: str = "127.0.0.1", *, udp_too: bool = False) -> int:
    """A port free on `ip` now, for TCP (and UDP too when asked: Serf's gossip uses both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind((ip, 0))
            port: int = tcp.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((ip, port))
                except OSError:
                    continue
                return port
    raise StackError(f"no free port on {ip}")


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """`sig` to the process group the process leads, or to the process alone when it leads
    none (started without start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, SIGKILL it when it does not go within `timeout` s.

    For processes started with start_new_session=True (the pid is the group's); one that
    leads no group gets the signals alone. Whatever the leader leaves in its group (workers
    that outlive a controller killed mid-start) is SIGKILLed at the end, so nothing of a
    test outlives it."""
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def reap_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """`reap` for many at once: SIGTERM every group, then wait `timeout` s in all (not per
    process) before SIGKILL. Stopping 500 members one by one took over 10 minutes under
    the load they make."""
    for proc in procs:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group at once (a crash) and wait for it."""
    if proc.poll() is None:
        _signal(proc, signal.SIGKILL)
        proc.wait()
