"""The daemon behind `lbsync agent`: follow Serf (stream + fast members poll) and the
registry folder, reconcile.

This module wires the real effects: the Runtime API, the master CLI, `haproxy -c`, the
Serf follower and the registry watch feeding one queue, the metrics. The loop that drains
the queue and reconciles is lbsync.loop; the pass itself lbsync.reconcile.

When the Serf agent restarts without its snapshot it knows no member; the follower then
joins the members the registry knows alive (lbsync.serf.rejoin) before the loop sees the
empty list, so the registry and HAProxy never lose them.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .certwatch import CertWatch
from .haproxy.binary import check_haproxy_config, haproxy_version
from .haproxy.certs import Certificates, listed
from .haproxy.master import MasterCLI
from .haproxy.runtime import RuntimeAPI, response_error
from .loop import TOUCHED, Loop, RealClock, Snapshot
from .metrics import Metrics, MetricsServer, Views
from .model import LbsyncError, Member
from .reconcile import Effects, Reconciler
from .registry import Registry
from .serf.follow import Follower
from .serf.rejoin import Rejoin
from .serf.rpc import SerfAuthError, SerfError, SerfRPC
from .settings import Settings

log = logging.getLogger("lbsync.daemon")

# Python's GIL switch interval for the daemon (CPython's default is 5 ms). The loop's
# thread makes many short system calls (a registry file is ~10), and each hands the GIL
# to any other thread that wants it (the Serf follower decoding a members list, the
# registry watch) for up to the interval: with one busy thread beside it, 200 registry
# writes took 4.9 s instead of 0.09 s; at 1 ms, 1.3 s. In a join storm that convoy held
# the registry 6 s behind Serf.
SWITCH_INTERVAL = 0.001


# Events that change a registry file. Watchdog also reports plain reads ("opened",
# "closed_no_write"): counting those made every pass, which reads the registry, queue
# the next one, and the daemon spun at 100 % CPU.
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


def detect_version(settings: Settings, runtime: RuntimeAPI) -> tuple[int, int, int]:
    """The running HAProxy's version when it answers, else the binary's (same package)."""
    try:
        return runtime.version()
    except LbsyncError:
        return haproxy_version(settings.haproxy_bin)


def check_serf(host: str, port: int, auth_key: str | None) -> None:
    """Fail at start on a wrong auth key; a Serf agent not up yet is waited for."""
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


def cert_watch(settings: Settings) -> CertWatch | None:
    """With --tls-cert: its files rotated through the admin Runtime API, no reload."""
    tls_cert = settings.tls_cert
    if tls_cert is None:
        return None
    return CertWatch(lambda: listed(tls_cert), Certificates(settings.runtime_socket))


def run_daemon(settings: Settings, stop: threading.Event, metrics: Metrics | None = None,
              metrics_server: MetricsServer | None = None) -> None:
    """Follow and reconcile until `stop` is set. `metrics_server` (already bound, serving
    `metrics.registry`) is started here and closed on the way out."""
    metrics = metrics or Metrics()
    sys.setswitchinterval(SWITCH_INTERVAL)
    registry = Registry(settings.registry_dir)
    settings.registry_dir.mkdir(parents=True, exist_ok=True)
    runtime = RuntimeAPI(settings.runtime_socket)
    # `lbsync agent` has checked the binary exists; it runs `-v` only if HAProxy is down.
    version = detect_version(settings, runtime)
    master = MasterCLI(settings.master_socket) if settings.master_socket else None
    reconciler = Reconciler(settings, registry, version, Effects(
        runtime=runtime, master=master,
        haproxy_check=lambda p: check_haproxy_config(p, settings.haproxy_bin),
        response_error=response_error,
    ), background_writes=True)
    log.info("start version=haproxy-%s registry=%s runtime=%s serf=%s metrics=%s tls=%s",
             ".".join(map(str, version)), settings.registry_dir, settings.runtime_socket,
             f"{settings.serf_rpc[0]}:{settings.serf_rpc[1]}" if settings.serf_rpc
             else "off (registry only)",
             f"http://{settings.metrics_bind}/metrics" if metrics_server else "off",
             settings.tls_cert or "off")
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
        Loop(registry, reconciler, metrics, RealClock(), serf=bool(settings.serf_rpc),
             resync_interval=settings.resync_interval, certs=cert_watch(settings)).run(q, stop)
    finally:
        if follower is not None:
            follower.stop()
        observer.stop()
        observer.join(timeout=5)
        if metrics_server is not None:
            metrics_server.stop()
        reconciler.config.close()  # the file holds the last pass's servers
        log.info("stop reloads=%d", reconciler.config.reloads)
