"""`lbsync probe URL`: one WAMP round trip, through HAProxy or straight to a node.

Connect, join, register a procedure and call it, subscribe to a topic and publish to it
(acknowledged, not excluding ourselves), then say which node served the session and how
long each round trip took. Crossbar names the node in the WELCOME: `authextra` carries
`x_cb_node` (the controller id), `x_cb_worker` (the router worker) and, through a proxy
worker, `x_cb_proxy_worker`.

Autobahn belongs to the optional `edge` extra, so it is imported inside `probe()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..model import LbsyncError

T = TypeVar("T")
EDGE_EXTRA = "the probe needs the edge extra: pip install 'lbsync[edge]'"


class ProbeError(LbsyncError):
    def __init__(self, url: str, step: str, reason: str) -> None:
        super().__init__(f"probe {url}: {step} failed: {reason}")
        self.step = step


@dataclass(frozen=True)
class ProbeResult:
    url: str
    realm: str
    node: str | None
    worker: str | None  # the router worker that holds the session
    proxy_worker: str | None  # the proxy worker the client is connected to, if any
    join_ms: float
    call_ms: float
    event_ms: float

    def line(self) -> str:
        path = " -> ".join(w for w in (self.proxy_worker, self.worker) if w)
        return (f"{self.url} realm {self.realm}: node {self.node or '?'}"
                f"{f' ({path})' if path else ''}, join {self.join_ms:.1f} ms, "
                f"call {self.call_ms:.1f} ms, publish->event {self.event_ms:.1f} ms")


def served_by(authextra: Mapping[str, Any] | None) -> tuple[str | None, str | None, str | None]:
    """(node, router worker, proxy worker) from the WELCOME's authextra (Crossbar's keys)."""
    extra = authextra or {}

    def text(key: str) -> str | None:
        value = extra.get(key)
        return str(value) if value is not None else None

    return text("x_cb_node"), text("x_cb_worker"), text("x_cb_proxy_worker")


def _import_autobahn() -> None:
    try:
        import autobahn.asyncio.wamp  # noqa: F401
    except ImportError:
        raise LbsyncError(EDGE_EXTRA) from None


def probe(url: str, realm: str = "realm1", timeout: float = 10.0) -> ProbeResult:
    """Run the round trips; ProbeError names the step that failed."""
    _import_autobahn()
    # Autobahn logs each failure as a warning; ProbeError already carries its reason.
    for name in ("autobahn", f"{__name__}.Session"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return asyncio.run(_probe(url, realm, timeout))


class _Closed(Exception):
    """The session ended before it joined."""


async def _probe(url: str, realm: str, timeout: float) -> ProbeResult:
    from autobahn.asyncio.wamp import ApplicationSession
    from autobahn.asyncio.websocket import WampWebSocketClientFactory
    from autobahn.wamp.exception import ApplicationError
    from autobahn.wamp.types import CloseDetails, ComponentConfig, PublishOptions, SessionDetails
    from autobahn.websocket.util import parse_url

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    joined: asyncio.Future[SessionDetails] = loop.create_future()

    class Session(ApplicationSession):
        def onJoin(self, details: SessionDetails) -> None:  # noqa: N802 (autobahn's names)
            if not joined.done():
                joined.set_result(details)

        def onLeave(self, details: CloseDetails) -> None:  # noqa: N802
            if not joined.done():
                joined.set_exception(_Closed(f"{details.reason} {details.message or ''}".strip()))
            super().onLeave(details)

        def onDisconnect(self) -> None:  # noqa: N802
            if not joined.done():
                joined.set_exception(_Closed("connection closed"))

    async def step(name: str, awaitable: Awaitable[T]) -> T:
        remaining = max(deadline - loop.time(), 0.001)
        try:
            return await asyncio.wait_for(awaitable, remaining)
        except TimeoutError:
            raise ProbeError(url, name, f"no answer within {timeout:g} s") from None
        except ApplicationError as e:
            raise ProbeError(url, name, f"{e.error} {e.args[0] if e.args else ''}".strip()) \
                from None
        except (OSError, _Closed) as e:
            raise ProbeError(url, name, getattr(e, "strerror", None) or str(e)) from None

    session = Session(ComponentConfig(realm=realm))  # type: ignore[no-untyped-call]
    try:
        is_secure, host, port = parse_url(url)[:3]
        factory = WampWebSocketClientFactory(session, url=url)  # type: ignore[no-untyped-call]
    except Exception as e:  # autobahn raises plain Exception for a bad URL
        raise ProbeError(url, "url", str(e)) from None
    t0 = time.perf_counter()
    transport, protocol = await step("connect", loop.create_connection(
        factory, host, port, ssl=True if is_secure else None))
    try:
        try:
            details = await step("join", joined)
        except ProbeError as e:
            # A refused WebSocket upgrade (wrong path, not a WAMP server) says more.
            reason = getattr(protocol, "wasNotCleanReason", None)
            if reason:
                raise ProbeError(url, "join", str(reason)) from None
            raise e
        join_ms = 1000 * (time.perf_counter() - t0)
        token = uuid.uuid4().hex
        procedure, topic = f"lbsync.probe.{token}.echo", f"lbsync.probe.{token}.event"
        await step("register", session.register(lambda x: x, procedure))
        t1 = time.perf_counter()
        answer = await step("call", session.call(procedure, token))
        call_ms = 1000 * (time.perf_counter() - t1)
        if answer != token:
            raise ProbeError(url, "call", f"answered {answer!r}, expected {token!r}")
        event: asyncio.Future[str] = loop.create_future()
        await step("subscribe", session.subscribe(
            lambda x: None if event.done() else event.set_result(x), topic))
        t2 = time.perf_counter()
        options = PublishOptions(acknowledge=True, exclude_me=False)  # type: ignore[no-untyped-call]
        await step("publish", session.publish(topic, token, options=options))
        if await step("event", event) != token:
            raise ProbeError(url, "event", "the event carried another payload")
        event_ms = 1000 * (time.perf_counter() - t2)
    finally:
        if session.is_attached():
            session.leave()
            await asyncio.sleep(0.05)  # let GOODBYE go out before the socket closes
        transport.close()
    node, worker, proxy_worker = served_by(details.authextra)
    return ProbeResult(url, realm, node, worker, proxy_worker, join_ms, call_ms, event_ms)
