"""A real HAProxy in master-worker mode on loopback, with tiny HTTP servers behind it.

Every port is picked free at run time and every file lives in a fresh temp directory, so
the tests never touch a user's HAProxy (8080, 9999, 1936) or each other. The whole
process group HAProxy runs in is killed in the finalizer, also when a test fails.

`haproxy_bin` runs every test that uses it twice, once per cookie path of lbsync:
"2.6" is the system's haproxy (Debian 12: 2.6, dynamic cookies), "3.0" is the binary
that LBSYNC_HAPROXY30 names (scripts/haproxy30.sh: trixie's 3.0, node-name cookies).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lbsync.haproxy.binary import haproxy_version
from lbsync.haproxy.master import MasterCLI
from lbsync.haproxy.runtime import RuntimeAPI, RuntimeAPIError
from tests.rig.haproxy import start_master
from tests.rig.procs import free_port, reap

BACKEND = "nodes"
COOKIE_KEY = "lbsync-test-key"  # the rig's dynamic-cookie-key
HAPROXY30_ENV = "LBSYNC_HAPROXY30"  # path of an HAProxy 3.0 binary (scripts/haproxy30.sh)
# Set by scripts/test.sh when scripts/haproxy30.sh failed: why 3.0 is not there.
HAPROXY30_REASON_ENV = "LBSYNC_HAPROXY30_REASON"
REQUIRE_HAPROXY30_ENV = "LBSYNC_REQUIRE_HAPROXY30"  # =1: no 3.0 is a failure, not a skip


@dataclass(frozen=True)
class HAProxyBin:
    """One haproxy executable the tests run; `label` is the pytest id ("2.6" or "3.0")."""

    label: str
    path: str
    version: tuple[int, int, int]

    @property
    def explicit_cookies(self) -> bool:
        """3.0+: lbsync gives each server its node name as cookie (`add server ... cookie`)."""
        return self.version >= (3, 0, 0)


@pytest.fixture(scope="session", params=["2.6", "3.0"])
def haproxy_bin(request: pytest.FixtureRequest) -> HAProxyBin:
    """The haproxy binary under test: the system's (before 3.0), then HAProxy 3.0."""
    label: str = request.param
    if label == "2.6":
        path = shutil.which("haproxy")
        if path is None:
            pytest.skip("haproxy is not on PATH")
        version = haproxy_version(path)
        if version >= (3, 0, 0):
            pytest.skip(f"the system haproxy is {_dotted(version)}: no HAProxy before 3.0 "
                        "here for the dynamic-cookie path")
        return HAProxyBin(label, path, version)
    path = os.environ.get(HAPROXY30_ENV, "")
    if not path:
        reason = (os.environ.get(HAPROXY30_REASON_ENV)
                  or f"{HAPROXY30_ENV} is not set (bash scripts/haproxy30.sh prints a path for it)")
        message = f"HAProxy 3.0 not available: {reason}"
        if os.environ.get(REQUIRE_HAPROXY30_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_HAPROXY30_ENV}=1)", pytrace=False)
        pytest.skip(message)
    version = haproxy_version(path)
    if version[:2] != (3, 0):
        pytest.fail(f"{HAPROXY30_ENV}={path} is HAProxy {_dotted(version)}, not 3.0",
                    pytrace=False)
    return HAProxyBin(label, path, version)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


# XXH64 (xxHash, 64 bits), which HAProxy hashes dynamic cookies with; pure Python so the
# tests need no extra package.
_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5, _M64 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5, (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M64, 31) * _P1) & _M64


