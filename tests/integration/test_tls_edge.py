"""TLS at the edge against a real HAProxy (2.6 and 3.0): the config lbsync renders with
--tls-cert passes `haproxy -c`, serves https:// (h2) and wss:// (http/1.1 upgrade) on the
same frontend as plain HTTP, marks the sticky cookie Secure on TLS only, redirects when
asked; and `lbsync agent` rotates the certificate file through the Runtime API, no reload.

Everything listens on 127.158.0.2 (this module's address) on ports picked free.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from haproxy_fixtures import HAProxyBin

from lbsync.cluster import tls
from lbsync.haproxy.binary import check_haproxy_config
from lbsync.haproxy.master import MasterCLI
from lbsync.haproxy.runtime import RuntimeAPI
from lbsync.model import Server
from lbsync.render import ConfigPipeline
from lbsync.settings import Settings
from tests.rig.certs import common_name, make_pem, served_cert
from tests.rig.haproxy import start_master, wait_ready
from tests.rig.procs import free_port, reap, wait_for

pytestmark = pytest.mark.integration

ADDR = "127.158.0.2"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _App(BaseHTTPRequestHandler):
    """Answers the scheme HAProxy says the client used; a WebSocket upgrade gets a 101
    and then echoes raw bytes (enough to see the tunnel)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            # HAProxy checks the handshake: a wrong accept is a 502.
            key = self.headers.get("Sec-WebSocket-Key", "") + WS_GUID
            self.send_header("Sec-WebSocket-Accept",
                             base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
            self.end_headers()
            self.wfile.flush()
            data = self.rfile.read1(100)
            self.wfile.write(b"echo:" + data)
            self.wfile.flush()
            self.close_connection = True
            return
        body = f"proto={self.headers.get('X-Forwarded-Proto')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # health checks hang up mid-answer


@dataclass
class Edge:
    settings: Settings
    pem: Path
    process: subprocess.Popen[bytes]
    haproxy: HAProxyBin
    workdir: Path

    @property
    def http_port(self) -> int:
        return int(self.settings.frontend_bind.rsplit(":", 1)[1])

    @property
    def tls_port(self) -> int:
        return int(self.settings.tls_bind.rsplit(":", 1)[1])

    def master(self) -> MasterCLI:
        return MasterCLI(self.settings.master_socket)

    def tls_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def get(self, scheme: str, path: str = "/") -> http.client.HTTPResponse:
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(ADDR, self.tls_port, timeout=10,
                                               context=self.tls_context(["http/1.1"]))
        else:
            conn = http.client.HTTPConnection(ADDR, self.http_port, timeout=10)
        conn.request("GET", path, headers={"Host": f"localhost:{conn.port}"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp


def settings_for(workdir: Path, pem: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = dict(
        haproxy_config=workdir / "haproxy.cfg", registry_dir=workdir / "nodes",
        runtime_socket=str(workdir / "admin.sock"), master_socket=str(workdir / "master.sock"),
        runtime_tcp="", frontend_bind=f"{ADDR}:{free_port(ADDR)}",
        tls_bind=f"{ADDR}:{free_port(ADDR)}", stats_bind=f"{ADDR}:{free_port(ADDR)}",
        tls_cert=pem)
    return dataclasses.replace(Settings(), **{**values, **changes}).check()


@pytest.fixture
def app() -> Iterator[int]:
    server = _QuietServer((ADDR, 0), _App)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def edge_factory(haproxy_bin: HAProxyBin, tmp_path: Path, app: int) -> Iterator[Any]:
    started: list[Edge] = []
    logs: list[Any] = []

    def make(*, days: int = 30, with_app: bool = True, sni: tuple[str, ...] = (),
             **changes: Any) -> Edge:
        workdir = Path(tempfile.mkdtemp(prefix="lbsync-tls-", dir="/tmp"))  # short sockets
        pem = tmp_path / f"site{len(started)}.pem"
        if sni:  # a folder: one certificate per name
            pem = pem.with_suffix("")
            pem.mkdir()
            for name in sni:
                (pem / f"{name}.pem").write_text(make_pem(name, names=(name,)))
        else:
            pem.write_text(make_pem("first", days=days, names=("localhost", "edge.example")))
        settings = settings_for(workdir, pem, **changes)
        settings.state_file.write_text("1\n")
        pipeline = ConfigPipeline(settings, lambda p: check_haproxy_config(p, haproxy_bin.path))
        server = Server("app1", ADDR, app, 100,
                        "app1" if haproxy_bin.explicit_cookies else None)
        pipeline.install(pipeline.render([server] if with_app else [],
                                         haproxy_bin.explicit_cookies))
        log = (workdir / "haproxy.log").open("wb")
        logs.append(log)
        process = start_master(settings.haproxy_config, settings.master_socket,
                               binary=haproxy_bin.path, output=log)
        edge = Edge(settings, pem, process, haproxy_bin, workdir)
        started.append(edge)
        wait_ready(RuntimeAPI(settings.runtime_socket), timeout=10)
        return edge

    try:
        yield make
    finally:
        for edge in started:
            reap(edge.process, 5)
        for log in logs:
            log.close()
        for edge in started:
            subprocess.run(["rm", "-rf", str(edge.workdir)], check=False)


# --- the rendered config -----------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {}, {"tls_redirect": True}, {"tls_redirect": True, "tls_bind": f"{ADDR}:443"},
    {"hsts": 600}, {"cookie_name": "lb.sid"}, "folder",
], ids=["tls", "redirect", "redirect-443", "hsts", "dotted-cookie", "sni-folder"])
@pytest.mark.parametrize("explicit", [False, True], ids=["dynamic-cookies", "node-cookies"])
def test_rendered_tls_config_passes_haproxy_check(
        haproxy_bin: HAProxyBin, tmp_path: Path, changes: Any, explicit: bool) -> None:
    pem: Path = tmp_path / "site.pem"
    if changes == "folder":
        pem = tmp_path / "certs"
        pem.mkdir()
        for name in ("a.example", "b.example"):
            (pem / f"{name}.pem").write_text(make_pem(name, names=(name,)))
        changes = {}
    else:
        pem.write_text(make_pem("site"))
    settings = settings_for(tmp_path, pem, **changes)
    assert settings.cert_files()
    server = Server("app1", ADDR, 18081, 100, "app1" if explicit else None)
    pipeline = ConfigPipeline(settings, lambda p: check_haproxy_config(p, haproxy_bin.path))
    text = pipeline.render([server], explicit)
    assert f"ssl crt {pem} " in text
    pipeline.install(text)  # raises ConfigInvalid with HAProxy's alerts


def test_a_key_that_does_not_match_is_refused_by_haproxy_check(
        haproxy_bin: HAProxyBin, tmp_path: Path) -> None:
    from lbsync.haproxy.binary import ConfigInvalid

    cert = make_pem("a").split("-----BEGIN PRIVATE KEY-----")[0]
    key = "-----BEGIN PRIVATE KEY-----" + make_pem("b").split("-----BEGIN PRIVATE KEY-----")[1]
    (tmp_path / "site.pem").write_text(cert + key)
    settings = settings_for(tmp_path, tmp_path / "site.pem")
    pipeline = ConfigPipeline(settings, lambda p: check_haproxy_config(p, haproxy_bin.path))
    with pytest.raises(ConfigInvalid, match="site.pem"):
        pipeline.install(pipeline.render([], False))
    assert not settings.haproxy_config.exists()


# --- what clients get --------------------------------------------------------------------


def test_https_and_http_on_one_frontend_cookie_secure_on_tls_only(edge_factory: Any) -> None:
    edge: Edge = edge_factory(hsts=600)
    plain = edge.get("http")
    assert plain.status == 200
    assert plain.getheader("Set-Cookie", "").startswith(edge.settings.cookie_name + "=")
    assert "Secure" not in plain.getheader("Set-Cookie", "")
    assert plain.getheader("Strict-Transport-Security") is None
    tls = edge.get("https")
    assert tls.status == 200
    assert tls.getheader("Set-Cookie", "").endswith("; Secure")
    assert tls.getheader("Strict-Transport-Security") == "max-age=600"


def test_backend_sees_the_scheme(edge_factory: Any) -> None:
    edge: Edge = edge_factory()
    for scheme in ("http", "https"):
        conn = (http.client.HTTPSConnection(ADDR, edge.tls_port, timeout=10,
                                            context=edge.tls_context())
                if scheme == "https" else http.client.HTTPConnection(ADDR, edge.http_port))
        conn.request("GET", "/")
        assert conn.getresponse().read() == f"proto={scheme}".encode()
        conn.close()


def test_alpn_offers_h2_and_a_websocket_upgrade_goes_through_over_tls(
        edge_factory: Any) -> None:
    edge: Edge = edge_factory()
    with socket.create_connection((ADDR, edge.tls_port), timeout=5) as raw, \
            edge.tls_context(["h2", "http/1.1"]).wrap_socket(raw) as conn:
        assert conn.selected_alpn_protocol() == "h2"
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
    # A browser's wss:// offers http/1.1 only (RFC 8441 aside) and upgrades.
    with socket.create_connection((ADDR, edge.tls_port), timeout=5) as raw, \
            edge.tls_context(["http/1.1"]).wrap_socket(raw) as conn:
        assert conn.selected_alpn_protocol() == "http/1.1"
        conn.sendall(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        conn.sendall(b"ping")
        rest = head.split(b"\r\n\r\n", 1)[1]
        while b"echo:ping" not in rest:
            chunk = conn.recv(4096)
            assert chunk, rest
            rest += chunk


def test_tls12_gets_the_modern_ciphers_only(edge_factory: Any) -> None:
    edge: Edge = edge_factory()

    def handshake(cipher: str) -> str | None:
        ctx = edge.tls_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(cipher)
        with socket.create_connection((ADDR, edge.tls_port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as conn:
            return conn.version()

    assert handshake("ECDHE-ECDSA-AES128-GCM-SHA256") == "TLSv1.2"  # the control
    with pytest.raises(ssl.SSLError):
        handshake("ECDHE-ECDSA-AES128-SHA")  # CBC: not in ssl-default-bind-ciphers


def test_redirect_sends_plain_http_to_the_tls_port_and_the_cookie_is_secure(
        edge_factory: Any) -> None:
    edge: Edge = edge_factory(tls_redirect=True)
    plain = edge.get("http", "/a/b?c=1")
    assert plain.status == 301
    assert plain.getheader("Location") == f"https://localhost:{edge.tls_port}/a/b?c=1"
    assert plain.getheader("Set-Cookie") is None
    tls = edge.get("https")
    assert tls.status == 200 and tls.getheader("Set-Cookie", "").endswith("; Secure")
    assert tls.getheader("Set-Cookie", "").count("Secure") == 1


# --- rotation by `lbsync agent` ----------------------------------------------------------


def agent_flags(s: Settings, haproxy: HAProxyBin) -> list[str]:
    return ["--registry-dir", str(s.registry_dir), "--haproxy-config", str(s.haproxy_config),
            "--runtime-socket", s.runtime_socket, "--runtime-tcp", "",
            "--master-socket", s.master_socket, "--frontend-bind", s.frontend_bind,
            "--stats-bind", s.stats_bind, "--tls-cert", str(s.tls_cert),
            "--tls-bind", s.tls_bind, "--haproxy-bin", haproxy.path, "--serf-rpc", ""]


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def agent_factory() -> Iterator[Any]:
    started: list[Agent] = []

    def start(edge: Edge) -> Agent:
        edge.settings.registry_dir.mkdir(exist_ok=True)
        log = edge.workdir / "agent.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "lbsync", "agent",
                 *agent_flags(edge.settings, edge.haproxy)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("LBSYNC_")})
        agent = Agent(process, log)
        started.append(agent)
        wait_for(lambda: process.poll() is None and "start version=" in agent.text(), 20,
                 "lbsync agent's start")
        return agent

    try:
        yield start
    finally:
        for agent in started:
            reap(agent.process, 10)


def serial(pem: str) -> int:
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_agent_rotates_the_certificate_file_without_a_reload(
        edge_factory: Any, agent_factory: Any) -> None:
    edge: Edge = edge_factory()
    agent: Agent = agent_factory(edge)
    port = edge.tls_port
    first = edge.pem.read_text()
    assert served_cert(ADDR, port).serial_number == serial(first)
    before = edge.master().status()
    held = socket.create_connection((ADDR, port), timeout=5)
    held_tls = edge.tls_context(["http/1.1"]).wrap_socket(held)
    try:
        second = make_pem("second")
        write_atomically(edge.pem, second)
        wait_for(lambda: served_cert(ADDR, port).serial_number == serial(second), 15,
                 "the second certificate served")
        assert common_name(served_cert(ADDR, port)) == "second"
        # Once: the agent's first poll found the file HAProxy started from, and left it.
        assert agent.text().count("rotated certificate=") == 1, agent.text()
        # The connection opened before the rotation goes on.
        held_tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert held_tls.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        held_tls.close()
    after = edge.master().status()
    assert after.reloads == before.reloads
    assert after.workers == before.workers and after.master_pid == before.master_pid

    # Refused: a key that is not the certificate's, then an expired certificate. Each is
    # one error in the agent's log, and the second certificate stays served.
    cert_part = make_pem("mismatched").split("-----BEGIN PRIVATE KEY-----")[0]
    other_key = make_pem("x").split("-----END CERTIFICATE-----\n")[1]
    for bad, reason in ((cert_part + other_key, "inconsistencies between private key"),
                        (make_pem("expired", days=1,
                                  start=datetime.now(UTC) - timedelta(days=3)), "expired on")):
        errors = agent.text().count("not rotated")
        write_atomically(edge.pem, bad)
        wait_for(lambda n=errors: agent.text().count("not rotated") == n + 1, 15,
                 f"the agent's refusal ({reason})")
        line = [ln for ln in agent.text().splitlines() if "not rotated" in ln][-1]
        assert reason in line and str(edge.pem) in line and "keeps serving /CN=second" in line
        assert served_cert(ADDR, port).serial_number == serial(second)
    assert agent.text().count("not rotated") == 2, "each refusal logged once"
    assert edge.master().status().reloads == before.reloads
    assert agent.process.poll() is None


def test_agent_rotates_one_certificate_of_a_folder_by_its_name(
        edge_factory: Any, agent_factory: Any) -> None:
    edge: Edge = edge_factory(sni=("a.example", "b.example"))
    agent: Agent = agent_factory(edge)
    port = edge.tls_port
    a_serial = served_cert(ADDR, port, "a.example").serial_number
    assert common_name(served_cert(ADDR, port, "b.example")) == "b.example"
    before = edge.master().status()
    b2 = make_pem("b2", names=("b.example",))
    write_atomically(edge.pem / "b.example.pem", b2)
    wait_for(lambda: served_cert(ADDR, port, "b.example").serial_number == serial(b2), 15,
             "b.example's new certificate served")
    assert served_cert(ADDR, port, "a.example").serial_number == a_serial
    assert agent.text().count("rotated certificate=") == 1
    assert f"rotated certificate={edge.pem / 'b.example.pem'}" in agent.text()
    assert edge.master().status().reloads == before.reloads


# --- lbsync status -----------------------------------------------------------------------


def status_flags(s: Settings) -> list[str]:
    return ["--registry-dir", str(s.registry_dir), "--haproxy-config", str(s.haproxy_config),
            "--runtime-socket", s.runtime_socket, "--master-socket", s.master_socket,
            "--tls-cert", str(s.tls_cert), "--serf-rpc", ""]


def lbsync_status(edge: Edge, *args: str) -> subprocess.CompletedProcess[str]:
    edge.settings.registry_dir.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "lbsync", "status", *status_flags(edge.settings), *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("LBSYNC_")})


def test_status_lists_the_served_certificate_and_check_fails_near_expiry(
        edge_factory: Any) -> None:
    edge: Edge = edge_factory(days=10, with_app=False)
    served = served_cert(ADDR, edge.tls_port)
    not_after = f"{served.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    ok = lbsync_status(edge, "--check", "--cert-expiry-margin", "5")
    assert ok.returncode == 0, ok.stderr
    line = next(ln for ln in ok.stdout.splitlines() if ln.startswith(str(edge.pem)))
    assert "/CN=first" in line and "localhost,edge.example" in line and not_after in line
    assert "ok, 10 days left" in line or "ok, 9 days left" in line
    near = lbsync_status(edge, "--check")  # the default margin: 14 days
    assert near.returncode == 1
    errors = near.stderr.strip().splitlines()
    assert len(errors) == 1, errors
    assert errors[0] == (f"lbsync: certificate {edge.pem} (/CN=first) expires on "
                         f"{not_after}, in 10.0 days (--cert-expiry-margin 14 days)")
    # Without --check the same is shown, and the exit is 0.
    shown = lbsync_status(edge)
    assert shown.returncode == 0 and "EXPIRES in 10 days (margin 14)" in shown.stdout


# --- lbsync up --tls ---------------------------------------------------------------------


def test_the_local_clusters_tls_is_what_haproxy_serves_and_its_ca_verifies(
        haproxy_bin: HAProxyBin) -> None:
    """What `lbsync up --tls --net 158` writes (its CA, site.pem, lbsync.env) rendered by
    `lbsync render` as supervisord runs it, served by HAProxy, verified through the CA
    (no Crossbar node: the TLS side alone)."""
    import shutil

    from lbsync.cluster.local import ENV_FILE, Layout, write_files

    if not (Path(sys.executable).parent / "crossbar").exists():
        pytest.skip("the cluster's supervisord.conf names the crossbar binary")
    layout = Layout(Path(tempfile.mkdtemp(prefix="lbsync-up-", dir="/tmp")), net=158, tls=True)
    log = (layout.dir / "haproxy.log").open("wb")
    process: subprocess.Popen[bytes] | None = None
    try:
        write_files(layout, [1], proxies=1, drain_timeout=5)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LBSYNC_")}
        env.update(line.split("=", 1) for line in
                   (layout.dir / ENV_FILE).read_text().splitlines())
        env["LBSYNC_HAPROXY_BIN"] = haproxy_bin.path
        rendered = subprocess.run([sys.executable, "-m", "lbsync", "render"], env=env,
                                  capture_output=True, text=True, timeout=60, check=False)
        assert rendered.returncode == 0, rendered.stderr
        process = start_master(layout.lb["config"], layout.lb["master_socket"],
                               binary=haproxy_bin.path, output=log)
        wait_ready(RuntimeAPI(layout.lb["admin_socket"]), timeout=10)
        ca = layout.tls_dir / "ca.pem"
        for name in ("localhost", layout.lb_ip):
            ctx = ssl.create_default_context(cafile=str(ca))  # verifies chain and name
            with socket.create_connection((layout.lb_ip, 8443), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=name) as conn:
                conn.sendall(b"GET /info HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert conn.recv(4096).startswith(b"HTTP/1.1 503")  # no node: the TLS side
        strict = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection((layout.lb_ip, 8443), timeout=5) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            strict.wrap_socket(raw, server_hostname="other.example")
        assert f"curl --cacert {ca} https://{layout.lb_ip}:8443/info" in layout.endpoints()
        # What the printed line does, with curl itself: verified through the cluster's CA
        # (no node yet: HAProxy's 503 over TLS); a CA that did not sign it is refused (60).
        curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
        ok = subprocess.run([*curl, "--cacert", str(ca), f"https://{layout.lb_ip}:8443/info"],
                            capture_output=True, text=True, timeout=30, check=False)
        assert (ok.returncode, ok.stdout) == (0, "503"), ok.stderr
        other_ca = tls.ensure(layout.dir / "other-ca", ["localhost"]).ca_cert
        bad = subprocess.run([*curl, "--cacert", str(other_ca),
                              f"https://{layout.lb_ip}:8443/info"],
                             capture_output=True, text=True, timeout=30, check=False)
        assert bad.returncode == 60, (bad.returncode, bad.stderr)
    finally:
        if process is not None:
            reap(process, 5)
        log.close()
        shutil.rmtree(layout.dir, ignore_errors=True)
