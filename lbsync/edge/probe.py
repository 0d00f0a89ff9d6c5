"""`lbsync probe URL`: one WAMP round trip, through HAProxy or straight to a node.

Connect, join, register a procedure and call it, subscribe to a topic and publish to it
(acknowledged, not excluding ourselves), then say which node served the session and how
long each round trip took. `lbsync probe URL URL...` opens a session to each URL at once
and checks the realm across them: each session calls a procedure every other one
registered and receives every other one's event exactly once. Crossbar names the node in
the WELCOME: `authextra` carries
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


class _Steps:
    """Awaits a step before a shared deadline; turns every failure into a ProbeError."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.deadline = asyncio.get_running_loop().time() + timeout

    async def __call__(self, name: str, awaitable: Awaitable[T]) -> T:
        from autobahn.wamp.exception import ApplicationError

        loop = asyncio.get_running_loop()
        remaining = max(self.deadline - loop.time(), 0.001)
        try:
            return await asyncio.wait_for(awaitable, remaining)
        except TimeoutError:
            raise ProbeError(self.url, name, f"no answer within {self.timeout:g} s") from None
        except ApplicationError as e:
            raise ProbeError(self.url, name,
                             f"{e.error} {e.args[0] if e.args else ''}".strip()) from None
        except (OSError, _Closed) as e:
            raise ProbeError(self.url, name, getattr(e, "strerror", None) or str(e)) from None


async def _open(url: str, realm: str, step: _Steps) -> tuple[Any, Any, Any]:
    """(session, transport, welcome details) of a session joined to REALM at URL."""
    from autobahn.asyncio.wamp import ApplicationSession
    from autobahn.asyncio.websocket import WampWebSocketClientFactory
    from autobahn.wamp.types import CloseDetails, ComponentConfig, SessionDetails
    from autobahn.websocket.util import parse_url

    loop = asyncio.get_running_loop()
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

    session = Session(ComponentConfig(realm=realm))  # type: ignore[no-untyped-call]
    try:
        is_secure, host, port = parse_url(url)[:3]
        factory = WampWebSocketClientFactory(session, url=url)  # type: ignore[no-untyped-call]
    except Exception as e:  # autobahn raises plain Exception for a bad URL
        raise ProbeError(url, "url", str(e)) from None
    transport, protocol = await step("connect", loop.create_connection(
        factory, host, port, ssl=True if is_secure else None))
    try:
        details = await step("join", joined)
    except ProbeError as e:
        transport.close()
        # A refused WebSocket upgrade (wrong path, not a WAMP server) says more.
        reason = getattr(protocol, "wasNotCleanReason", None)
        if reason:
            raise ProbeError(url, "join", str(reason)) from None
        raise e
    return session, transport, details


async def _close(session: Any, transport: Any) -> None:
    if session.is_attached():
        session.leave()
        await asyncio.sleep(0.05)  # let GOODBYE go out before the socket closes
    transport.close()


async def _probe(url: str, realm: str, timeout: float) -> ProbeResult:
    from autobahn.wamp.types import PublishOptions

    loop = asyncio.get_running_loop()
    step = _Steps(url, timeout)
    t0 = time.perf_counter()
    session, transport, details = await _open(url, realm, step)
    try:
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
        await _close(session, transport)
    node, worker, proxy_worker = served_by(details.authextra)
    return ProbeResult(url, realm, node, worker, proxy_worker, join_ms, call_ms, event_ms)


# --- across sessions ------------------------------------------------------------------------


@dataclass(frozen=True)
class AcrossResult:
    """Every ordered pair of sessions: (caller, callee) calls and (publisher, subscriber)
    events. A value is milliseconds, or the reason it failed."""

    urls: list[str]
    nodes: list[str | None]
    calls: dict[tuple[int, int], float | str]
    events: dict[tuple[int, int], float | str]

    @property
    def ok(self) -> bool:
        return all(isinstance(v, float) for v in (*self.calls.values(), *self.events.values()))

    def name(self, i: int) -> str:
        return f"#{i + 1} node {self.nodes[i] or '?'}"

    def lines(self) -> list[str]:
        out = [f"{self.name(i)} via {url}" for i, url in enumerate(self.urls)]
        for (i, j), call in sorted(self.calls.items()):
            event = self.events[(i, j)]
            fmt = [f"{v:.1f} ms" if isinstance(v, float) else f"FAILED ({v})"
                   for v in (call, event)]
            out.append(f"{self.name(i)} -> {self.name(j)}: call {fmt[0]}, event {fmt[1]}")
        nodes = {n for n in self.nodes if n}
        out.append(f"{'ok' if self.ok else 'FAILED'}: {len(self.urls)} sessions on "
                   f"{len(nodes)} node(s) {'are' if self.ok else 'are not'} one realm")
        return out


