"""The local cluster's pure parts: layout, supervisord config, progress output."""

from __future__ import annotations

import base64
import configparser
import io
import json
import shlex
import shutil
import stat
import sys
from pathlib import Path

import pytest

from lbsync.cluster.lifecycle import NodeView, Progress
from lbsync.cluster.local import (
    ClusterError,
    Layout,
    check_dir,
    render_supervisord,
    write_files,
)
from lbsync.edge.links import read_secret
from lbsync.serf.keys import KeyFileError

NEEDS_BINARIES = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("haproxy", "serf"))
    or not (Path(sys.executable).parent / "crossbar").exists(),
    reason="the config names the haproxy, serf and crossbar binaries")


def test_layout_addresses() -> None:
    layout = Layout(Path("/c"), net=7)
    assert layout.lb_ip == "127.7.0.1"
    node = layout.node(3)
    assert (node.name, node.ip, node.cbdir) == ("node3", "127.7.0.13", Path("/c/node3/cbdir"))
    env = layout.lb_env(5.0)
    assert env["LBSYNC_SERF_RPC"] == "127.7.0.1:7373"
    assert env["LBSYNC_RUNTIME_TCP"] == "127.7.0.1:9999"
    assert env["LBSYNC_FRONTEND_BIND"] == "127.7.0.1:8080"
    assert env["LBSYNC_DRAIN_TIMEOUT"] == "5s"
    assert env["LBSYNC_METRICS_BIND"] == "127.7.0.1:9180"
    assert "http://127.7.0.1:9180/metrics" in layout.endpoints()
    assert "http://127.7.0.1:1936/metrics" in layout.endpoints()


@pytest.mark.parametrize("bad", ["/tmp/a b", "/tmp/a%b", "/tmp/a'b", "/tmp/a;b", "/tmp/a=b"])
def test_check_dir_refuses_paths_supervisord_cannot_hold(bad: str) -> None:
    with pytest.raises(ClusterError, match="--dir"):
        check_dir(Path(bad))


def test_check_dir_refuses_a_dir_too_long_for_the_router_sockets(tmp_path: Path) -> None:
    # node200's socket: DIR/node200/cbdir/run/router.sock, 30 bytes after DIR, <= 107
    fits = tmp_path / ("d" * (107 - 30 - len(str(tmp_path)) - 1))
    assert check_dir(fits) == fits
    with pytest.raises(ClusterError, match=r"--dir .*: --cbdir: the router socket "
                       r".*/node200/cbdir/run/router\.sock would be 108 bytes long"):
        check_dir(Path(f"{fits}d"))


@NEEDS_BINARIES
def test_supervisord_config_has_every_program(tmp_path: Path) -> None:
    layout = Layout(tmp_path, net=9)
    text = render_supervisord(layout, [1, 2, 5], proxies=2, drain_timeout=7)
    cp = configparser.RawConfigParser()
    cp.read_string(text)
    programs = {s.removeprefix("program:") for s in cp.sections() if s.startswith("program:")}
    assert programs == {"haproxy", "lb-serf", "lb-agent", *(
        f"node{i}-{p}" for i in (1, 2, 5) for p in ("serf", "crossbar", "sidecar"))}
    assert cp.get("group:node5", "programs") == "node5-serf,node5-crossbar,node5-sidecar"
    crossbar = shlex.split(cp.get("program:node2-crossbar", "command"))
    assert crossbar[:2] == ["/bin/sh", "-c"]
    config_call = shlex.split(crossbar[2].partition(" && ")[0])
    assert config_call[config_call.index("crossbar-config"):] == [
        "crossbar-config", "--cbdir", f"{tmp_path}/node2/cbdir", "--node", "node2",
        "--listen", "127.9.0.12:8080", "--proxies", "2", "--link-port", "8082",
        "--link-secret-file", f"{tmp_path}/fleet.secret"]
    sidecar = shlex.split(cp.get("program:node2-sidecar", "command"))
    assert sidecar[sidecar.index("--listen") + 1] == "127.9.0.12:8080"
    # The sidecar keeps the router links of the folder crossbar-config wrote.
    assert sidecar[sidecar.index("--cbdir") + 1] == f"{tmp_path}/node2/cbdir"
    assert sidecar[sidecar.index("--link-port") + 1] == "8082"
    assert sidecar[sidecar.index("--drain-timeout") + 1] == "7s"
    stop = sidecar[sidecar.index("--stop-command") + 1]
    assert stop.endswith(f"-c {tmp_path}/supervisord.conf stop node2:node2-crossbar")
    # Graceful stop outlasts the drain; serf's `leave` exit is not a crash.
    assert int(cp.get("program:node2-sidecar", "stopwaitsecs")) > 7
    assert cp.get("program:node1-serf", "autorestart") == "unexpected"
    assert "LBSYNC_SERF_RPC=\"127.9.0.1:7373\"" in cp.get("program:lb-agent", "environment")
    assert f'LBSYNC_CLUSTER="{tmp_path}"' == cp.get("supervisord", "environment")
    # Every Serf agent reads the gossip key and the RPC token from one 0600 file, and every
    # lbsync process the token from its own file: no secret on a command line or in here.
    for name in ("lb-serf", "node1-serf", "node5-serf"):
        serf = shlex.split(cp.get(f"program:{name}", "command"))
        assert serf[serf.index("-config-file") + 1] == f"{tmp_path}/serf.json"
        assert "-encrypt" not in serf and "-rpc-auth" not in serf
    assert sidecar[sidecar.index("--serf-auth-key-file") + 1] == f"{tmp_path}/serf-rpc.token"
    assert (f'LBSYNC_SERF_AUTH_KEY_FILE="{tmp_path}/serf-rpc.token"'
            in cp.get("program:lb-agent", "environment"))


