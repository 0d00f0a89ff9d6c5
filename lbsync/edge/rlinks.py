"""The router component that keeps an edge node's links to the other edge nodes.

Crossbar runs it inside the router worker (templates/crossbar.json.j2, `components`):

    {"type": "class", "classname": "lbsync.edge.rlinks.FleetLinks", "realm": "realm1",
     "role": "trusted", "extra": {"realm": "realm1"}}

Every POLL seconds it reads CBDIR/links.json (written by the sidecar from Serf's members,
see lbsync.edge.links), starts a link to each new peer and stops the link to each peer
that is gone, and writes each link's state to CBDIR/links-state.json. It registers this
node's beacon procedure, which the node's links mirror onto every peer, and every
BEACON_POLL seconds looks up each peer's beacon here: found, the peer's link to this router
forwards registrations (the other direction of the pair).

The links are Crossbar's own router links: its RLinkLocalSession (the leg on this router)
and RLinkRemoteSession (the leg on the peer, logging in with cryptosign and the node key),
started the way Crossbar's RLinkManager.start_link starts them. lbsync does not call
start_link itself because in Crossbar 26.10.1 a started link can never be stopped:
`stop_link` raises NotImplementedError and the manager keeps no handle on the connection
that reconnects forever. Here each link keeps its reconnecting ClientService, so a departed
peer is unlinked, and retries back off from 0.5 s to at most 5 s (Crossbar's: 1 s to 60 s),
so a restarted peer is linked again within seconds.

Crossbar hands router components their RouterController only under `crossbar edge` with
`expose_controller`; under `crossbar start` it is reached through the session's
router-side transport (RouterApplicationSession -> Router -> RouterFactory -> worker).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory
from autobahn.wamp.types import ComponentConfig
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall

from ..files import atomic_write
from . import links as L

POLL = 0.1  # seconds between looks at links.json and at the links' state
BEACON_POLL = 0.5  # seconds between looks for the peers' beacons
# Reconnect after 0.5 s, then 1.5 times longer each time, at most 5 s apart.
RETRY = backoffPolicy(initialDelay=0.5, maxDelay=5.0, factor=1.5)


def find_controller(session: ApplicationSession) -> Any:
    """This router worker's RouterController (see the module's docstring)."""
    from crossbar.worker.router import RouterController

    controller = session.config.controller
    if controller is None:
        transport = getattr(session, "_transport", None)
        router = getattr(transport, "_router", None)
        controller = getattr(getattr(router, "_factory", None), "_worker", None)
    if not isinstance(controller, RouterController):
        raise RuntimeError("lbsync.edge.rlinks: runs only as a router component of Crossbar's "
                           f"router worker (found {controller!r})")
    return controller


@dataclass
class _Link:
    peer: L.Peer
    local: Any  # RLinkLocalSession
    remote: Any  # RLinkRemoteSession
    tracker: Any  # crossbar's RLink: .connected is kept by the sessions
    service: ClientService | None
    state: L.LinkState


class FleetLinks(ApplicationSession):
    def onJoin(self, details: Any) -> None:  # noqa: N802 (autobahn's names)
        extra = self.config.extra or {}
        self._cbdir = Path(extra["cbdir"])
        self._realm_name = str(extra.get("realm") or self.config.realm)
        controller = find_controller(self)
        realms = [r for r in controller.realms.values()
                  if r.config.get("name") == self._realm_name]
        if not realms:
            raise RuntimeError(f"lbsync.edge.rlinks: no realm {self._realm_name!r} on this router")
        self._controller = controller
        self._router_realm = realms[0]
        self._links: dict[str, _Link] = {}
        self._wanted_text: str | None = None
        self._wanted: dict[str, L.Peer] = {}
        self._written: list[L.LinkState] | None = None  # the states last written
        self._node = str(extra["node"])
        self._loop = LoopingCall(self._tick)
        self._loop.start(POLL, now=True)
        self._beacons = LoopingCall(self._look_for_beacons)
        self._beacons.start(BEACON_POLL, now=False)
        # Peers see this router's links to them by this procedure (taken already, say by a
        # client of the demo's anonymous role: they wait --links-wait for this node).
        self.register(lambda: self._node, L.beacon(self._node)).addErrback(
            lambda f: self.log.error("fleet links: cannot register {uri}: {e}",
                                     uri=L.beacon(self._node), e=str(f.value)))
        self.log.info("fleet links: following {path}", path=str(self._cbdir / L.WANTED_FILE))

    def onLeave(self, details: Any) -> None:  # noqa: N802
        for loop in (getattr(self, "_loop", None), getattr(self, "_beacons", None)):
            if loop is not None and loop.running:
                loop.stop()
        for name in list(getattr(self, "_links", {})):
            self._stop(name)
        super().onLeave(details)

    # --- one look ----------------------------------------------------------------------

    def _tick(self) -> None:
        try:
            self._read_wanted()
            for name in [n for n, link in self._links.items()
                         if self._wanted.get(n) != link.peer]:
                self._stop(name)
            for name, peer in self._wanted.items():
                if name not in self._links:
                    self._start(peer)
            self._track()
        except Exception:  # one bad look must not stop the loop
            self.log.failure("fleet links: this look failed: {log_failure.value}")

    def _read_wanted(self) -> None:
        try:
            text = (self._cbdir / L.WANTED_FILE).read_text()
        except FileNotFoundError:
            text = ""
        if text == self._wanted_text:
            return
        self._wanted_text = text
        if not text:
            self._wanted = {}
            return
        try:
            realm, peers = L.parse_wanted(text)
        except L.LinkError as e:  # keep the links we have
            self.log.error("fleet links: {e}; keeping the current links", e=str(e))
            return
        if realm != self._realm_name:
            self.log.error("fleet links: {file} names realm {realm}, this component serves "
                           "{mine}; ignored", file=L.WANTED_FILE, realm=realm,
                           mine=self._realm_name)
            return
        self._wanted = peers

    @inlineCallbacks
    def _look_for_beacons(self) -> Any:
        """Which peers' links to this router forward registrations (their beacon is here)."""
        try:
            for name in list(self._links):
                found = yield self.call("wamp.registration.lookup", L.beacon(name))
                link = self._links.get(name)
                if link is not None and (found is not None) != link.state.incoming:
                    link.state = replace(link.state, incoming=found is not None)
                    self.log.info("fleet link from {peer} {what}", peer=name,
                                  what="up" if found is not None else "down")
        except Exception:  # the next look tries again
            self.log.failure("fleet links: looking for beacons failed: {log_failure.value}")

    def _track(self) -> None:
        """Log each link that came up or went down; write the state file on a change."""
        now = time.time()
        for link in self._links.values():
            up = bool(link.tracker.connected)
            if up != link.state.connected:
                link.state = replace(link.state, connected=up, since=now,
                                     ups=link.state.ups + up, downs=link.state.downs + (not up))
                self.log.info("fleet link to {peer} {what} ({url})", peer=link.peer.name,
                              what="up" if up else "down", url=link.peer.url)
        states = [lk.state for lk in self._links.values()]
        if states != self._written:
            self._written = states
            atomic_write(self._cbdir / L.STATE_FILE, L.render_state(os.getpid(), states))

    # --- start and stop ------------------------------------------------------------------

    def _start(self, peer: L.Peer) -> None:
        """Crossbar's RLinkManager.start_link, but the reconnecting service is kept."""
        from crossbar.worker.rlink import (
            RLink,
            RLinkConfig,
            RLinkLocalSession,
            RLinkRemoteSession,
        )

        link_id = f"lbsync_{peer.name}"
        config = RLinkConfig.parse(self._controller.personality, {
            "id": link_id,
            "realm": self._realm_name,
            "transport": {"type": "websocket", "endpoint": peer.endpoint(), "url": peer.url,
                          "serializers": ["cbor"]},
            # Pull: mirror this router's subscriptions and registrations onto the peer.
            # The peer's link to here carries the other direction (see lbsync.edge.links).
            "forward_local_events": True, "forward_remote_events": False,
            "forward_local_invocations": True, "forward_remote_invocations": False,
        }, id=link_id)
        tracker = RLink(link_id, config)
        local_extra: dict[str, Any] = {
            "other": None, "on_ready": Deferred(), "rlink": link_id, "tracker": tracker,
            "forward_events": config.forward_local_events,
            "forward_invocations": config.forward_local_invocations,
        }
        remote_extra: dict[str, Any] = {
            "rlink_manager": self._router_realm.rlink_manager, "other": None,
            "on_ready": Deferred(),
            "authid": None, "exclude_authid": config.exclude_authid,
            "forward_events": config.forward_remote_events,
            "forward_invocations": config.forward_remote_invocations,
        }
        local = RLinkLocalSession(ComponentConfig(self._realm_name, local_extra))
        remote = RLinkRemoteSession(ComponentConfig(self._realm_name, remote_extra))
        local_extra["other"], remote_extra["other"] = remote, local
        tracker.local = local
        tracker.remote = remote  # type: ignore[assignment]  # Crossbar's hint is wrong
        link = _Link(peer, local, remote, tracker, None,
                     L.LinkState(peer.name, peer.url, False, time.time(), 0, 0))
        self._links[peer.name] = link
        self._controller._router_session_factory.add(
            local, self._router_realm.router, authid=link_id, authrole="trusted",
            authextra=local_extra)

        def connect(_: object) -> None:
            if self._links.get(peer.name) is not link:  # stopped meanwhile
                return
            from crossbar.common.twisted.endpoint import create_connecting_endpoint_from_config

            endpoint = create_connecting_endpoint_from_config(
                config.transport["endpoint"], self._controller.cbdir,
                self._controller._reactor, self.log)
            factory = WampWebSocketClientFactory(lambda: remote, url=peer.url,
                                                 serializers=None)
            factory.setProtocolOptions(tcpNoDelay=True, autoPingInterval=10.0,
                                       autoPingTimeout=5.0, openHandshakeTimeout=2.5)
            factory.noisy = False
            link.service = ClientService(endpoint, factory,  # type: ignore[arg-type]
                                         retryPolicy=RETRY)
            link.service.startService()

        local_extra["on_ready"].addCallback(connect)
        self.log.info("fleet link to {peer}: starting ({url})", peer=peer.name, url=peer.url)

    def _stop(self, name: str) -> None:
        link = self._links.pop(name)
        if link.service is not None:
            link.service.stopService()  # closes the connection and stops retrying
        if link.local.is_attached():
            link.local.leave()
        self.log.info("fleet link to {peer}: stopped ({url})", peer=name, url=link.peer.url)
