"""Part 6 of the benchmark: one WAMP realm across the fleet, on the real local cluster.

Every edge node's router links to every other live one (lbsync.edge.links), so a client on
node1 calls procedures registered on node2 and receives node2's events. Measured here, on
clusters started with the CLI (`lbsync up --proxies 1`, `lbsync scale`, `lbsync down`), with
autobahn clients connected straight to the nodes (ws://127.NET.0.(10+i):8080/ws; the
WELCOME's authextra x_cb_node proves which node holds each session):

  a) latency, same node vs across nodes (3 nodes): a callee and a subscriber on node1;
     sequential calls and acknowledged publishes (timed publish -> event, subscriber and
     publisher in this one process, one clock) from node1 (same node) and node2 (across);
     the four series are interleaved, so load on the shared machine hits them alike;
  b) scale cycles 3 -> 5 -> 3 under a fixed load: publishers on node1 and node2 (the nodes
     that stay) publish numbered events at a fixed rate; subscribers on node1 and node2
     count, per (publisher, subscriber) pair, the events lost and duplicated; callers on
     each staying node call a procedure registered on the other at a fixed rate; each
     joining node gets a subscriber of its own once it is UP (reported apart: it counts
     gaps between its first and last event);
  c) join reach: `lbsync scale 4`; from /info answering 200 on the new node, a client
     connected to it calls a procedure registered on node1 until it answers (no_such_
     procedure until node1's link to the new node mirrors the registration); times from
     /info 200, from UP in HAProxy (Runtime API) and from the sidecar's ready=1 log line;
  d) the n² cost: `lbsync up --nodes n` for growing n: time until every node's n-1 wanted
     links are up (`lbsync links --check`), n(n-1) links, each router worker's RSS and
     CPU at rest, and the node processes' totals.

The statistics (percentiles, loss and duplicate counting, log parsing) are pure functions
at the top of the file (tests/unit/test_bench_realm.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import pct

REALM = "realm1"
LBSYNC = str(Path(sys.executable).parent / "lbsync")
BACKEND = "nodes"  # the local cluster's HAProxy backend

# --- pure statistics -----------------------------------------------------------------------


def latency_summary(ms: Sequence[float]) -> dict[str, float | int | None]:
    """p50 (the median), p99 (nearest rank) and max of latencies in ms, rounded to µs."""
    if not ms:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(ms), "p50": round(statistics.median(ms), 3),
            "p99": round(pct(list(ms), 99), 3), "max": round(max(ms), 3)}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, rounded to 2 decimals; None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None, rounded to ms; None when there are none."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def count_delivery(acked: Iterable[int], received: Sequence[int],
                   window: bool = False) -> dict[str, int]:
    """One (publisher, subscriber) pair: which of the publisher's acknowledged sequence
    numbers the subscriber got, in the order it got them.

    lost: acknowledged, never received; duplicated: every receipt after a number's first;
    unexpected: received though its publish was not acknowledged (it failed or timed out,
    yet the event went out); reordered: receipts of a number lower than the one before.
    window=True counts only the numbers between the first and the last received (a
    subscriber that came or went while the publisher ran).
    """
    acked = set(acked)
    counts = Counter(received)
    expected = acked
    if window:
        expected = ({s for s in acked if min(received) <= s <= max(received)}
                    if received else set())
    reordered = sum(1 for a, b in zip(received, received[1:], strict=False) if b < a)
    return {"expected": len(expected), "received": len(received),
            "lost": len(expected - counts.keys()),
            "duplicated": sum(c - 1 for c in counts.values() if c > 1),
            "unexpected": len(counts.keys() - acked), "reordered": reordered}


def _second(t: float, t0: float, seconds: int) -> int | None:
    i = int(t - t0) if t >= t0 else -1
    return i if 0 <= i < seconds else None


def per_second(times: Iterable[float], t0: float, seconds: int) -> list[int]:
    """How many of the times fall in each second [t0 + i, t0 + i + 1), i < seconds."""
    bins = [0] * max(seconds, 0)
    for t in times:
        if (i := _second(t, t0, seconds)) is not None:
            bins[i] += 1
    return bins


def per_second_median(samples: Iterable[tuple[float, float]], t0: float,
                      seconds: int) -> list[float | None]:
    """The median value of the (time, value) samples in each second (None: no sample)."""
    bins: list[list[float]] = [[] for _ in range(max(seconds, 0))]
    for t, v in samples:
        if (i := _second(t, t0, seconds)) is not None:
            bins[i].append(v)
    return [round(statistics.median(b), 3) if b else None for b in bins]


def event_latencies(sent_at: dict[int, float], received: Sequence[int],
                    received_at: Sequence[float]) -> list[tuple[float, float]]:
    """(arrival time, publish -> arrival in ms) of each receipt whose publish time is known."""
    return [(t, 1000 * (t - sent_at[seq]))
            for seq, t in zip(received, received_at, strict=True) if seq in sent_at]


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) INFO lbsync\.edge\.sidecar: "
                       r".*\btags set: .*\bready=1\b")


def first_ready(log_text: str, since: float) -> float | None:
    """When the sidecar's log (UTC timestamps, ms) first says it set ready=1 at or after
    `since` (epoch seconds), or None."""
    for line in log_text.splitlines():
        m = _LOG_LINE.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
                tzinfo=UTC).timestamp()
            if t >= since:
                return t
    return None


def mesh_progress(wanted: dict[str, set[str]], up: dict[str, set[str]]) -> tuple[int, int]:
    """(links up, links wanted) over all nodes; a link counts up only while wanted."""
    return (sum(len(w & up.get(name, set())) for name, w in wanted.items()),
            sum(len(w) for w in wanted.values()))


def mesh_complete(wanted: dict[str, set[str]], up: dict[str, set[str]], n: int) -> bool:
    """Every one of the n nodes wants its n-1 peers and has its link to each up."""
    names = set(wanted)
    ups, total = mesh_progress(wanted, up)
    return (len(names) == n and all(wanted[x] == names - {x} for x in names)
            and total == n * (n - 1) and ups == total)


# --- the cluster -------------------------------------------------------------------------


class RealmBenchError(RuntimeError):
    pass


def node_ip(net: int, i: int) -> str:
    return f"127.{net}.0.{10 + i}"


def node_url(net: int, i: int) -> str:
    return f"ws://{node_ip(net, i)}:8080/ws"


def lbsync(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LBSYNC, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def cluster_up(d: Path, n: int, net: int, timeout_s: int = 240) -> float:
    t0 = time.monotonic()
    r = lbsync("up", "--nodes", str(n), "--dir", str(d), "--net", str(net), "--proxies", "1",
               "--timeout", f"{timeout_s}s", timeout=timeout_s + 60)
    if r.returncode != 0:
        raise RealmBenchError(f"lbsync up --nodes {n} failed: {(r.stdout + r.stderr)[-1500:]}")
    return time.monotonic() - t0


def cluster_down(d: Path) -> None:
    if (d / "cluster.json").exists():
        r = lbsync("down", "--dir", str(d), timeout=120)
        if r.returncode != 0:
            print(f"   lbsync down --dir {d}: {(r.stdout + r.stderr).strip()[-500:]}", flush=True)


def read_mesh(d: Path, names: list[str]) -> tuple[dict[str, set[str]], dict[str, set[str]],
                                                   dict[str, int]]:
    """Each node's wanted peers, links up and router pid, from its Crossbar folder (what
    `lbsync links` reads); a file not written yet reads as empty."""
    from lbsync.edge import links as L

    wanted: dict[str, set[str]] = {}
    up: dict[str, set[str]] = {}
    pids: dict[str, int] = {}
    for name in names:
        cbdir = d / name / "cbdir"
        try:
            _, peers = L.parse_wanted((cbdir / L.WANTED_FILE).read_text())
            report = L.read_state(cbdir)
        except (OSError, L.LinkError):
            continue
        wanted[name] = set(peers)
        if report is not None:
            up[name] = report.up
            pids[name] = report.pid
    return wanted, up, pids


# --- WAMP clients (autobahn, asyncio) ------------------------------------------------------


@dataclass
class Client:
    url: str
    session: Any
    transport: Any
    node: str | None
    ended: asyncio.Future[str]

    async def close(self) -> None:
        if self.session.is_attached():
            self.session.leave()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.ended), 2.0)
        self.transport.close()


async def connect(url: str, expect: str, timeout: float = 5.0) -> Client:
    """A session joined at URL; RealmBenchError unless WELCOME says it is on node `expect`."""
    from autobahn.asyncio.wamp import ApplicationSession
    from autobahn.asyncio.websocket import WampWebSocketClientFactory
    from autobahn.wamp.types import ComponentConfig
    from autobahn.websocket.util import parse_url

    loop = asyncio.get_running_loop()
    joined: asyncio.Future[Any] = loop.create_future()
    ended: asyncio.Future[str] = loop.create_future()

    def end(reason: str) -> None:
        if not joined.done():
            joined.set_exception(ConnectionError(reason))
        if not ended.done():
            ended.set_result(reason)

    class Session(ApplicationSession):
        def onJoin(self, details: Any) -> None:  # noqa: N802 (autobahn's names)
            if not joined.done():
                joined.set_result(details)

        def onLeave(self, details: Any) -> None:  # noqa: N802
            end(f"{details.reason} {details.message or ''}".strip())
            super().onLeave(details)

        def onDisconnect(self) -> None:  # noqa: N802
            end("connection lost")

    session = Session(ComponentConfig(realm=REALM))
    _, host, port = parse_url(url)[:3]
    factory = WampWebSocketClientFactory(session, url=url)
    transport, _ = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
    try:
        details = await asyncio.wait_for(joined, timeout)
    except BaseException:
        transport.close()
        raise
    node = (details.authextra or {}).get("x_cb_node")
    if node != expect:
        transport.close()
        raise RealmBenchError(f"{url}: the session is on node {node!r}, not {expect}")
    return Client(url, session, transport, node, ended)


def _ack() -> Any:
    from autobahn.wamp.types import PublishOptions

    return PublishOptions(acknowledge=True)


def _no_such_procedure(e: BaseException) -> bool:
    return getattr(e, "error", None) == "wamp.error.no_such_procedure"


async def until_ok(what: str, attempt: Callable[..., Any], deadline_s: float = 30.0) -> float:
    """Retry `await attempt()` (any failure: a link not up yet, an event not mirrored yet)
    until it works; seconds it took."""
    t0 = time.monotonic()
    while True:
        try:
            await attempt()
            return time.monotonic() - t0
        except Exception as e:  # noqa: BLE001 (every kind of failure means: not yet)
            if time.monotonic() - t0 > deadline_s:
                raise RealmBenchError(f"{what}: still failing after {deadline_s:g} s: {e!r}") from e
            await asyncio.sleep(0.05)


# --- a) latency --------------------------------------------------------------------------


async def latency(net: int, n: int, warmup: int) -> dict[str, Any]:
    proc, topic = "bench.realm.lat.echo", "bench.realm.lat.event"
    callee = await connect(node_url(net, 1), "node1")
    sub = await connect(node_url(net, 1), "node1")
    same = await connect(node_url(net, 1), "node1")
    cross = await connect(node_url(net, 2), "node2")
    waiting: dict[int, asyncio.Future[float]] = {}

    def on_event(seq: int) -> None:
        fut = waiting.get(seq)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    seqs = iter(range(10**9))

    async def call(c: Client) -> float:
        t0 = time.perf_counter()
        await asyncio.wait_for(c.session.call(proc, 1), 5.0)
        return 1000 * (time.perf_counter() - t0)

    async def event(c: Client, timeout: float = 5.0) -> float:
        seq = next(seqs)
        fut = waiting[seq] = asyncio.get_running_loop().create_future()
        try:
            t0 = time.perf_counter()
            await asyncio.wait_for(c.session.publish(topic, seq, options=_ack()), timeout)
            return 1000 * (float(await asyncio.wait_for(fut, timeout)) - t0)
        finally:
            waiting.pop(seq, None)

    kinds: list[tuple[str, Callable[[], Any]]] = [
        ("call_same_node", lambda: call(same)), ("call_cross_node", lambda: call(cross)),
        ("event_same_node", lambda: event(same)), ("event_cross_node", lambda: event(cross))]
    try:
        await callee.session.register(lambda x: x, proc)
        await sub.session.subscribe(on_event, topic)
        await until_ok("call from node2", lambda: call(cross))
        await until_ok("event from node2", lambda: event(cross, 0.5))
        for _ in range(warmup):
            for _, run in kinds:
                await run()
        series: dict[str, list[float]] = {k: [] for k, _ in kinds}
        failed: dict[str, list[str]] = {k: [] for k, _ in kinds}
        for i in range(n):
            for j in range(len(kinds)):  # interleaved, in a rotating order
                name, run = kinds[(i + j) % len(kinds)]
                try:
                    series[name].append(await run())
                except Exception as e:  # noqa: BLE001 (a failure is counted, not fatal)
                    failed[name].append(repr(e)[:200])
    finally:
        for c in (callee, sub, same, cross):
            await c.close()
    out: dict[str, Any] = {"n_per_series": n, "warmup_per_series": warmup,
                           "sessions": {"callee": callee.node, "subscriber": sub.node,
                                        "same_node_client": same.node,
                                        "cross_node_client": cross.node}}
    for name in series:
        out[name] = {**latency_summary(series[name]), "failed": len(failed[name]),
                     "failures": failed[name][:10]}
    out["ratio_cross_over_same_p50"] = {
        "call": ratio(out["call_cross_node"]["p50"], out["call_same_node"]["p50"]),
        "event": ratio(out["event_cross_node"]["p50"], out["event_same_node"]["p50"])}
    out["samples_ms"] = {k: [round(v, 3) for v in vs] for k, vs in series.items()}
    return out


# --- b) scale cycles -----------------------------------------------------------------------


@dataclass
class CycleLoad:
    """Publishers and callers on the staying nodes at fixed rates, until `stop`."""

    rate: float
    call_rate: float
    topic: str = "bench.realm.cycle.event"
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    acked: dict[str, list[int]] = field(default_factory=dict)  # publisher -> seqs
    sent_at: dict[str, dict[int, float]] = field(default_factory=dict)  # -> seq -> time
    publish_failures: list[dict[str, Any]] = field(default_factory=list)
    # (publisher, subscriber) -> seqs in arrival order, and arrival times
    received: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    received_at: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    calls_ok: list[tuple[float, float]] = field(default_factory=list)  # (time, ms)
    call_failures: list[dict[str, Any]] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def subscriber(self, name: str) -> Callable[[str, int], None]:
        def on_event(publisher: str, seq: int) -> None:
            self.received.setdefault((publisher, name), []).append(seq)
            self.received_at.setdefault((publisher, name), []).append(time.time())
        return on_event

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _paced(self, rate: float, one: Callable[[int], Any]) -> None:
        loop = asyncio.get_running_loop()
        next_t, i = loop.time(), 0
        while not self.stop.is_set():
            self._spawn(one(i))
            i += 1
            next_t += 1 / rate
            await asyncio.sleep(max(0.0, next_t - loop.time()))

    async def publisher(self, c: Client, name: str) -> None:
        self.acked[name], self.sent_at[name] = [], {}

        async def one(seq: int) -> None:
            self.sent_at[name][seq] = time.time()
            try:
                await asyncio.wait_for(c.session.publish(self.topic, name, seq, options=_ack()),
                                       5.0)
                self.acked[name].append(seq)
            except Exception as e:  # noqa: BLE001 (counted)
                self.publish_failures.append({"t": time.time(), "publisher": name, "seq": seq,
                                              "reason": repr(e)[:200]})
        await self._paced(self.rate, one)

    async def caller(self, c: Client, name: str, proc: str) -> None:
        async def one(_: int) -> None:
            t0 = time.time()
            try:
                await asyncio.wait_for(c.session.call(proc), 5.0)
                self.calls_ok.append((t0, 1000 * (time.time() - t0)))
            except Exception as e:  # noqa: BLE001 (counted)
                self.call_failures.append({"t": t0, "caller": name, "procedure": proc,
                                           "reason": repr(e)[:200]})
        await self._paced(self.call_rate, one)


async def scale_to(d: Path, n: int) -> dict[str, Any]:
    t0 = time.time()
    proc = await asyncio.create_subprocess_exec(
        LBSYNC, "scale", str(n), "--dir", str(d), "--timeout", "120s",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    text = (await proc.communicate())[0].decode(errors="replace")
    if proc.returncode != 0:
        raise RealmBenchError(f"lbsync scale {n} failed ({proc.returncode}): {text[-1500:]}")
    return {"to": n, "t0": t0, "t1": time.time(), "s": round(time.time() - t0, 2)}


async def cycles(d: Path, net: int, n_cycles: int, rate: float, call_rate: float,
                 hold: float) -> dict[str, Any]:
    load = CycleLoad(rate, call_rate)
    staying = ["node1", "node2"]
    members: dict[str, Client] = {}
    clients: dict[str, Client] = {}
    for i, name in enumerate(staying, start=1):
        members[name] = await connect(node_url(net, i), name)
        clients[name] = await connect(node_url(net, i), name)
    joiners: list[tuple[str, Client, float]] = []
    dropped: list[str] = []  # sessions that ended before we closed them
    scales: list[dict[str, Any]] = []
    runners: list[asyncio.Task[Any]] = []
    try:
        for name, m in members.items():
            await m.session.subscribe(load.subscriber(name), load.topic)
            await m.session.register(lambda name=name: name, f"bench.realm.cycle.{name}")
        other = {"node1": "node2", "node2": "node1"}
        for name, c in clients.items():  # every staying pair works before the load starts
            await until_ok(f"call {name} -> {other[name]}", lambda c=c, name=name: asyncio.wait_for(
                c.session.call(f"bench.realm.cycle.{other[name]}"), 2.0))

        async def heard_everyone() -> None:
            for name, c in clients.items():
                await c.session.publish(load.topic, "warm-" + name, 0, options=_ack())
            await asyncio.sleep(0.2)
            missing = [(p, s) for p in staying for s in staying
                       if ("warm-" + p, s) not in load.received]
            if missing:
                raise RealmBenchError(f"no warm-up event for {missing}")
        await until_ok("warm-up events between node1 and node2", heard_everyone)
        load.received.clear()
        load.received_at.clear()
        started = time.time()
        for name, c in clients.items():
            runners.append(asyncio.create_task(load.publisher(c, name)))
            runners.append(asyncio.create_task(
                load.caller(c, name, f"bench.realm.cycle.{other[name]}")))
        await asyncio.sleep(hold)
        for k in range(n_cycles):
            print(f"   cycle {k + 1}/{n_cycles}: 3 -> 5", flush=True)
            scales.append(await scale_to(d, 5))
            now = []
            for i in (4, 5):
                c = await connect(node_url(net, i), f"node{i}")
                label = f"node{i}#{k + 1}"
                subscribed = time.time()
                await c.session.subscribe(load.subscriber(label), load.topic)
                now.append((label, c, subscribed))
            joiners += now
            await asyncio.sleep(hold)
            for label, c, _ in now:  # the joining nodes' clients leave before their nodes do
                if c.ended.done():
                    dropped.append(label)
                await c.close()
            print(f"   cycle {k + 1}/{n_cycles}: 5 -> 3", flush=True)
            scales.append(await scale_to(d, 3))
            await asyncio.sleep(hold)
        load.stop.set()
        await asyncio.gather(*runners)
        stopped = time.time()
        dropped += [f"{what} on {name}" for what, sessions in (("subscriber", members),
                                                               ("publisher", clients))
                    for name, c in sessions.items() if c.ended.done()]
        await asyncio.sleep(3.0)  # events and calls in flight
        if load.tasks:
            await asyncio.wait(list(load.tasks), timeout=6.0)
    finally:
        load.stop.set()
        for r in runners:
            r.cancel()
        for c in [*members.values(), *clients.values(), *(c for _, c, _ in joiners)]:
            await c.close()
    pairs = {f"{p}->{s}": count_delivery(load.acked[p], load.received.get((p, s), []))
             for p in staying for s in staying}
    joining = {}
    for label, _, subscribed in joiners:
        for p in staying:
            got = load.received.get((p, label), [])
            first = load.received_at.get((p, label), [None])[0]
            joining[f"{p}->{label}"] = {
                **count_delivery(load.acked[p], got, window=True),
                "first_event_after_subscribe_s": (round(first - subscribed, 3)
                                                  if first is not None else None)}
    staying_total = {k: sum(x[k] for x in pairs.values())
                     for k in ("expected", "received", "lost", "duplicated", "unexpected",
                               "reordered")}
    seconds = int(stopped - started) + 1
    recv_staying = [t for (p, s), ts in load.received_at.items() if s in staying for t in ts]
    lat = {(p, s): event_latencies(load.sent_at[p], load.received.get((p, s), []),
                                   load.received_at.get((p, s), []))
           for p in staying for s in staying}
    same = [ms for (p, s), v in lat.items() if p == s for _, ms in v]
    cross = [ms for (p, s), v in lat.items() if p != s for _, ms in v]
    return {
        "cycles": n_cycles, "publish_rate_per_publisher": rate,
        "call_rate_per_caller": call_rate, "hold_s": hold,
        "publishers": staying, "subscribers_staying": staying,
        "duration_s": round(stopped - started, 1),
        "scales": [{**s, "t0": round(s["t0"] - started, 2), "t1": round(s["t1"] - started, 2)}
                   for s in scales],
        "published": {p: len(load.sent_at[p]) for p in staying},
        "event_latency_ms": {"same_node": latency_summary(same),
                             "cross_node": latency_summary(cross)},
        "publish_failed": len(load.publish_failures),
        "publish_failures": load.publish_failures[:20],
        "pairs_staying": pairs, "staying_total": staying_total,
        "pairs_joining": joining,
        "joining_total": {k: sum(x[k] for x in joining.values())
                          for k in ("expected", "received", "lost", "duplicated")},
        "calls": {"ok": len(load.calls_ok), "failed": len(load.call_failures),
                  "latency_ms": latency_summary([ms for _, ms in load.calls_ok])},
        "call_failures": [{**f, "t": round(f["t"] - started, 2)} for f in load.call_failures[:50]],
        "sessions_dropped": dropped,
        "timeline": {
            "published": per_second([t for ts in load.sent_at.values() for t in ts.values()],
                                    started, seconds),
            "received_staying": per_second(recv_staying, started, seconds),
            "calls_ok": per_second([t for t, _ in load.calls_ok], started, seconds),
            "calls_failed": per_second([f["t"] for f in load.call_failures], started, seconds),
            "call_p50_ms": per_second_median(load.calls_ok, started, seconds),
            "event_p50_ms": per_second_median([x for v in lat.values() for x in v], started,
                                              seconds),
        },
    }


# --- c) join reach -------------------------------------------------------------------------


async def _poll(what: Callable[[], bool], interval: float = 0.05,
                deadline_s: float = 150.0) -> float | None:
    """Epoch time when `what()` (run in a thread) first holds, or None after the deadline."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        with contextlib.suppress(Exception):
            if await asyncio.to_thread(what):
                return time.time()
        await asyncio.sleep(interval)
    return None


