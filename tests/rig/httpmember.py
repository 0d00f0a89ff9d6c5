"""The light HTTP member of the rig: it names the node that answered (tests, benchmarks).

`/info` answers an HTML page naming the node (what HAProxy's health check asks for),
`/mydata` and every other path a small JSON body. One process can serve many
addresses (`--listen ADDR:PORT=NAME` several times), so a 200-member benchmark does
not need 200 Python processes. `/slow?s=N` holds the connection N seconds, to show a
drain waiting for sessions.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def make_handler(node: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle on, the body waits for the
        # client's delayed ACK (40 ms) on every kept-alive request.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlparse(self.path)
            if url.path == "/slow":
                time.sleep(min(float(parse_qs(url.query).get("s", ["1"])[0]), 120.0))
            if url.path == "/info":
                body = f"<html><body><h1>node {node}</h1></body></html>\n".encode()
                ctype = "text/html"
            else:
                body = json.dumps({"node": node, "path": url.path}).encode() + b"\n"
                ctype = "application/json"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Node", node)
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # health checks every second would flood the log

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog (5) overflows when HAProxy opens several connections at once,
    # and a dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 128


def serve(listens: list[tuple[str, int, str]]) -> None:
    servers = [_Server((host, port), make_handler(name)) for host, port, name in listens]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for s in servers:
        s.shutdown()


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
    serve(listens)


if __name__ == "__main__":
    main()
