"""The daemon: follow Serf (stream + fast members poll) and the registry folder, reconcile.

Threads only feed one queue; the loop drains the queue, updates the registry, then
reconciles once, so a burst of events costs one pass. It also reconciles on a timer,
which heals lost events, and every 0.25 s while a drain or a reload is pending.

When the Serf agent restarts without its snapshot it knows no member; the follower then
joins the members the registry knows alive (lbsync.serf.rejoin) before the loop sees the
empty list, so the registry and HAProxy never lose them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .haproxy.binary import check_config, haproxy_version
from .haproxy.master import MasterCLI
from .haproxy.runtime import RuntimeAPI, response_error
from .metrics import Metrics, MetricsServer, Views
from .model import LbsyncError, Member, MemberEvent, Refusal
from .reconcile import Reconciler
from .registry import Registry
from .serf.follow import Follower
from .serf.rejoin import Rejoin
from .serf.rpc import SerfAuthError, SerfError, SerfRPC
from .settings import Settings

log = logging.getLogger("lbsync.agent")
BUSY_INTERVAL = 0.25


@dataclass(frozen=True)
class Snapshot:
    members: list[Member]


class _Touched:
    """The registry folder changed (for example `lbsync handle` wrote a member)."""


TOUCHED = _Touched()


# Events that change a registry file. Watchdog also reports plain reads ("opened",
# "closed_no_write"): counting those made every pass, which reads the registry, queue
# the next one, and the agent spun at 100 % CPU.
_CHANGES = {"created", "modified", "deleted", "moved", "closed"}


class RegistryWatch(FileSystemEventHandler):
    def __init__(self, q: queue.Queue[object]) -> None:
        self.q = q

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES or event.is_directory:
            return
        # An atomic write is a rename of a temp file onto NAME.json: look at both ends.
        paths = (str(event.src_path), str(getattr(event, "dest_path", "") or ""))
        if any(p.endswith(".json") for p in paths):
            self.q.put(TOUCHED)


_Key = tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...]


def _snapshot_key(members: list[Member]) -> _Key:
    return tuple(sorted((m.name, m.addr, str(m.status), tuple(sorted(m.tags.items())))
                        for m in members))


def detect_version(settings: Settings, runtime: RuntimeAPI) -> tuple[int, int, int]:
    """The running HAProxy's version when it answers, else the binary's (same package)."""
    try:
        return runtime.version()
    except LbsyncError:
        return haproxy_version(settings.haproxy_bin)


def check_serf(host: str, port: int, auth_key: str | None) -> None:
    """Fail at start on a wrong auth key; an agent that is not up yet is waited for."""
    try:
        with SerfRPC(host, port, auth_key, timeout=2.0):
            pass
    except SerfAuthError:
        raise
    except SerfError as e:
        log.warning("%s; will keep trying", e)


class LatestMembers:
    """Serf's latest member list as the follower delivered it, for the scrape-time gauges
    (no extra RPC connection per scrape). Written by the follower's thread, read by the
    metrics server's: one reference swap, no lock needed."""

    def __init__(self) -> None:
        self.members: list[Member] | None = None
        self.follower: Follower | None = None

    def get(self) -> dict[str, Member]:
        if self.follower is None or not self.follower.connected or self.members is None:
            raise LbsyncError("not connected to the Serf agent")
        return {m.name: m for m in self.members}