async def join_reach(d: Path, net: int, runs: int) -> dict[str, Any]:
    import requests

    from lbsync.haproxy.runtime import RuntimeAPI

    new, name = 4, "node4"
    proc = "bench.realm.join.node1"
    callee = await connect(node_url(net, 1), "node1")
    await callee.session.register(lambda: "node1", proc)
    admin = str(d / "lb" / "admin.sock")

    def serving() -> bool:
        return requests.get(f"http://{node_ip(net, new)}:8080/info", timeout=0.5).ok

    def in_haproxy() -> bool:
        return any(s.name == name and s.state_word == "UP"
                   for s in RuntimeAPI(admin, timeout=1.0).servers_state(BACKEND))

    samples: list[dict[str, Any]] = []
    try:
        for k in range(runs):
            print(f"   join {k + 1}/{runs}: 3 -> 4", flush=True)
            start = time.time()
            scaling = asyncio.create_task(scale_to(d, 4))
            up_task = asyncio.create_task(_poll(in_haproxy))
            t_info = await _poll(serving, 0.02)
            if t_info is None:
                raise RealmBenchError(f"{name}'s /info never answered")
            client: Client | None = None
            retries = 0
            connect_failures: list[dict[str, Any]] = []
            while client is None:
                t0 = time.time()
                try:
                    client = await connect(node_url(net, new), name, timeout=2.0)
                except (OSError, TimeoutError, ConnectionError) as e:
                    # Right after /info answers, a session can still be refused
                    # (wamp.error.authentication_failed) or not answered: try again.
                    connect_failures.append({"at_s_after_info": round(t0 - t_info, 3),
                                             "took_s": round(time.time() - t0, 3),
                                             "reason": repr(e)[:200]})
                    if time.time() - t_info > 60:
                        raise
                    await asyncio.sleep(0.02)
            t_session = time.time()
            try:
                while True:
                    try:
                        await asyncio.wait_for(client.session.call(proc), 5.0)
                        t_call = time.time()
                        break
                    except Exception as e:  # noqa: BLE001 (no_such_procedure until the link)
                        retries += 1
                        if not _no_such_procedure(e) and time.time() - t_info > 60:
                            raise
                        if time.time() - t_info > 90:
                            raise RealmBenchError(f"{name} never reached node1: {e!r}") from e
                        await asyncio.sleep(0.02)
                await scaling
                t_up = await up_task
            finally:
                await client.close()
            log = (d / "logs" / f"{name}-sidecar.log").read_text(errors="replace")
            t_ready = first_ready(log, start - 0.5)
            if connect_failures:  # what the new node's Crossbar said meanwhile
                cb = (d / "logs" / f"{name}-crossbar.log").read_text(errors="replace")
                connect_failures.append({"crossbar_log_tail": cb.splitlines()[-15:]})
            link = _link_since(d, "node1", name)
            samples.append({
                "info_200_s": round(t_info - start, 3),
                "session_on_new_node_s": round(t_session - start, 3),
                "first_call_ok_s": round(t_call - start, 3),
                "up_in_haproxy_s": round(t_up - start, 3) if t_up else None,
                "sidecar_ready_1_s": round(t_ready - start, 3) if t_ready else None,
                "node1_link_to_new_up_s": round(link - start, 3) if link else None,
                "connect_failures": connect_failures,
                "no_such_procedure_retries": retries,
                "info_200_to_call_s": round(t_call - t_info, 3),
                "up_in_haproxy_to_call_s": round(t_call - t_up, 3) if t_up else None,
                "ready_1_to_call_s": round(t_call - t_ready, 3) if t_ready else None,
                "ready_1_to_node1_link_up_s": (round(link - t_ready, 3)
                                               if link and t_ready else None),
            })
            print(f"   join {k + 1}/{runs}: 4 -> 3", flush=True)
            await scale_to(d, 3)
    finally:
        await callee.close()
    keys = ["info_200_to_call_s", "up_in_haproxy_to_call_s", "ready_1_to_call_s",
            "ready_1_to_node1_link_up_s",
            "info_200_s", "first_call_ok_s", "up_in_haproxy_s", "sidecar_ready_1_s",
            "node1_link_to_new_up_s"]
    return {"runs": runs, "from": 3, "to": 4, "procedure_on": "node1",
            "medians": {k: median(s[k] for s in samples) for k in keys},
            "samples": samples}


