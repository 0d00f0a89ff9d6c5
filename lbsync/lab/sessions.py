"""`lbsync lab sessions`: hold WAMP sessions through HAProxy and say which ones the fleet
cut, when, and where each client got back in (task 7: a node leaving with open sessions).

Each client joins, stays joined until the end, and reconnects at once when the server side
closes its session. Lines are printed as things happen, then a summary line that the task
page reads.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from ..edge.probe import _import_autobahn, served_by


@dataclass
class Tally:
    out: TextIO
    started: float = field(default_factory=time.monotonic)
    joined: int = 0
    cut: Counter[str] = field(default_factory=Counter)
    rejoined: int = 0
    failed_connects: int = 0

    def say(self, text: str) -> None:
        self.out.write(f"{time.monotonic() - self.started:6.1f}s {text}\n")
        self.out.flush()


def hold_sessions(url: str, realm: str, count: int, seconds: float,
                  out: TextIO = sys.stdout) -> Tally:
    _import_autobahn()
    # Autobahn logs every cut session as a warning; the tally already says it, once.
    for name in ("autobahn", f"{__name__}.Held"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    tally = Tally(out)
    out.write(f"sessions: {count} through {url} (realm {realm}) for {seconds:g}s\n")
    asyncio.run(_hold_all(url, realm, count, seconds, tally))
    nodes = ", ".join(f"{n}: {k}" for n, k in sorted(tally.cut.items())) or "none"
    out.write(f"summary: {count} clients, {tally.joined} joins, {sum(tally.cut.values())} "
              f"sessions closed by the server ({nodes}), {tally.rejoined} rejoined, "
              f"{tally.failed_connects} failed connects\n")
    return tally


async def _hold_all(url: str, realm: str, count: int, seconds: float, tally: Tally) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(*(_client(i + 1, url, realm, deadline, tally) for i in range(count)))


async def _client(index: int, url: str, realm: str, deadline: float, tally: Tally) -> None:
    from autobahn.asyncio.wamp import ApplicationSession
    from autobahn.asyncio.websocket import WampWebSocketClientFactory
    from autobahn.wamp.types import ComponentConfig, SessionDetails
    from autobahn.websocket.util import parse_url

    class Held(ApplicationSession):
        """Resolves extra["joined"] on join and extra["gone"] when the connection ends."""

        def onJoin(self, details: SessionDetails) -> None:  # noqa: N802 (autobahn's)
            if not self.config.extra["joined"].done():
                self.config.extra["joined"].set_result(details)

        def onDisconnect(self) -> None:  # noqa: N802
            joined, gone = self.config.extra["joined"], self.config.extra["gone"]
            if not joined.done():  # awaited: the connect loop retries
                joined.set_exception(ConnectionError("connection closed before the join"))
            if not gone.done():
                gone.set_result(None)

    loop = asyncio.get_running_loop()
    is_secure, host, port = parse_url(url)[:3]
    cut_before = False
    while loop.time() < deadline:
        joined: asyncio.Future[SessionDetails] = loop.create_future()
        gone: asyncio.Future[None] = loop.create_future()
        session = Held(ComponentConfig(  # type: ignore[no-untyped-call]
            realm=realm, extra={"joined": joined, "gone": gone}))
        factory = WampWebSocketClientFactory(session, url=url)  # type: ignore[no-untyped-call]
        try:
            transport, _ = await asyncio.wait_for(loop.create_connection(
                factory, host, port, ssl=True if is_secure else None), 5)
            details = await asyncio.wait_for(joined, 5)
        except (OSError, TimeoutError, ConnectionError) as e:
            tally.failed_connects += 1
            tally.say(f"client {index}: connect failed ({e or type(e).__name__}), retrying")
            await asyncio.sleep(0.5)
            continue
        node = served_by(details.authextra)[0] or "?"
        tally.joined += 1
        if cut_before:
            tally.rejoined += 1
        tally.say(f"client {index}: {'rejoined' if cut_before else 'joined'} on {node}")
        since = loop.time()
        try:
            await asyncio.wait_for(asyncio.shield(gone), max(deadline - loop.time(), 0.01))
        except TimeoutError:  # the end of the run: leave cleanly
            if session.is_attached():
                session.leave()
                await asyncio.sleep(0.05)
            transport.close()
            return
        tally.cut[node] += 1
        cut_before = True
        tally.say(f"client {index}: session on {node} closed by the server after "
                  f"{loop.time() - since:.1f}s; reconnecting")