def test_progress_prints_changes_only_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(out)
    up = NodeView("node1", "alive", "serving", "1", "UP", "2/2")
    p.show({"node1": NodeView("node1", "alive", "-", "0", "-")}, 0.5)
    p.show({"node1": NodeView("node1", "alive", "-", "0", "-")}, 0.7)
    p.show({"node1": up}, 1.2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("node1: serf=alive crossbar=serving ready=1 links=2/2 haproxy=UP")


@NEEDS_BINARIES
def test_the_fleet_secret_is_made_once_private_and_kept_across_scales(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_files(layout, [1, 2], proxies=1, drain_timeout=5)
    secret = layout.fleet_secret.read_text()
    assert len(read_secret(secret, "fleet.secret")) == 32
    assert stat.S_IMODE(layout.fleet_secret.stat().st_mode) == 0o600
    write_files(layout, [1, 2, 3], proxies=1, drain_timeout=5)  # `lbsync scale 3`
    assert layout.fleet_secret.read_text() == secret  # the running nodes hold it
    other = Layout(tmp_path / "other")
    write_files(other, [1], proxies=1, drain_timeout=5)
    assert other.fleet_secret.read_text() != secret  # one secret per cluster


@NEEDS_BINARIES
def test_the_serf_key_and_token_are_made_once_private_and_given_to_serf(
        tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert not layout.keyed() and layout.serf_auth_key() is None  # an old, unkeyed folder
    write_files(layout, [1], proxies=1, drain_timeout=5)
    assert layout.keyed()
    key, token = layout.serf_key.read_text(), layout.serf_token.read_text()
    assert len(base64.b64decode(key.strip(), validate=True)) == 32  # `serf keygen`'s form
    assert layout.serf_auth_key() == token.strip() and len(token.strip()) >= 32
    for path in (layout.serf_key, layout.serf_token, layout.serf_config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert json.loads(layout.serf_config.read_text()) == {
        "encrypt_key": key.strip(), "rpc_auth": token.strip()}
    write_files(layout, [1, 2], proxies=1, drain_timeout=5)  # `lbsync scale 2`
    assert (layout.serf_key.read_text(), layout.serf_token.read_text()) == (key, token)
    assert "LBSYNC_SERF_AUTH_KEY_FILE" in (tmp_path / "lbsync.env").read_text()
    assert token.strip() not in (tmp_path / "lbsync.env").read_text()
    assert token.strip() not in layout.conf.read_text()
    # Each member's Serf agent runs on one Go thread, as in the node image.
    conf = layout.conf.read_text()
    for name in ("node1", "node2"):
        program = conf.split(f"[program:{name}-serf]")[1].split("[program:")[0]
        assert 'environment=GOMAXPROCS="1"' in program


@NEEDS_BINARIES
def test_a_bad_gossip_key_is_refused_before_serf_starts(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.serf_key.write_text("bm90IDE2IGJ5dGVz\n")  # base64, but 12 bytes
    with pytest.raises(KeyFileError, match="12 bytes; Serf wants 16, 24 or 32"):
        write_files(layout, [1], proxies=1, drain_timeout=5)


def test_scale_of_a_running_cluster_made_before_the_keys_says_down_and_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lbsync.cluster import lifecycle

    layout = Layout(tmp_path)
    (tmp_path / "cluster.json").write_text(json.dumps(
        {"net": 0, "nodes": [1], "proxies": 1, "drain_timeout": 5}))
    monkeypatch.setattr(lifecycle.Supervisor, "running", lambda self: True)
    with pytest.raises(ClusterError, match=r"without gossip encryption .* run `lbsync down`, "
                       r"then `lbsync up` again"):
        lifecycle.scale(layout, 2, timeout=1, out=io.StringIO())
    assert not layout.serf_key.exists()  # nothing written: its agents keep running as they are


def test_member_addresses_continue_past_one_block() -> None:
    from lbsync.cluster.addresses import MAX_MEMBER, member_ip
    from lbsync.model import LbsyncError
    assert [member_ip(9, i) for i in (1, 240, 241, 480, 481)] == [
        "127.9.0.11", "127.9.0.250", "127.9.1.11", "127.9.1.250", "127.9.2.11"]
    assert len({member_ip(9, i) for i in range(1, MAX_MEMBER + 1)}) == MAX_MEMBER
    for bad in (0, MAX_MEMBER + 1):
        with pytest.raises(LbsyncError, match="outside"):
            member_ip(9, bad)


def test_tls_is_off_unless_asked() -> None:
    layout = Layout(Path("/c"), net=7)
    assert "LBSYNC_TLS_CERT" not in layout.lb_env(5.0)
    assert "https://" not in layout.endpoints()


def test_a_tls_cluster_serves_its_site_certificate_on_8443() -> None:
    layout = Layout(Path("/c"), net=7, tls=True)
    env = layout.lb_env(5.0)
    assert env["LBSYNC_TLS_CERT"] == "/c/tls/site.pem"
    assert env["LBSYNC_TLS_BIND"] == "127.7.0.1:8443"
    assert layout.tls_names() == ["localhost", "127.7.0.1", "127.0.0.1"]
    assert Layout(Path("/c"), tls=True).tls_names() == ["localhost", "127.0.0.1"]
    shown = layout.endpoints()
    assert "https://127.7.0.1:8443/info" in shown and "wss://127.7.0.1:8443/ws" in shown
    assert "curl --cacert /c/tls/ca.pem https://127.7.0.1:8443/info" in shown


@NEEDS_BINARIES
def test_write_files_makes_the_local_ca_once_and_remembers_tls(tmp_path: Path) -> None:
    from cryptography import x509

    from lbsync.cli import _layout
    from lbsync.settings import Settings

    layout = Layout(tmp_path, net=7, tls=True)
    write_files(layout, [1], proxies=1, drain_timeout=5)
    ca, site = tmp_path / "tls" / "ca.pem", tmp_path / "tls" / "site.pem"
    cert = x509.load_pem_x509_certificate(site.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {
        "127.7.0.1", "127.0.0.1"}
    assert stat.S_IMODE(site.stat().st_mode) == 0o600
    env = dict(line.split("=", 1) for line in (tmp_path / "lbsync.env").read_text().split())
    assert env["LBSYNC_TLS_CERT"] == str(site)
    # What `lbsync status` and the agent build from it: the certificate is usable.
    assert Settings.build({"tls_cert": env["LBSYNC_TLS_CERT"]}).cert_files() == [site]
    assert 'LBSYNC_TLS_CERT="' + str(site) + '"' in layout.conf.read_text()
    first_ca = ca.read_text()
    # `lbsync scale 2` reads the cluster's own TLS from its state, and keeps its CA.
    again = _layout(tmp_path)
    assert again.tls is True and again.net == 7
    write_files(again, [1, 2], proxies=1, drain_timeout=5)
    assert ca.read_text() == first_ca