def xxh64(data: bytes, seed: int = 0) -> int:
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        while i + 32 <= n:
            v = [_round(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little"))
                 for k in range(4)]
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for lane in v:
            h = ((h ^ _round(0, lane)) * _P1 + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while i + 8 <= n:
        h ^= _round(0, int.from_bytes(data[i:i + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M64
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i:i + 4], "little") * _P1) & _M64
        h = (_rotl(h, 23) * _P2 + _P3) & _M64
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _M64
        h = (_rotl(h, 11) * _P1) & _M64
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    return h ^ (h >> 32)


def dynamic_cookie(key: str, addr: str, port: int) -> str:
    """The cookie HAProxy's `dynamic` cookies give a server: XXH64 of the key, the address
    (network order) and the port (4 bytes, network order), as 16 hex digits. It depends on
    nothing else, so every load balancer with the same key agrees, across reloads."""
    packed = ipaddress.ip_address(addr).packed
    return f"{xxh64(key.encode() + packed + port.to_bytes(4, 'big')):016x}"


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # HAProxy killing a held session breaks the pipe: expected, not news


class HTTPNode:
    """An HTTP server on 127.0.0.1 that answers its name; GET /hold waits for `release()`."""

    def __init__(self, name: str):
        self.name = name
        self.held = threading.Semaphore(0)  # one release per /hold request that arrived
        self._release = threading.Event()
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/hold":
                    node.held.release()
                    node._release.wait(30)
                body = node.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep pytest output clean

        self.server = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def wait_held(self, count: int = 1, timeout: float = 5.0) -> None:
        for _ in range(count):
            if not self.held.acquire(timeout=timeout):
                raise AssertionError(f"no /hold request reached {self.name} within {timeout}s")

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Response:
    status: int
    body: str
    set_cookie: list[str]


def http_get(port: int, path: str = "/", cookie: str | None = None) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        resp = conn.getresponse()
        return Response(resp.status, resp.read().decode(), resp.headers.get_all("Set-Cookie") or [])
    finally:
        conn.close()


class HeldRequest:
    """A client whose request sits on a server until the server is released."""

    def __init__(self, port: int):
        self.result: Response | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self._thread.start()

    def _run(self, port: int) -> None:
        try:
            self.result = http_get(port, "/hold")
        except BaseException as exc:  # noqa: BLE001 (reported to the test through .result)
            self.result = exc

    def join(self, timeout: float = 10.0) -> Response | BaseException | None:
        self._thread.join(timeout)
        return self.result


CONFIG = """\
global
    stats socket {sock_dir}/admin.sock mode 600 level admin expose-fd listeners
    stats socket ipv4@127.0.0.1:{cli_port} level admin
    stats timeout 30s
    # Held test requests must not keep old workers alive after a reload.
    hard-stop-after 5s

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend fe_nodes
    bind 127.0.0.1:{nodes_port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    cookie SERVERID insert indirect nocache dynamic
    dynamic-cookie-key {cookie_key}

frontend fe_static
    bind 127.0.0.1:{static_port}
    default_backend static

backend static
    server s1 127.0.0.1:{static_server_port}
"""


@dataclass
class HAProxyRig:
    """One running HAProxy and how to reach it."""

    config: Path
    log: Path
    admin_socket: str
    cli_tcp: str
    master_socket: str
    nodes_port: int  # frontend of the dynamic backend
    static_port: int  # frontend of a backend with a static server (survives reloads)
    process: subprocess.Popen[bytes]
    haproxy: HAProxyBin
    nodes: list[HTTPNode] = field(default_factory=list)

    def runtime(self, kind: str = "unix") -> RuntimeAPI:
        return RuntimeAPI(self.admin_socket if kind == "unix" else self.cli_tcp)

    def master(self) -> MasterCLI:
        return MasterCLI(self.master_socket)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""


def _wait_started(rig: HAProxyRig, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    runtime = rig.runtime()
    while True:
        if rig.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {rig.process.returncode}:\n{rig.log_tail()}")
        try:
            runtime.version()
            rig.master().status()
            return
        except RuntimeAPIError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start:\n{rig.log_tail()}") from None
        time.sleep(0.05)


@pytest.fixture
def http_nodes() -> Iterator[list[HTTPNode]]:
    nodes = [HTTPNode(f"node{i}") for i in range(3)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def haproxy_rig(tmp_path: Path, http_nodes: list[HTTPNode],
                haproxy_bin: HAProxyBin) -> Iterator[HAProxyRig]:
    """HAProxy -W with a dynamic backend `nodes` and a static one; killed afterwards."""
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    sock_dir = Path(tempfile.mkdtemp(prefix="lbsync-hx-"))
    static = HTTPNode("static")
    # Each probe socket is closed before the next: the kernel may repeat a port.
    ports: dict[str, int] = {}
    for key in ("cli_port", "nodes_port", "static_port"):
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[key] = port
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        CONFIG.format(
            sock_dir=sock_dir, backend=BACKEND, static_server_port=static.port,
            cookie_key=COOKIE_KEY, **ports
        )
    )
    log = tmp_path / "haproxy.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            process = start_master(config, sock_dir / "master.sock", binary=haproxy_bin.path,
                                   output=out)
        rig = HAProxyRig(
            config=config,
            log=log,
            admin_socket=str(sock_dir / "admin.sock"),
            cli_tcp=f"127.0.0.1:{ports['cli_port']}",
            master_socket=str(sock_dir / "master.sock"),
            nodes_port=ports["nodes_port"],
            static_port=ports["static_port"],
            process=process,
            haproxy=haproxy_bin,
            nodes=http_nodes,
        )
        _wait_started(rig)
        yield rig
    finally:
        if process is not None:
            reap(process, 5)
        static.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