def run_agent(settings: Settings, stop: threading.Event, metrics: Metrics | None = None,
              metrics_server: MetricsServer | None = None) -> None:
    """Follow and reconcile until `stop` is set. `metrics_server` (already bound, serving
    `metrics.registry`) is started here and closed on the way out."""
    metrics = metrics or Metrics()
    registry = Registry(settings.registry_dir)
    settings.registry_dir.mkdir(parents=True, exist_ok=True)
    runtime = RuntimeAPI(settings.runtime_socket)
    # `lbsync agent` has checked the binary exists; it runs `-v` only if HAProxy is down.
    version = detect_version(settings, runtime)
    master = MasterCLI(settings.master_socket) if settings.master_socket else None
    reconciler = Reconciler(
        settings, registry, runtime, master, version,
        check_config=lambda p: check_config(p, settings.haproxy_bin),
        response_error=response_error,
    )
    log.info("start version=haproxy-%s registry=%s runtime=%s serf=%s metrics=%s",
             ".".join(map(str, version)), settings.registry_dir, settings.runtime_socket,
             f"{settings.serf_rpc[0]}:{settings.serf_rpc[1]}" if settings.serf_rpc
             else "off (registry only)",
             f"http://{settings.metrics_bind}/metrics" if metrics_server else "off")
    metrics.set_build(version)
    latest = LatestMembers()
    metrics.watch(Views(
        members=latest.get if settings.serf_rpc else registry.load,
        servers=lambda: runtime.servers_state(settings.backend),
        config_text=lambda: settings.haproxy_config.read_text(encoding="utf-8"),
        settings=settings, version=version,
        members_source="serf" if settings.serf_rpc else "registry"))

    q: queue.Queue[object] = queue.Queue()

    def on_members(members: list[Member]) -> None:
        latest.members = members
        q.put(Snapshot(members))

    observer = Observer()
    observer.schedule(RegistryWatch(q), str(settings.registry_dir), recursive=False)
    observer.start()
    follower: Follower | None = None
    try:
        if metrics_server is not None:
            metrics_server.start()
        if settings.serf_rpc:
            host, port = settings.serf_rpc
            check_serf(host, port, settings.serf_auth_key)
            # Its own Registry: the follower's thread only reads, and the loop's instance
            # is not thread-safe (it remembers which damaged files it warned about).
            follower = Follower(host, port, on_event=q.put, on_members=on_members,
                                auth_key=settings.serf_auth_key,
                                poll_interval=settings.poll_interval,
                                rejoin=Rejoin(Registry(settings.registry_dir).load))
            latest.follower = follower
            follower.start()
        _loop(settings, registry, reconciler, q, stop, metrics)
    finally:
        if follower is not None:
            follower.stop()
        observer.stop()
        observer.join(timeout=5)
        if metrics_server is not None:
            metrics_server.stop()
        log.info("stop reloads=%d", reconciler.mem.reloads)


def _loop(settings: Settings, registry: Registry, reconciler: Reconciler,
          q: queue.Queue[object], stop: threading.Event, metrics: Metrics) -> None:
    last_key: object = None
    last_snapshot: Snapshot | None = None
    next_resync = 0.0  # reconcile at once on start
    busy = False
    while not stop.is_set():
        now = time.monotonic()
        timeout = min(BUSY_INTERVAL if busy else 1.0, max(0.0, next_resync - now))
        items: list[object] = []
        try:
            items.append(q.get(timeout=timeout))
            while True:
                items.append(q.get_nowait())
        except queue.Empty:
            pass
        if stop.is_set():
            return
        changed = touched = False
        snapshot: Snapshot | None = None
        for item in items:
            if isinstance(item, MemberEvent):
                # The poll (when on) is the authority on status; the stream only hurries.
                names, refused = registry.apply_event(item, revive=not settings.serf_rpc)
                for m in item.members:
                    # The poll usually saw it first; repeat it only when it is news.
                    log.log(logging.INFO if m.name in names else logging.DEBUG,
                            "%s member=%s addr=%s source=stream", item.kind, m.name, m.addr)
                    if m.name in names:
                        metrics.member_event(str(item.kind))
                _log_refused(refused)
                metrics.refused(refused)
                changed |= bool(names)
                last_key = None  # the stream lags the poll: let the next poll correct it
            elif isinstance(item, Snapshot):
                snapshot = item
            elif item is TOUCHED:
                changed = touched = True
        now = time.monotonic()
        resync = now >= next_resync
        if snapshot is not None:
            last_snapshot = snapshot
        elif resync or touched:
            # The poll's latest list is the truth: a resync, or a registry file changed
            # behind lbsync's back (damaged, deleted), is answered with it. A resync
            # rarely finds a fresh list in its batch, so without this it healed nothing.
            snapshot = last_snapshot
        if snapshot is not None:
            key = _snapshot_key(snapshot.members)
            if key != last_key or resync or touched:
                names, refused = registry.sync(snapshot.members, time.time())
                _log_refused(refused)
                metrics.refused(refused)
                for name in names:
                    stored = registry.get(name)
                    kind = stored.last_event if stored else "member-reap"
                    log.info("%s member=%s addr=%s source=members", kind, name,
                             stored.addr if stored else "-")
                    metrics.member_event(kind)
                changed |= bool(names)
                last_key = key
        if changed or busy or resync:
            started = time.monotonic()
            try:
                result = reconciler.tick(now)
                busy = result.busy
                metrics.observe_pass(result, time.monotonic() - started, time.time())
            except LbsyncError as e:
                log.error("reconcile failed: %s", e)
                busy = True
                metrics.failed_pass(time.monotonic() - started)
            except Exception:
                # A bug must not stop the load balancer from following the fleet: log it
                # with its traceback and try again on the next pass.
                log.exception("reconcile crashed; retrying")
                busy = True
                metrics.failed_pass(time.monotonic() - started)
        if resync:
            next_resync = now + settings.resync_interval


def _log_refused(refused: list[Refusal]) -> None:
    for r in refused:
        log.warning("refused member=%r: %s", r.member, r.reason)
