"""`/info` of an edge node: a small HTML page that names the node.

HAProxy's health check (`GET /info`, 2xx) and the sidecar's readiness check ask for it.
Crossbar's own `nodeinfo` page shows the node's public key but not its id, so each proxy
worker serves this Twisted resource instead, through Crossbar's `resource` web service
(templates/crossbar.json.j2):

    "info": {"type": "resource", "classname": "lbsync.edge.info.make",
             "extra": {"node": "node1", "worker": "proxy1", "realm": "realm1"}}

Crossbar imports this module inside the worker and calls `make(extra)`. Twisted belongs
to the optional `edge` extra; only this module needs it.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Mapping

from twisted.web.resource import Resource
from twisted.web.server import Request

from .. import __version__


def page(node: str, facts: Mapping[str, str]) -> str:
    """The HTML: `<h1>node NAME</h1>` and a list of facts, every value escaped."""
    name = html.escape(node)
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>\n"
                   for k, v in facts.items())
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>node {name}</title></head>\n<body>\n<h1>node {name}</h1>\n"
            f"<dl>\n{rows}</dl>\n</body></html>\n")


class InfoPage(Resource):
    """200 text/html on GET (and the same headers on HEAD) for /info and below it."""

    isLeaf = True

    def __init__(self, node: str, worker: str | None = None, realm: str | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.node = node
        self.static = {k: v for k, v in (("node", node), ("worker", worker), ("realm", realm),
                                         ("pid", str(os.getpid())), ("lbsync", __version__))
                       if v}

    def _body(self, request: Request) -> bytes:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = page(self.node, {**self.static, "time": now}).encode()
        for name, value in ((b"Content-Type", b"text/html; charset=utf-8"),
                            (b"Cache-Control", b"no-store"),
                            (b"X-Node", self.node.encode()),
                            (b"Content-Length", b"%d" % len(body))):
            request.setHeader(name, value)  # type: ignore[no-untyped-call]
        return body

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (Twisted's names)
        return self._body(request)

    def render_HEAD(self, request: Request) -> bytes:  # noqa: N802
        self._body(request)
        return b""  # a body here would make Twisted log a warning on every check


def make(extra: Mapping[str, object]) -> InfoPage:
    """Crossbar's factory call for a `resource` web service: `make(config["extra"])`."""
    node = extra.get("node")
    if not isinstance(node, str) or not node:
        raise ValueError(f"lbsync.edge.info: extra.node must be the node name, not {node!r}")

    def text(key: str) -> str | None:
        value = extra.get(key)
        return value if isinstance(value, str) and value else None

    return InfoPage(node, worker=text("worker"), realm=text("realm"))
