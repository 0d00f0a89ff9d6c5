"""The Crossbar node config: rendering (pure), the router socket's folder, and
`lbsync crossbar-config`."""

from __future__ import annotations

import importlib
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
    MAX_UNIX_PATH,
    ROUTER_SOCKET,
    CrossbarConfigError,
    default_proxies,
    prepare_cbdir,
    render_crossbar_config,
    router_socket,
    write_crossbar_config,
)

ENV = {name: None for name in ("LBSYNC_CBDIR", "LBSYNC_NODE_NAME", "LBSYNC_LISTEN",
                               "LBSYNC_PROXIES", "LBSYNC_LOG_LEVEL", "LBSYNC_LINK_PORT",
                               "LBSYNC_LINK_SECRET", "LBSYNC_LINK_SECRET_FILE")}


def render(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"node": "node1", "host": "127.77.0.1", "port": 8080,
                            "proxies": 2, **kw}
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
    for i, proxy in enumerate(proxies, 1):
        assert proxy["transports"][0]["paths"]["info"] == {
            "type": "resource", "classname": "lbsync.edge.info.make",
            "extra": {"node": "node1", "worker": f"proxy{i}", "realm": "realm1"}}
    assert paths["mydata"]["type"] == "json"
    assert paths["mydata"]["value"]["node"] == "node1"
    assert paths["ws"]["type"] == "websocket"


def test_proxies_reach_the_router_over_a_unix_socket_in_cbdir() -> None:
    config = render()
    router, proxy = config["workers"][:2]
    socket = {"type": "unix", "path": "run/router.sock"}  # relative: Crossbar joins CBDIR
    (transport,) = router["transports"]  # no TCP listener
    assert transport["endpoint"] == socket
    assert transport["auth"] == {"anonymous-proxy": {"type": "static"}}
    connection = proxy["connections"]["router"]
    assert connection["transport"]["endpoint"] == socket
    assert connection["auth"] == {"anonymous-proxy": {"type": "static"}}
    assert proxy["routes"] == {"realm1": {"anonymous": "router"}}
    assert "cryptosign-proxy" not in json.dumps(config)


def test_info_classname_is_importable() -> None:
    pytest.importorskip("twisted.web", reason="Twisted comes with the edge extra")
    info = render()["workers"][1]["transports"][0]["paths"]["info"]
    module, _, name = info["classname"].rpartition(".")  # what Crossbar does with it
    assert getattr(importlib.import_module(module), name)(info["extra"]).node == "node1"


def test_demo_role_allows_everything_on_the_realm() -> None:
    realm = render(realm="demo.realm")["workers"][0]["realms"][0]
    assert realm["name"] == "demo.realm"
    (perm,) = realm["roles"][0]["permissions"]
    assert perm["uri"] == "" and perm["match"] == "prefix"
    assert all(perm["allow"].values())


def test_ipv6_endpoints_say_version_6() -> None:
    config = render(host="fd00::5")
    proxy = config["workers"][1]
    assert proxy["transports"][0]["endpoint"] == {
        "type": "tcp", "interface": "fd00::5", "port": 8080, "version": 6, "shared": True,
        "backlog": 1024}


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"node": "Node1"}, "Crossbar node ids"),
    ({"node": "n1"}, "Crossbar node ids"),
    ({"node": "node-1"}, "Crossbar node ids"),
    ({"node": "node1\n"}, "--node"),
    ({"node": '"x'}, "--node"),
    ({"host": "localhost"}, "not an IP address"),
    ({"port": 0}, "outside 1-65535"),
    ({"proxies": 0}, "--proxies"),
    ({"realm": 'x"y'}, "realm"),
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
    assert write_crossbar_config(tmp_path / "cb", "{}\n") is True
    assert (tmp_path / "cb" / "config.json").read_text() == "{}\n"
    assert write_crossbar_config(tmp_path / "cb", "{}\n") is False
    assert sorted(p.name for p in (tmp_path / "cb").iterdir()) == ["config.json"]


def test_router_socket_is_cbdir_joined_with_the_relative_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert router_socket(tmp_path / "cb") == f"{tmp_path}/cb/{ROUTER_SOCKET}"
    monkeypatch.chdir(tmp_path)  # a relative CBDIR is taken from the cwd, as Crossbar does
    assert router_socket(Path("cb")) == f"{tmp_path}/cb/{ROUTER_SOCKET}"


def long_cbdir(base: Path, socket_bytes: int) -> Path:
    """A CBDIR under `base` whose router socket path is `socket_bytes` long."""
    pad = socket_bytes - len(f"{base}/") - len(f"/{ROUTER_SOCKET}")
    assert pad > 0
    return base / ("d" * pad)


