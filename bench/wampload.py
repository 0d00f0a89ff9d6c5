"""WAMP load for the benchmark: autobahn clients holding sessions through HAProxy.

    python -m bench.wampload --url ws://127.201.0.1:8080/ws --held 10 --rotating 20 \\
        --out wamp.json          # runs until SIGTERM/SIGINT, then writes --out
    python -m bench.wampload --url wss://127.201.0.1:8443/ws --cafile ca.pem ...
                                 # over TLS, the server's certificate verified with ca.pem

With --progress FILE it also keeps FILE up to date (every 0.25 s) with the counts so far,
so a test can wait for a state instead of sleeping.

Two kinds of client, all in one asyncio process:
- held: one session for the whole run. Whatever happens to the cluster, a held session
  on a node that stays must never end (a drop is a failure);
- rotating: a session lives a random ROTATE_MIN..ROTATE_MAX seconds, leaves with GOODBYE
  and opens the next one, so new sessions keep landing on the members that join, and
  members that leave hold sessions when they go.
Every client registers its own echo procedure and calls it every --call-interval seconds
(a round trip client -> HAProxy -> Crossbar proxy worker -> router -> client). A session
that ends without our GOODBYE is a drop (its node, reason and age are kept); the client
opens a new one at once, and the gap is the reconnect time. A connect or join that fails
within --timeout is a connect failure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import random
import signal
import ssl
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autobahn.asyncio.wamp import ApplicationSession
from autobahn.asyncio.websocket import WampWebSocketClientFactory
from autobahn.wamp.types import CloseDetails, ComponentConfig, SessionDetails
from autobahn.websocket.util import parse_url

from bench.common import pct

ROTATE_MIN, ROTATE_MAX = 2.0, 6.0


@dataclass
class Record:
    started: float = field(default_factory=time.time)
    opened: list[dict[str, Any]] = field(default_factory=list)
    closed: int = 0  # sessions we ended with GOODBYE
    drops: list[dict[str, Any]] = field(default_factory=list)
    connect_failures: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[float, float]] = field(default_factory=list)  # (time, latency ms)
    call_failures: list[dict[str, Any]] = field(default_factory=list)
    reconnect_s: list[float] = field(default_factory=list)
    alive: list[tuple[float, int]] = field(default_factory=list)


class _Session(ApplicationSession):
    """Resolves `joined` on WELCOME and `ended` (with a reason) when the session ends."""

    def __init__(self, config: ComponentConfig, joined: asyncio.Future[SessionDetails],
                 ended: asyncio.Future[str]) -> None:
        super().__init__(config)
        self.joined, self.ended = joined, ended

    def onJoin(self, details: SessionDetails) -> None:  # noqa: N802 (autobahn's names)
        if not self.joined.done():
            self.joined.set_result(details)

    def onLeave(self, details: CloseDetails) -> None:  # noqa: N802
        self._end(f"{details.reason} {details.message or ''}".strip())
        super().onLeave(details)

    def onDisconnect(self) -> None:  # noqa: N802
        self._end("connection lost")

    def _end(self, reason: str) -> None:
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(reason))
        if not self.ended.done():
            self.ended.set_result(reason)


def tls_context(url: str, cafile: Path | None) -> ssl.SSLContext | None:
    """The client's TLS context: None for ws://; for wss:// one that verifies the server's
    certificate and name, against `cafile` when given (else the system's CAs)."""
    secure = parse_url(url)[0]
    if not secure:
        if cafile is not None:
            raise ValueError(f"--cafile is for wss:// URLs, not {url}")
        return None
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


def progress(rec: Record, alive: int) -> dict[str, int]:
    """The counts so far: what --progress writes."""
    return {"alive": alive, "opened": len(rec.opened), "closed": rec.closed,
            "drops": len(rec.drops), "reconnects": len(rec.reconnect_s),
            "calls": len(rec.calls), "call_failures": len(rec.call_failures)}


class Load:
    def __init__(self, url: str, realm: str, interval: float, timeout: float,
                 sticky: bool = False, progress_file: Path | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.url, self.realm, self.interval, self.timeout = url, realm, interval, timeout
        self.tls = tls
        self.sticky = sticky
        self.cookies: dict[int, str] = {}  # client -> the SERVERID cookie HAProxy gave it
        self.rec = Record()
        self.stopping = asyncio.Event()
        self.alive = 0
        self.progress_file = progress_file
        self._serial = itertools.count()

    async def open(self, cid: int) -> tuple[_Session, asyncio.Future[str], Any, str | None]:
        loop = asyncio.get_running_loop()
        joined: asyncio.Future[SessionDetails] = loop.create_future()
        ended: asyncio.Future[str] = loop.create_future()
        session = _Session(ComponentConfig(realm=self.realm), joined, ended)  # type: ignore[no-untyped-call]
        _, host, port = parse_url(self.url)[:3]
        # --sticky: a client sends back the cookie HAProxy set on its first upgrade, as a
        # browser does, so its reconnects ask for the same node.
        headers = {"Cookie": self.cookies[cid]} if cid in self.cookies else None
        factory = WampWebSocketClientFactory(session, url=self.url, headers=headers)  # type: ignore[no-untyped-call]
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(factory, host, port, ssl=self.tls), self.timeout)
        try:
            details = await asyncio.wait_for(joined, self.timeout)
        except BaseException:
            transport.close()
            raise
        if self.sticky:
            cookie = (getattr(protocol, "http_headers", None) or {}).get("set-cookie")
            if cookie:
                self.cookies[cid] = cookie.split(";")[0]
        return session, ended, transport, (details.authextra or {}).get("x_cb_node")

    async def client(self, cid: int, held: bool) -> None:
        kind = "held" if held else "rotating"
        dropped_at: float | None = None
        while not self.stopping.is_set():
            t = time.time()
            try:
                session, ended, transport, node = await self.open(cid)
            except (OSError, TimeoutError, ConnectionError) as e:
                self.rec.connect_failures.append(
                    {"t": t, "client": cid, "kind": kind, "reason": str(e) or type(e).__name__})
                await asyncio.sleep(0.2)
                continue
            now = time.time()
            if dropped_at is not None:
                self.rec.reconnect_s.append(now - dropped_at)
                dropped_at = None
            # t_connect: when the client asked, which is when HAProxy chose the server;
            # t: when the session was open, which a busy machine can delay by a second.
            self.rec.opened.append({"t": now, "t_connect": t, "client": cid, "kind": kind,
                                    "node": node, "cookie": cid in self.cookies})
            self.alive += 1
            try:
                reason = await self._use(session, ended, cid, node, held)
            finally:
                self.alive -= 1
            if reason is None:  # we said GOODBYE
                self.rec.closed += 1
            else:
                dropped_at = time.time()
                self.rec.drops.append({"t": dropped_at, "client": cid, "kind": kind,
                                       "node": node, "reason": reason,
                                       "age_s": round(dropped_at - now, 2)})
            transport.close()

    async def _use(self, session: _Session, ended: asyncio.Future[str], cid: int,
                   node: str | None, held: bool) -> str | None:
        """Call the echo procedure until the session's time is up (None: we left) or the
        session ends under us (its reason)."""
        proc = f"bench.c{cid}.s{next(self._serial)}.echo"
        lifetime = float("inf") if held else random.uniform(ROTATE_MIN, ROTATE_MAX)
        until = time.monotonic() + lifetime
        try:
            await asyncio.wait_for(session.register(lambda x: x, proc), self.timeout)
            while not self.stopping.is_set() and time.monotonic() < until:
                if ended.done():
                    return ended.result()
                t0 = time.time()
                try:
                    await asyncio.wait_for(session.call(proc, cid), self.timeout)
                    self.rec.calls.append((t0, 1000 * (time.time() - t0)))
                except Exception as e:  # noqa: BLE001 (a failed call of any kind is counted)
                    if ended.done():
                        return ended.result()
                    self.rec.call_failures.append({"t": t0, "client": cid, "node": node,
                                                   "reason": repr(e)[:200]})
                stop: asyncio.Future[Any] = asyncio.ensure_future(self.stopping.wait())
                await asyncio.wait([ended, stop], timeout=self.interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
        except Exception:  # noqa: BLE001 (register failed because the session went)
            if ended.done():
                return ended.result()
            raise
        if ended.done():
            return ended.result()
        session.leave()
        await asyncio.wait([ended], timeout=2.0)
        return None

    async def sample(self) -> None:
        while not self.stopping.is_set():
            self.rec.alive.append((time.time(), self.alive))
            if self.progress_file is not None:
                tmp = self.progress_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(progress(self.rec, self.alive)) + "\n")
                tmp.replace(self.progress_file)  # a reader never sees half a file
            await asyncio.sleep(0.25)

    async def run(self, held: int, rotating: int) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        tasks = [asyncio.create_task(self.client(i, i < held)) for i in range(held + rotating)]
        tasks.append(asyncio.create_task(self.sample()))
        await self.stopping.wait()
        await asyncio.wait(tasks, timeout=5.0)


def _pct(values: list[float], p: float) -> float | None:
    return round(pct(values, p), 2) if values else None


def summary(rec: Record, args: argparse.Namespace) -> dict[str, Any]:
    latencies = [ms for _, ms in rec.calls]
    nodes: dict[str, int] = {}
    for o in rec.opened:
        nodes[str(o["node"])] = nodes.get(str(o["node"]), 0) + 1
    return {
        "url": args.url, "held": args.held, "rotating": args.rotating,
        "rotate_s": [ROTATE_MIN, ROTATE_MAX], "call_interval_s": args.call_interval,
        "started": rec.started, "stopped": time.time(),
        "sessions_opened": len(rec.opened), "sessions_closed_by_client": rec.closed,
        "opened": [{k: (round(v, 2) if k in ("t", "t_connect") else v) for k, v in o.items()}
                   for o in rec.opened],
        "sessions_per_node": nodes,
        "drops": rec.drops, "drops_held": sum(d["kind"] == "held" for d in rec.drops),
        "drops_rotating": sum(d["kind"] == "rotating" for d in rec.drops),
        "connect_failures": rec.connect_failures,
        "calls": {"ok": len(rec.calls), "failed": len(rec.call_failures),
                  "latency_ms": {"p50": round(statistics.median(latencies), 2)
                                 if latencies else None,
                                 "p99": _pct(latencies, 99), "max": _pct(latencies, 100)}},
        "call_failures": rec.call_failures[:200],
        "reconnect_s": {"n": len(rec.reconnect_s), "p50": _pct(rec.reconnect_s, 50),
                        "max": _pct(rec.reconnect_s, 100)},
        "alive": [(round(t, 2), n) for t, n in rec.alive],
        "call_times": [round(t, 2) for t, _ in rec.calls],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True,
                   help="ws://HOST:PORT/ws or wss://HOST:PORT/ws (HAProxy's frontend)")
    p.add_argument("--cafile", type=Path,
                   help="wss://: the CA (PEM) that verifies the server's certificate")
    p.add_argument("--realm", default="realm1")
    p.add_argument("--held", type=int, default=10, help="clients holding one session")
    p.add_argument("--rotating", type=int, default=20, help="clients renewing sessions")
    p.add_argument("--call-interval", type=float, default=0.5, help="seconds between calls")
    p.add_argument("--timeout", type=float, default=5.0, help="connect/join/call timeout (s)")
    p.add_argument("--sticky", action="store_true",
                   help="clients send back HAProxy's SERVERID cookie when they reconnect")
    p.add_argument("--out", type=Path, required=True, help="JSON written at the end")
    p.add_argument("--progress", type=Path, help="JSON of the counts so far, kept up to date")
    args = p.parse_args()
    if args.held < 0 or args.rotating < 0 or args.held + args.rotating == 0:
        p.error("--held and --rotating must be >= 0, and not both 0")
    try:
        tls = tls_context(args.url, args.cafile)
    except (ValueError, OSError, ssl.SSLError) as e:
        p.error(str(e))
    for name in ("autobahn", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    load = Load(args.url, args.realm, args.call_interval, args.timeout, args.sticky,
                args.progress, tls)
    asyncio.run(load.run(args.held, args.rotating))
    args.out.write_text(json.dumps(summary(load.rec, args)) + "\n")


if __name__ == "__main__":
    main()
