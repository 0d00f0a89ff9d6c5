"""HAProxy for the rig: a master-worker process the caller owns, and waiting for it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import IO

from lbsync.haproxy.binary import find_binary
from lbsync.haproxy.runtime import RuntimeAPI, RuntimeAPIError


def master_argv(config: str | os.PathLike[str], master_socket: str | os.PathLike[str], *,
                binary: str = "haproxy") -> list[str]:
    """HAProxy in master-worker mode, in the foreground, with its master CLI socket."""
    return [find_binary(binary), "-W", "-S", os.fspath(master_socket), "-f", os.fspath(config)]


def start_master(
    config: str | os.PathLike[str],
    master_socket: str | os.PathLike[str],
    *,
    pidfile: str | os.PathLike[str] | None = None,
    binary: str = "haproxy",
    output: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start HAProxy in master-worker mode in the foreground.

    Not daemonised (-D), so the caller owns the process: terminating it stops the workers.
    `output` receives both stdout and stderr (HAProxy's startup alerts and log).
    Keyword-only after the socket: a binary's path passed as the third positional argument
    used to land in `pidfile`, and HAProxy (-p) overwrote the binary with its pid.
    """
    args = master_argv(config, master_socket, binary=binary)
    if pidfile is not None:
        args += ["-p", os.fspath(pidfile)]
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        # Keep a terminal's Ctrl-C away from it; the owner stops it.
        start_new_session=True,
    )


def wait_ready(runtime: RuntimeAPI, timeout: float = 10.0) -> None:
    """Wait until the socket answers `show info`; RuntimeAPIError with the last reason."""
    deadline = time.monotonic() + timeout
    for delay in _backoff():
        try:
            runtime.version()
            return
        except RuntimeAPIError as exc:
            if time.monotonic() + delay > deadline:
                raise RuntimeAPIError(
                    f"HAProxy runtime API at {runtime.address.text} not ready after "
                    f"{timeout:g}s: {exc}"
                ) from None
        time.sleep(delay)


def _backoff() -> Iterator[float]:
    delay = 0.02
    while True:
        yield delay
        delay = min(delay * 2, 0.25)
