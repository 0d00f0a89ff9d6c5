"""The light HTTP member of the rig: it names the node that answered (tests, benchmarks).

`/info` answers an HTML page naming the node (what HAProxy's health check asks for),
`/mydata` and every other path a small JSON body. One process can serve many
addresses (`--listen ADDR:PORT=NAME` several times), so a 200-member benchmark does
not need 200 Python processes. `/slow?s=N` holds the connection N seconds, to show a
drain waiting for sessions.

One asyncio loop serves every address, in one thread. (It was http.server's threading
server: a thread per address polling twice a second and a new thread per connection. In
bench part 5's join storm, 200 Serf agents starting on two cores, those threads waited
their turn so long that HAProxy's first checks took a second to be answered, and the
storm's last stage, the first passing check, measured this process, not lbsync.)
HTTP/1.1 keep-alive, HEAD and Content-Length request bodies are understood; anything
but GET and HEAD is answered 501.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 16384  # bytes of request line and headers; longer is answered 431
REASONS = {200: "OK", 400: "Bad Request", 431: "Request Header Fields Too Large",
           501: "Not Implemented"}


def answer(node: str, method: str, target: str) -> tuple[int, str, bytes]:
    """(status, content type, body) for one request to NODE."""
    if method not in ("GET", "HEAD"):
        return 501, "text/plain", f"{method} is not served here\n".encode()
    path = urlsplit(target).path
    if path == "/info":
        return 200, "text/html", f"<html><body><h1>node {node}</h1></body></html>\n".encode()
    return 200, "application/json", json.dumps({"node": node, "path": path}).encode() + b"\n"


def slow_seconds(target: str) -> float:
    """How long `/slow?s=N` holds the answer (at most 120 s); 0 for any other path."""
    url = urlsplit(target)
    if url.path != "/slow":
        return 0.0
    try:
        return max(0.0, min(float(parse_qs(url.query).get("s", ["1"])[0]), 120.0))
    except ValueError:
        return 1.0


def response(node: str, status: int, ctype: str, body: bytes, *, head: bool,
             close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS[status]}", f"Content-Type: {ctype}",
             f"Content-Length: {len(body)}", f"X-Node: {node}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


async def serve_connection(node: str, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Requests on one connection, in turn, until the client closes or asks to."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                writer.write(response(node, 431, "text/plain", b"", head=False, close=True))
                break
            except asyncio.IncompleteReadError:
                break  # the client closed between requests (a check, wrk's end)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                writer.write(response(node, 400, "text/plain", b"bad request line\n",
                                      head=False, close=True))
                break
            method, target, version = parts
            headers = {}
            for line in header_lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip().lower()
            length = headers.get("content-length", "0")
            if length.isdigit() and int(length) > 0:
                await reader.readexactly(int(length))  # a body is read, not used
            connection = headers.get("connection", "")
            close = connection == "close" or (version == "HTTP/1.0" and
                                              connection != "keep-alive")
            if delay := slow_seconds(target):
                await asyncio.sleep(delay)
            status, ctype, body = answer(node, method, target)
            writer.write(response(node, status, ctype, body, head=method == "HEAD",
                                  close=close))
            await writer.drain()
            if close:
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # a reset (HAProxy ends a check, a killed client): nothing to answer
    finally:
        writer.close()


async def serve(listens: list[tuple[str, int, str]]) -> None:
    servers = []
    for host, port, name in listens:
        async def on_connection(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                                node: str = name) -> None:
            await serve_connection(node, r, w)
        servers.append(await asyncio.start_server(on_connection, host, port, backlog=128,
                                                  reuse_address=True, limit=MAX_HEAD))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", action="append", required=True, metavar="ADDR:PORT=NAME")
    args = p.parse_args()
    listens = []
    for item in args.listen:
        hostport, _, name = item.partition("=")
        host, _, port = hostport.rpartition(":")
        if not (host and port.isdigit() and name):
            p.error(f"--listen {item!r}: expected ADDR:PORT=NAME")
        listens.append((host, int(port), name))
    try:
        asyncio.run(serve(listens))
    except OSError as e:
        raise SystemExit(f"httpmember: cannot listen: {e}") from None


if __name__ == "__main__":
    main()