def test_router_socket_path_fits_af_unix(tmp_path: Path) -> None:
    fits = long_cbdir(tmp_path, MAX_UNIX_PATH)
    assert len(router_socket(fits)) == MAX_UNIX_PATH
    too_long = long_cbdir(tmp_path, MAX_UNIX_PATH + 1)
    with pytest.raises(CrossbarConfigError) as e:
        router_socket(too_long)
    assert str(e.value) == (
        f"--cbdir: the router socket {too_long}/{ROUTER_SOCKET} would be 108 bytes long, "
        "over the 107-byte limit of AF_UNIX socket paths: use a shorter --cbdir")


def test_router_socket_length_counts_bytes_not_characters(tmp_path: Path) -> None:
    # 'é' is two bytes in UTF-8 (the file system encoding here): fine as characters,
    # too long as bytes.
    chars = MAX_UNIX_PATH - len(f"{tmp_path}/") - len(f"/{ROUTER_SOCKET}")
    with pytest.raises(CrossbarConfigError, match="would be 1.. bytes long"):
        router_socket(tmp_path / ("é" * (chars // 2 + 1)))


def test_prepare_cbdir_makes_a_private_socket_folder(tmp_path: Path) -> None:
    cbdir = tmp_path / "a" / "cb"
    old = os.umask(0)  # even a permissive umask gives 0700
    try:
        prepare_cbdir(cbdir)
    finally:
        os.umask(old)
    assert stat.S_IMODE((cbdir / "run").stat().st_mode) == 0o700
    (cbdir / "run").chmod(0o755)  # loosened by hand: put back
    prepare_cbdir(cbdir)
    assert stat.S_IMODE((cbdir / "run").stat().st_mode) == 0o700


def test_prepare_cbdir_refuses_a_symlinked_socket_folder(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cb").mkdir()
    (tmp_path / "cb" / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CrossbarConfigError, match="run is not a folder"):
        prepare_cbdir(tmp_path / "cb")


# --- the command -------------------------------------------------------------------------


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["crossbar-config", *args], env={**ENV, **(env or {})})


def test_command_writes_config_json(tmp_path: Path) -> None:
    cbdir = tmp_path / "node1"
    result = run(["--cbdir", str(cbdir), "--node", "node1", "--listen", "127.77.0.1:8080",
                  "--proxies", "2"])
    assert result.exit_code == 0, result.output
    assert "written" in result.stdout
    config = json.loads((cbdir / "config.json").read_text())
    assert len(config["workers"]) == 3
    assert stat.S_IMODE((cbdir / "run").stat().st_mode) == 0o700
    assert sorted(p.name for p in cbdir.iterdir()) == ["config.json", "run"]  # no key needed
    again = run(["--cbdir", str(cbdir), "--node", "node1", "--listen", "127.77.0.1:8080",
                 "--proxies", "2"])
    assert again.exit_code == 0 and "unchanged" in again.stdout


def test_command_has_no_router_port_any_more(tmp_path: Path) -> None:
    result = run(["--cbdir", str(tmp_path / "cb"), "--node", "node1", "--listen",
                  "127.0.0.1:8080", "--router-port", "9000"])
    assert result.exit_code == 2
    assert "No such option" in result.stderr and "--router-port" in result.stderr


def test_command_refuses_a_cbdir_too_long_for_the_socket(tmp_path: Path) -> None:
    cbdir = long_cbdir(tmp_path, MAX_UNIX_PATH + 5)
    result = run(["--cbdir", str(cbdir), "--node", "node1", "--listen", "127.0.0.1:8080"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"lbsync: error: --cbdir: the router socket {cbdir}/{ROUTER_SOCKET} would be "
        "112 bytes long, over the 107-byte limit of AF_UNIX socket paths: use a shorter "
        "--cbdir"]
    assert not cbdir.exists()


def test_command_reads_lbsync_variables(tmp_path: Path) -> None:
    cbdir = tmp_path / "node2"
    result = run([], env={"LBSYNC_CBDIR": str(cbdir), "LBSYNC_NODE_NAME": "node2",
                          "LBSYNC_LISTEN": "127.77.0.2:8080", "LBSYNC_PROXIES": "1"})
    assert result.exit_code == 0, result.output
    config = json.loads((cbdir / "config.json").read_text())
    assert config["controller"]["id"] == "node2"
    assert len(config["workers"]) == 2


@pytest.mark.parametrize(("args", "fragment"), [
    (["--node", "Bad-Name"], "--node"),
    (["--listen", "nohost"], "--listen"),
    (["--listen", "127.0.0.1:99999"], "--listen"),
    (["--proxies", "0"], "--proxies"),
    (["--link-secret-file", "/nonexistent/secret"], "--link-secret-file"),
    (["--link-secret-file", "/etc/hostname"], "not base64"),
])
def test_command_bad_input_writes_nothing(tmp_path: Path, args: list[str], fragment: str) -> None:
    cbdir = tmp_path / "cb"
    base = {"--node": "node1", "--listen": "127.0.0.1:8080"}
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