def _link_since(d: Path, node: str, peer: str) -> float | None:
    """When `node`'s link to `peer` last came up, from its links-state.json."""
    from lbsync.edge import links as L

    with contextlib.suppress(OSError, L.LinkError):
        report = L.read_state(d / node / "cbdir")
        if report is not None and peer in report.links and report.links[peer].connected:
            return report.links[peer].since
    return None


async def on_three_nodes(d: Path, net: int, cfg: dict[str, Any]) -> dict[str, Any]:
    # Autobahn logs each closed session as a warning, under the session class's module.
    for name in ("autobahn", "asyncio", "txaio", __name__):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    out: dict[str, Any] = {}
    print(f"   latency: {cfg['realm_calls']} calls and events per series", flush=True)
    out["latency"] = await latency(net, cfg["realm_calls"], cfg["realm_warmup"])
    out["cycles"] = await cycles(d, net, cfg["realm_cycles"], cfg["realm_rate"],
                                 cfg["realm_call_rate"], cfg["realm_hold_s"])
    out["join"] = await join_reach(d, net, cfg["realm_joins"])
    return out


# --- d) the n² cost ----------------------------------------------------------------------


def _cluster_usage(d: Path, router_pids: dict[str, int], idle_s: float) -> dict[str, Any]:
    """RSS now and CPU % over `idle_s` of each router worker, of each node's Crossbar (its
    controller and workers), and of every process of the cluster by kind."""
    import psutil

    from lbsync.cluster.local import Layout, leftovers

    # Crossbar's processes rename themselves (setproctitle), which overwrites the environment
    # that `leftovers` looks for: they are found from the router worker, a controller's child.
    every = {p.pid: p for p in leftovers(Layout(d))}
    kind = {pid: "lbsync/serf/haproxy" for pid in every}
    routers: dict[str, psutil.Process] = {}
    trees: dict[str, list[psutil.Process]] = {}
    for name, pid in router_pids.items():
        with contextlib.suppress(psutil.Error):
            routers[name] = psutil.Process(pid)
            controller = routers[name].parent()
            assert controller is not None
            trees[name] = [controller, *controller.children(recursive=True)]
    for tree in trees.values():
        for p in tree:
            every[p.pid] = p
            kind[p.pid] = "crossbar"
    for p in every.values():
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(idle_s)
    cpu: dict[int, float] = {}
    rss: dict[int, float] = {}
    for pid, p in every.items():
        with contextlib.suppress(psutil.Error):
            cpu[pid] = p.cpu_percent(None)
            rss[pid] = p.memory_info().rss / 2**20
            if kind[pid] != "crossbar":
                cmd = " ".join(p.cmdline())
                kind[pid] = ("sidecar" if " node --name " in cmd
                             else "serf" if Path(p.cmdline()[0]).name == "serf"
                             else "haproxy" if "haproxy -W" in cmd
                             else "lb-agent" if cmd.endswith(" agent") else "other")
    r_rss = [rss[p.pid] for p in routers.values() if p.pid in rss]
    r_cpu = [cpu[p.pid] for p in routers.values() if p.pid in cpu]
    node_rss = [sum(rss.get(p.pid, 0.0) for p in tree) for tree in trees.values()]
    kinds = sorted(set(kind.values()))
    return {
        "idle_s": idle_s,
        "router_rss_mb": {"median": median(r_rss), "max": round(max(r_rss), 1) if r_rss else None},
        "router_cpu_pct": {"median": median(r_cpu),
                           "max": round(max(r_cpu), 1) if r_cpu else None,
                           "sum": round(sum(r_cpu), 1)},
        "node_crossbar_rss_mb": {"median": median(node_rss),
                                 "processes_per_node": median(len(t) for t in trees.values())},
        "by_kind": {k: {"processes": sum(1 for pid in rss if kind[pid] == k),
                        "rss_mb": round(sum(rss[pid] for pid in rss if kind[pid] == k), 1),
                        "cpu_pct": round(sum(cpu[pid] for pid in cpu if kind[pid] == k), 1)}
                    for k in kinds},
        "cluster_rss_mb": round(sum(rss.values()), 1),
        "cluster_cpu_pct": round(sum(cpu.values()), 1),
    }


