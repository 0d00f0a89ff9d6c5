"""/info of an edge node: the Twisted resource Crossbar's proxy workers serve."""

from __future__ import annotations

import os
import re

import pytest

pytest.importorskip("twisted.web", reason="Twisted comes with the edge extra")

from twisted.web.test.requesthelper import DummyRequest  # noqa: E402

from lbsync import __version__  # noqa: E402
from lbsync.edge.info import InfoPage, make, page  # noqa: E402


def render(resource: InfoPage, method: bytes = b"GET") -> tuple[bytes, DummyRequest]:
    request = DummyRequest([b""])
    request.method = method
    body = resource.render(request)
    assert isinstance(body, bytes)
    return body, request


def header(request: DummyRequest, name: bytes) -> bytes | None:
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


def test_get_is_an_html_page_naming_the_node() -> None:
    body, request = render(make({"node": "node1", "worker": "proxy2", "realm": "realm1"}))
    assert request.responseCode in (None, 200)  # Twisted's default is 200
    assert header(request, b"content-type") == b"text/html; charset=utf-8"
    assert header(request, b"content-length") == str(len(body)).encode()
    assert header(request, b"x-node") == b"node1"
    assert header(request, b"location") is None  # no redirect
    text = body.decode()
    assert "<h1>node node1</h1>" in text and "<title>node node1</title>" in text
    for fact, value in (("worker", "proxy2"), ("realm", "realm1"), ("lbsync", __version__),
                        ("pid", str(os.getpid()))):
        assert f"<dt>{fact}</dt><dd>{value}</dd>" in text
    assert re.search(r"<dt>time</dt><dd>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ</dd>", text)


def test_head_has_the_headers_and_no_body() -> None:
    resource = make({"node": "node1"})
    get_body, _ = render(resource)
    body, request = render(resource, b"HEAD")
    assert body == b""
    assert header(request, b"content-type") == b"text/html; charset=utf-8"
    assert int(header(request, b"content-length") or 0) == len(get_body)


def test_the_name_is_escaped() -> None:
    text = page('<b>"x"&', {"worker": "<i>"})
    assert "<h1>node &lt;b&gt;&quot;x&quot;&amp;</h1>" in text
    assert "<dd>&lt;i&gt;</dd>" in text
    assert "<b>" not in text and "<i>" not in text


def test_missing_facts_are_left_out() -> None:
    body, _ = render(make({"node": "node1", "worker": 7}))
    assert b"<dt>worker</dt>" not in body and b"<dt>realm</dt>" not in body


@pytest.mark.parametrize("extra", [{}, {"node": ""}, {"node": 3}])
def test_make_needs_the_node_name(extra: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="extra.node"):
        make(extra)