def probe_across(urls: list[str], realm: str = "realm1", timeout: float = 10.0) -> AcrossResult:
    """Open a session to each URL at once and check every pair both ways (see the module)."""
    _import_autobahn()
    for name in ("autobahn", f"{__name__}.Session"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return asyncio.run(_across(urls, realm, timeout))


async def _across(urls: list[str], realm: str, timeout: float) -> AcrossResult:
    from autobahn.wamp.exception import ApplicationError
    from autobahn.wamp.types import PublishOptions

    loop = asyncio.get_running_loop()
    opened: list[tuple[Any, Any, Any]] = []
    token = uuid.uuid4().hex
    topic = f"lbsync.probe.{token}.event"
    # (publisher, subscriber) -> arrival times of the publisher's final event
    finals: dict[tuple[int, int], list[float]] = {}
    warm: set[tuple[int, int]] = set()
    sent: dict[int, float] = {}

    def on_event(receiver: int) -> Any:
        def handler(publisher: int, final: bool) -> None:
            if final:
                finals.setdefault((publisher, receiver), []).append(time.perf_counter())
            else:
                warm.add((publisher, receiver))
        return handler

    try:
        for i, url in enumerate(urls):  # at once: through HAProxy they spread over nodes
            step = _Steps(url, timeout)
            session, transport, details = await _open(url, realm, step)
            opened.append((session, transport, details))
            await step("register", session.register(lambda i=i: i, f"lbsync.probe.{token}.n{i}"))
            await step("subscribe", session.subscribe(on_event(i), topic))
        pairs = [(i, j) for i in range(len(urls)) for j in range(len(urls)) if i != j]
        deadline = loop.time() + timeout
        # Calls: a registration reaches the other nodes once their links mirror it.
        calls: dict[tuple[int, int], float | str] = {}
        for i, j in pairs:
            session = opened[i][0]
            while True:
                t0 = time.perf_counter()
                try:
                    got = await asyncio.wait_for(session.call(f"lbsync.probe.{token}.n{j}"),
                                                 max(deadline - loop.time(), 0.01))
                except ApplicationError as e:
                    if e.error == "wamp.error.no_such_procedure" and loop.time() < deadline:
                        await asyncio.sleep(0.05)
                        continue
                    calls[(i, j)] = e.error
                except TimeoutError:
                    calls[(i, j)] = f"no answer within {timeout:g} s"
                else:
                    calls[(i, j)] = (1000 * (time.perf_counter() - t0) if got == j
                                     else f"answered {got!r}, not {j}")
                break
        # Events: publish warm-ups until every subscriber hears every publisher, then one
        # final event each, which every other session must receive exactly once.
        options = PublishOptions(acknowledge=True)  # type: ignore[no-untyped-call]
        while not set(pairs) <= warm and loop.time() < deadline:
            for i, (session, _, _) in enumerate(opened):
                await session.publish(topic, i, False, options=options)
            await asyncio.sleep(0.05)
        for i, (session, _, _) in enumerate(opened):
            sent[i] = time.perf_counter()
            await session.publish(topic, i, True, options=options)
        await asyncio.sleep(0.5)  # a duplicate would arrive meanwhile
        events: dict[tuple[int, int], float | str] = {}
        for i, j in pairs:
            got_at = finals.get((i, j), [])
            events[(i, j)] = (1000 * (got_at[0] - sent[i]) if len(got_at) == 1
                              else f"received {len(got_at)} times")
    finally:
        for session, transport, _ in opened:
            await _close(session, transport)
    nodes = [served_by(d.authextra)[0] for _, _, d in opened]
    return AcrossResult(list(urls), nodes, calls, events)
