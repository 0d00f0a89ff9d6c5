"""The agent's Prometheus metrics: what it did (counters) and what the fleet looks like now.

Two kinds of figures, kept apart:

* **What lbsync did**, counted as it happens: membership events as the agent sees them,
  reconcile passes and their duration, Runtime API actions and their result, refused
  members, reloads, the time of the last good pass. The agent loop hands each finished
  pass (`reconcile.TickResult`) to `Metrics.observe_pass`; the reconcile code itself knows
  nothing of Prometheus.
* **How things stand**, read when Prometheus scrapes: servers by HAProxy state, Serf
  members by status and the drift between Serf, HAProxy and haproxy.cfg, computed by
  `status.status_rows` exactly as `lbsync status` does. Health checks move a server UP or
  DOWN without any pass, so a gauge set by passes would lag; a scrape-time read never
  does, and costs nothing when nobody scrapes.

Every agent has its own CollectorRegistry (never prometheus_client's global one), so
tests and several agents in one process do not share figures. `MetricsServer` is the
small HTTP server behind `--metrics-bind`.
"""

from __future__ import annotations

import logging
import platform
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import __version__
from .apply import still_attached
from .model import EventKind, LbsyncError, Member, MemberStatus, Refusal, ServerState
from .reconcile import TickResult
from .settings import Settings, parse_hostport
from .status import config_servers, status_rows

log = logging.getLogger("lbsync.metrics")
_T = TypeVar("_T")

# The registry's names for what the members poll sees; "member-leaving" is lbsync's own
# (Serf's status `leaving`, before its member-leave).
EVENT_TYPES = (*(str(k) for k in EventKind), "member-leaving")
# apply.Step.action: maint is a leave, drain a failed member's first step.
ACTIONS = ("add", "undrain", "maint", "drain", "del", "kill", "weight", "addr")
RESULTS = ("ok", "error", "retry")
STATES = ("UP", "DOWN", "DRAIN", "MAINT")  # ServerState.state_word
REFUSAL_KINDS = ("name", "tags", "address", "port", "weight", "agent-port", "other")
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsError(LbsyncError):
    """The metrics endpoint cannot be served as asked."""


def refusal_kind(reason: str) -> str:
    """A refusal's reason (validate.py / desired.py wording) as a small label value."""
    for prefix, kind in (("tag agent-port ", "agent-port"), ("tag port ", "port"),
                         ("tag ", "tags"), ("weight ", "weight"), ("address ", "address"),
                         ("node name ", "name"), ("empty node name", "name")):
        if reason.startswith(prefix):
            return kind
    return "other"


def op_result(outcome_error: str | None, retry: bool) -> str:
    """ok; retry: a `del server` HAProxy refuses while connections are still attached, which
    the next pass repeats by design; error: any other refusal."""
    if outcome_error is None:
        return "ok"
    return "retry" if retry else "error"


# --- the fleet as it stands (pure) -----------------------------------------------------


@dataclass(frozen=True)
class FleetView:
    servers: Mapping[str, int] | None  # state word -> count; None: HAProxy did not answer
    members: Mapping[str, int] | None  # Serf status -> count; None: no member list
    drift: int | None  # members with drift (as `lbsync status --check`); None: a view missing


def fleet_view(members: Mapping[str, Member] | None, actual: Sequence[ServerState] | None,
               config_text: str | None, settings: Settings,
               version: tuple[int, ...]) -> FleetView:
    """Counts for the scrape-time gauges from whichever views could be read."""
    servers = None
    if actual is not None:
        servers = dict.fromkeys(STATES, 0)
        for s in actual:
            servers[s.state_word] = servers.get(s.state_word, 0) + 1
    by_status = None
    if members is not None:
        by_status = {str(st): 0 for st in MemberStatus}
        for m in members.values():
            by_status[str(m.status)] = by_status.get(str(m.status), 0) + 1
    drift = None
    if members is not None and actual is not None and config_text is not None:
        rows = status_rows(members, actual, config_servers(config_text), settings, version)
        drift = sum(1 for r in rows if r.drift)
    return FleetView(servers, by_status, drift)


@dataclass(frozen=True)
class Views:
    """Where the scrape-time gauges read the fleet. Each callable may raise (LbsyncError,
    OSError): that view is then missing from the scrape and lbsync_source_up says so."""

    members: Callable[[], Mapping[str, Member]]  # Serf's member list (or the registry)
    servers: Callable[[], Sequence[ServerState]]  # HAProxy's `show servers state`
    config_text: Callable[[], str]  # haproxy.cfg as on disk
    settings: Settings
    version: tuple[int, int, int]
    members_source: str = "serf"  # "serf" or "registry", for the HELP text and logs