def n_squared(tmp: Path, sizes: list[int], nets: list[int], idle_s: float) -> dict[str, Any]:
    import psutil

    rows: list[dict[str, Any]] = []
    for n, net in zip(sizes, nets, strict=False):
        d = tmp / f"realm-n{n}"
        names = [f"node{i}" for i in range(1, n + 1)]
        row: dict[str, Any] = {"n": n, "links_total": n * (n - 1), "net": net,
                               "memory_available_gb_before": round(
                                   psutil.virtual_memory().available / 2**30, 1)}
        print(f"   n² cost: lbsync up --nodes {n}", flush=True)
        t0 = time.monotonic()
        log = tmp / f"realm-n{n}-up.log"
        with open(log, "w") as f:
            up = subprocess.Popen(
                [LBSYNC, "up", "--nodes", str(n), "--dir", str(d), "--net", str(net),
                 "--proxies", "1", "--timeout", "240s"], stdout=f, stderr=subprocess.STDOUT)
        try:
            t_up = t_links = None
            progress: list[tuple[float, int]] = []
            while t_links is None or t_up is None:
                now = time.monotonic() - t0
                if t_up is None and up.poll() is not None:
                    if up.returncode != 0:
                        out = log.read_text(errors="replace")
                        raise RealmBenchError(f"lbsync up --nodes {n} exited {up.returncode}: "
                                              f"{out[-800:]}")
                    t_up = now
                if t_links is None:
                    wanted, ups, _ = read_mesh(d, names)
                    done_, _ = mesh_progress(wanted, ups)
                    if not progress or progress[-1][1] != done_:
                        progress.append((round(now, 2), done_))
                    if mesh_complete(wanted, ups, n):
                        t_links = now
                if now > 300:
                    raise RealmBenchError(f"{n} nodes: links {progress[-1][1]}/{n * (n - 1)} "
                                          f"after {now:.0f} s")
                time.sleep(0.2)
            check = lbsync("links", "--check", "--dir", str(d), timeout=60)
            row.update({"up_to_all_up_in_haproxy_s": round(t_up, 2),
                        "up_to_links_check_ok_s": round(t_links, 2),
                        "links_check_exit": check.returncode,
                        "links_up_timeline": progress})
            time.sleep(2.0)  # the start's tail (log lines, first pings) out of the way
            _, ups, pids = read_mesh(d, names)
            row.update(_cluster_usage(d, pids, idle_s))
            row["memory_available_gb_after"] = round(psutil.virtual_memory().available / 2**30,
                                                     1)
            row["ok"] = check.returncode == 0
        except (RealmBenchError, OSError, subprocess.SubprocessError) as e:
            row.update({"ok": False, "error": str(e)[-1000:]})
            print(f"   {n} nodes: {e}", flush=True)
        finally:
            if up.poll() is None:
                up.kill()
                up.wait(10)
            cluster_down(d)
        rows.append(row)
        if not row["ok"]:
            break  # do not grow past a size that did not fit
    ran = [r["n"] for r in rows if r["ok"]]
    return {"sizes_asked": sizes, "rows": rows, "largest_n_ok": max(ran) if ran else None,
            "proxies_per_node": 1}


# --- the part ------------------------------------------------------------------------------


def realm(tmp: Path, cfg: dict[str, Any], nets: list[int]) -> dict[str, Any]:
    """Part 6: a)-c) on one 3-node cluster (nets[0]), d) on one cluster per size (nets[1:],
    one per size)."""
    d = tmp / "realm"
    out: dict[str, Any] = {"nodes": 3, "net": nets[0], "proxies_per_node": 1,
                           "clients": "autobahn (asyncio) in the benchmark's process, "
                                      "connected straight to the nodes' /ws"}
    try:
        print("   lbsync up --nodes 3", flush=True)
        out["up_s"] = round(cluster_up(d, 3, nets[0]), 2)
        out.update(asyncio.run(on_three_nodes(d, nets[0], cfg)))
    finally:
        cluster_down(d)
    out["n_squared"] = n_squared(tmp, cfg["realm_sizes"], nets[1:], cfg["realm_idle_s"])
    return out
