"""The Crossbar node config: rendering (pure), the node key, and `lbsync crossbar-config`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lbsync.cli import main
from lbsync.edge import crossbar
from lbsync.edge.crossbar import (
    CrossbarConfigError,
    default_proxies,
    ensure_node_key,
    read_node_pubkey,
    render_crossbar_config,
    router_host,
    write_config,
)

KEY = "0b13bddd8ed47a51d04f6ea53d2a84313c7b7c8d2101df1e99dca09022e3cf9f"
ENV = {name: None for name in ("LBSYNC_CBDIR", "LBSYNC_NODE_NAME", "LBSYNC_LISTEN",
                               "LBSYNC_ROUTER_PORT", "LBSYNC_PROXIES", "LBSYNC_LOG_LEVEL")}


def render(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"node": "node1", "host": "127.77.0.1", "port": 8080,
                            "router_port": 9000, "proxies": 2, "node_pubkey": KEY, **kw}
    config: dict[str, Any] = json.loads(render_crossbar_config(**args))
    return config


def test_router_and_proxies_share_one_endpoint() -> None:
    config = render(proxies=3)
    assert config["controller"] == {"id": "node1"}
    router, *proxies = config["workers"]
    assert router["type"] == "router"
    assert [w["type"] for w in proxies] == ["proxy"] * 3
    assert len({w["id"] for w in config["workers"]}) == 4
    endpoints = [w["transports"][0]["endpoint"] for w in proxies]
    assert all(e == {"type": "tcp", "interface": "127.77.0.1", "port": 8080, "shared": True,
                     "backlog": 1024} for e in endpoints)
    paths = proxies[0]["transports"][0]["paths"]
    assert paths["info"] == {"type": "nodeinfo"}
    assert paths["mydata"]["type"] == "json"
    assert paths["mydata"]["value"]["node"] == "node1"
    assert paths["ws"]["type"] == "websocket"


def test_proxies_reach_the_router_over_loopback_with_the_node_key() -> None:
    config = render()
    router, proxy = config["workers"][:2]
    transport = router["transports"][0]
    assert transport["endpoint"] == {"type": "tcp", "interface": "127.77.0.1", "port": 9000}
    principal = transport["auth"]["cryptosign-proxy"]["principals"]["node1"]
    assert principal == {"realm": "realm1", "role": "anonymous", "authorized_keys": [KEY]}
    connection = proxy["connections"]["router"]
    assert connection["transport"]["endpoint"] == {"type": "tcp", "host": "127.77.0.1",
                                                   "port": 9000}
    assert connection["auth"] == {"cryptosign-proxy": {"type": "static"}}
    assert proxy["routes"] == {"realm1": {"anonymous": "router"}}


def test_demo_role_allows_everything_on_the_realm() -> None:
    realm = render(realm="demo.realm")["workers"][0]["realms"][0]
    assert realm["name"] == "demo.realm"
    (perm,) = realm["roles"][0]["permissions"]
    assert perm["uri"] == "" and perm["match"] == "prefix"
    assert all(perm["allow"].values())


@pytest.mark.parametrize(("host", "router"), [
    ("127.77.0.1", "127.77.0.1"), ("10.0.0.5", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
    ("::1", "::1"), ("fd00::5", "::1"),
])
def test_router_listens_on_loopback_only(host: str, router: str) -> None:
    assert router_host(host) == router


def test_ipv6_endpoints_say_version_6() -> None:
    config = render(host="fd00::5")
    router, proxy = config["workers"][:2]
    assert proxy["transports"][0]["endpoint"]["version"] == 6
    assert router["transports"][0]["endpoint"] == {"type": "tcp", "interface": "::1",
                                                   "port": 9000, "version": 6}
    assert proxy["connections"]["router"]["transport"]["url"] == "ws://[::1]:9000"


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"node": "Node1"}, "Crossbar node ids"),
    ({"node": "n1"}, "Crossbar node ids"),
    ({"node": "node-1"}, "Crossbar node ids"),
    ({"node": "node1\n"}, "--node"),
    ({"node": '"x'}, "--node"),
    ({"host": "localhost"}, "not an IP address"),
    ({"port": 0}, "outside 1-65535"),
    ({"router_port": 70000}, "--router-port"),
    ({"router_port": 8080}, "also the --listen port"),
    ({"proxies": 0}, "--proxies"),
    ({"realm": 'x"y'}, "realm"),
    ({"node_pubkey": "not-a-key"}, "public key"),
])
def test_bad_input_is_refused(kw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CrossbarConfigError, match=fragment.replace("-", r"\-")):
        render(**kw)


def test_default_proxies_is_twice_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crossbar.psutil, "cpu_count", lambda logical=True: 3)
    assert default_proxies() == 6
    monkeypatch.setattr(crossbar.psutil, "cpu_count", lambda logical=True: None)
    assert default_proxies() == 2


def test_write_config_is_atomic_and_skips_unchanged(tmp_path: Path) -> None:
    assert write_config(tmp_path / "cb", "{}\n") is True
    assert (tmp_path / "cb" / "config.json").read_text() == "{}\n"
    assert write_config(tmp_path / "cb", "{}\n") is False
    assert sorted(p.name for p in (tmp_path / "cb").iterdir()) == ["config.json"]


def write_key(cbdir: Path, key: str = KEY) -> None:
    cbdir.mkdir(parents=True, exist_ok=True)
    (cbdir / "key.pub").write_text(
        f"Crossbar.io node public key\n\ncreator: t@h\npublic-key-ed25519: {key}\n")


def fake_crossbar(tmp_path: Path, body: str) -> str:
    script = tmp_path / "crossbar"
    script.write_text(f"#!/bin/sh\n# fake crossbar: $1=keys $2=--cbdir $3=DIR\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_node_key_is_read_from_key_pub(tmp_path: Path) -> None:
    assert read_node_pubkey(tmp_path) is None
    write_key(tmp_path)
    assert read_node_pubkey(tmp_path) == KEY
    assert ensure_node_key(tmp_path, crossbar="/nonexistent") == KEY  # no need to run it


def test_missing_key_is_made_by_crossbar_keys(tmp_path: Path) -> None:
    binary = fake_crossbar(tmp_path, f'printf "x\\n\\npublic-key-ed25519: {KEY}\\n" > "$3/key.pub"')
    assert ensure_node_key(tmp_path / "cb", crossbar=binary) == KEY


def test_crossbar_keys_failing_is_one_clear_error(tmp_path: Path) -> None:
    binary = fake_crossbar(tmp_path, 'echo "boom" >&2; exit 3')
    with pytest.raises(CrossbarConfigError, match="made no node key .exit 3.: boom"):
        ensure_node_key(tmp_path / "cb", crossbar=binary)


def test_a_key_file_without_a_key_is_refused(tmp_path: Path) -> None:
    write_key(tmp_path, key="zz")
    with pytest.raises(CrossbarConfigError, match="no public-key-ed25519"):
        read_node_pubkey(tmp_path)


# --- the command -------------------------------------------------------------------------


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["crossbar-config", *args], env={**ENV, **(env or {})})


def test_command_writes_config_json(tmp_path: Path) -> None:
    cbdir = tmp_path / "node1"
    write_key(cbdir)
    result = run(["--cbdir", str(cbdir), "--node", "node1", "--listen", "127.77.0.1:8080",
                  "--router-port", "9000", "--proxies", "2"])
    assert result.exit_code == 0, result.output
    assert "written" in result.stdout
    config = json.loads((cbdir / "config.json").read_text())
    assert len(config["workers"]) == 3


def test_command_reads_lbsync_variables(tmp_path: Path) -> None:
    cbdir = tmp_path / "node2"
    write_key(cbdir)
    result = run([], env={"LBSYNC_CBDIR": str(cbdir), "LBSYNC_NODE_NAME": "node2",
                          "LBSYNC_LISTEN": "127.77.0.2:8080", "LBSYNC_ROUTER_PORT": "9000",
                          "LBSYNC_PROXIES": "1"})
    assert result.exit_code == 0, result.output
    config = json.loads((cbdir / "config.json").read_text())
    assert config["controller"]["id"] == "node2"
    assert len(config["workers"]) == 2


@pytest.mark.parametrize(("args", "fragment"), [
    (["--node", "Bad-Name"], "--node"),
    (["--listen", "nohost"], "--listen"),
    (["--listen", "127.0.0.1:99999"], "--listen"),
    (["--router-port", "0"], "--router-port"),
    (["--proxies", "0"], "--proxies"),
])
def test_command_bad_input_writes_nothing(tmp_path: Path, args: list[str], fragment: str) -> None:
    cbdir = tmp_path / "cb"
    base = {"--node": "node1", "--listen": "127.0.0.1:8080", "--router-port": "9000"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    flat = [x for pair in base.items() for x in pair]
    result = run(["--cbdir", str(cbdir), *flat])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lbsync: error: "), lines
    assert fragment in lines[0]
    assert not cbdir.exists()
    assert "Traceback" not in result.output
    assert not os.path.exists(cbdir / "config.json")