class _FleetCollector(Collector):
    def __init__(self, views: Views) -> None:
        self.views = views
        self._down: set[str] = set()

    def _read(self, source: str, read: Callable[[], _T]) -> _T | None:
        try:
            value = read()
        except Exception as e:  # noqa: BLE001 (a scrape reports a missing view, never fails)
            if source not in self._down:
                log.warning("metrics: cannot read %s: %s", source, e)
                self._down.add(source)
            return None
        if source in self._down:
            log.info("metrics: %s readable again", source)
            self._down.discard(source)
        return value

    def collect(self) -> Iterator[Metric]:
        v = self.views
        members = self._read(v.members_source, v.members)
        actual = self._read("haproxy", v.servers)
        text = self._read("config", v.config_text)
        view = fleet_view(members, actual, text, v.settings, v.version)
        up = GaugeMetricFamily(
            "lbsync_source_up", "1 when lbsync could read this view of the fleet at the "
            "scrape (serf or registry, haproxy: the Runtime API, config: haproxy.cfg)",
            labels=["source"])
        for source, value in ((v.members_source, members), ("haproxy", actual),
                              ("config", text)):
            up.add_metric([source], 0.0 if value is None else 1.0)
        yield up
        if view.servers is not None:
            g = GaugeMetricFamily(
                "lbsync_servers", f"Servers of backend {v.settings.backend} by HAProxy state "
                "(UP, DOWN, DRAIN, MAINT), read from the Runtime API at the scrape",
                labels=["state"])
            for state, n in sorted(view.servers.items()):
                g.add_metric([state], float(n))
            yield g
        if view.members is not None:
            g = GaugeMetricFamily(
                "lbsync_serf_members", f"Members by status, from {v.members_source} "
                "(every role; at the scrape)", labels=["status"])
            for status, n in sorted(view.members.items()):
                g.add_metric([status], float(n))
            yield g
        if view.drift is not None:
            yield GaugeMetricFamily(
                "lbsync_drift_members", "Members on which Serf, HAProxy and haproxy.cfg "
                "disagree, as `lbsync status --check` counts them (0 when converged)",
                value=float(view.drift))


# --- what lbsync did ---------------------------------------------------------------------


class Metrics:
    """One agent's metrics and the calls that keep them. Thread-safe (prometheus_client
    locks every value); the agent loop calls it, the HTTP server reads it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "lbsync_membership_events", "Membership changes lbsync recorded, by type "
            "(member-join/leave/failed/update/reap; member-leaving: Serf status leaving)",
            ["type"], registry=r)
        self.passes = Counter(
            "lbsync_reconcile_passes", "Reconcile passes, by result (ok: HAProxy reachable, "
            "config accepted, no command refused)", ["result"], registry=r)
        self.pass_seconds = Histogram(
            "lbsync_reconcile_duration_seconds", "Time one reconcile pass took",
            buckets=PASS_BUCKETS, registry=r)
        self.ops = Counter(
            "lbsync_runtime_ops", "Runtime API actions on one server (add, undrain, maint: "
            "a leave, drain: a failed member, del, kill, weight, addr), by result (ok, "
            "error, retry: del while connections are still attached)", ["op", "result"],
            registry=r)
        self.refusals = Counter(
            "lbsync_refused_members", "Member inputs refused (each member and reason counted "
            "once), by kind of problem", ["reason"], registry=r)
        self.reloads = Counter(
            "lbsync_reloads", "HAProxy reloads lbsync asked for (structure changes only)",
            registry=r)
        self.last_good = Gauge(
            "lbsync_last_good_pass_timestamp_seconds", "Unix time of the last good "
            "reconcile pass (0: none yet)", registry=r)
        self.build = Info("lbsync_build", "lbsync's version and the HAProxy it drives",
                          registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, resident memory, ...
        for kind in EVENT_TYPES:  # every series exists from the start, so increase() works
            self.events.labels(kind)
        for result in ("ok", "error"):
            self.passes.labels(result)
        for op in ACTIONS:
            for result in RESULTS:
                self.ops.labels(op, result)
        for kind in REFUSAL_KINDS:
            self.refusals.labels(kind)
        self._seen: set[Refusal] = set()
        self._lock = threading.Lock()
        self.set_build(None)

    def set_build(self, haproxy_version: tuple[int, ...] | None) -> None:
        self.build.info({
            "version": __version__,
            "haproxy_version": ".".join(map(str, haproxy_version)) if haproxy_version else "",
            "python_version": platform.python_version(),
        })

    def member_event(self, kind: str) -> None:
        self.events.labels(kind).inc()

    def refused(self, refusals: Iterable[Refusal]) -> None:
        """Count refusals not seen before (every pass and resync repeats them)."""
        with self._lock:
            new = [r for r in refusals if r not in self._seen]
            self._seen.update(new)
        for r in new:
            self.refusals.labels(refusal_kind(r.reason)).inc()

    def observe_pass(self, result: TickResult, seconds: float, now: float) -> None:
        """One finished pass; `now` is Unix time."""
        self.passes.labels("ok" if result.problem is None else "error").inc()
        self.pass_seconds.observe(seconds)
        for o in result.outcomes:
            self.ops.labels(o.step.action, op_result(o.error, still_attached(o))).inc()
        self.refused(result.refused)
        if result.reloaded:
            self.reloads.inc()
        if result.problem is None:
            self.last_good.set(now)

    def failed_pass(self, seconds: float) -> None:
        """A pass that raised."""
        self.passes.labels("error").inc()
        self.pass_seconds.observe(seconds)

    def watch(self, views: Views) -> None:
        """Add the scrape-time gauges (servers, members, drift) read from these views."""
        self.registry.register(_FleetCollector(views))

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent): for tests and logs."""
        return self.registry.get_sample_value(name, labels) or 0.0


# --- the HTTP endpoint -------------------------------------------------------------------


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per scrape would drown the agent's log


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """GET /metrics on `bind` (HOST:PORT, `*:PORT` for every IPv4 address).

    The socket is bound in the constructor, so a bad address or a port in use fails there,
    before the agent writes anything; `start()` serves, `stop()` closes.
    """

    def __init__(self, bind: str, registry: CollectorRegistry) -> None:
        host, port = parse_hostport(bind, "--metrics-bind", host_required=False)
        host = "" if host == "*" else host
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if environ.get("PATH_INFO") == "/metrics":
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"lbsync serves its metrics at /metrics\n"]

        try:
            self._httpd = make_server(host, port, app,
                                      server_class=_Server6 if ":" in host else _Server,
                                      handler_class=_Handler)
        except OSError as e:
            raise MetricsError(
                f"--metrics-bind: cannot listen on {bind} ({e.strerror or e})") from None
        self.bind = bind
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()
