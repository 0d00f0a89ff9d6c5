"""The fleet's router links, pure part: the fleet key, the wanted peers, the state files,
and how `lbsync crossbar-config` renders and writes them."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lbsync.cli import main
from lbsync.edge import links
from lbsync.edge.crossbar import CrossbarConfigError, render_crossbar_config
from lbsync.model import Member, MemberStatus

SECRET = base64.b64encode(bytes(range(32))).decode()
ENV = {name: None for name in ("LBSYNC_CBDIR", "LBSYNC_NODE_NAME", "LBSYNC_LISTEN",
                               "LBSYNC_PROXIES", "LBSYNC_LINK_PORT", "LBSYNC_LINK_SECRET",
                               "LBSYNC_LINK_SECRET_FILE")}


def edge(name: str, addr: str = "10.0.0.2", status: MemberStatus = MemberStatus.ALIVE,
         **tags: str) -> Member:
    return Member(name, addr, {"role": "edge", "port": "8080", "link-port": "8082",
                               "ready": "1", **tags}, status)


# --- the fleet key ---------------------------------------------------------------------------


def test_the_fleet_key_is_derived_not_the_secret_and_the_same_everywhere() -> None:
    secret = links.read_secret(SECRET, "test")
    seed = links.fleet_seed(secret)
    assert len(seed) == 32 and seed != secret
    assert links.fleet_public_key(secret) == links.fleet_public_key(bytes(range(32)))
    assert links.fleet_public_key(secret) != links.fleet_public_key(bytes(range(1, 33)))


@pytest.mark.parametrize(("text", "fragment"), [
    ("not base64!", "not base64"),
    (base64.b64encode(b"short").decode(), "5 bytes; at least 16"),
    ("", "0 bytes"),
])
def test_a_bad_secret_is_one_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(links.LinkError, match=fragment):
        links.read_secret(text, "where")


def test_a_serf_keygen_key_is_a_secret() -> None:
    key = links.new_secret()  # the same shape as `serf keygen`: base64 of 32 bytes
    assert len(links.read_secret(key + "\n", "file")) == 32


def in_crossbar(code: str) -> Any:
    """Run CODE in a fresh interpreter with Crossbar imported; its last print, as JSON.

    Crossbar makes txaio use Twisted for the whole process, which would break the asyncio
    tests that run later in this one."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return json.loads(out.splitlines()[-1])


def test_key_files_are_crossbars_node_key_format(tmp_path: Path) -> None:
    secret = links.read_secret(SECRET, "test")
    links.write_key_files(tmp_path, secret, "node1")
    assert stat.S_IMODE((tmp_path / "key.priv").stat().st_mode) == 0o600
    # Crossbar reads and checks it at start (private and public halves agree).
    tags = in_crossbar(
        "import json; from crossbar.common.key import _maybe_generate_node_key as check, "
        "_parse_node_key as parse\n"
        f"check({str(tmp_path)!r}); print(json.dumps(parse({str(tmp_path / 'key.priv')!r})))")
    assert tags["public-key-ed25519"] == links.fleet_public_key(secret)
    assert tags["private-key-ed25519"] == links.fleet_seed(secret).hex()


# --- the wanted peers ------------------------------------------------------------------------


def test_wanted_peers_are_the_other_alive_linkable_edge_nodes() -> None:
    members = [
        edge("node1", "10.0.0.1"), edge("node2", "10.0.0.2"),
        edge("node3", status=MemberStatus.LEFT), edge("node4", status=MemberStatus.FAILED),
        Member("lb", "10.0.0.9", {"role": "lb"}),
        edge("node5", **{"link-port": "x"}), edge("node6", **{"link-port": "70000"}),
        edge("node7", "not-an-ip"), edge("bad name"),
        edge("node8", "fe80::1%eth0", ready="0"),
    ]
    peers = links.wanted_peers(members, "node1")
    assert sorted(peers) == ["node2", "node8"]
    assert peers["node2"] == links.Peer("node2", "10.0.0.2", 8082)
    assert peers["node2"].url == "ws://10.0.0.2:8082/ws"
    assert peers["node8"].url == "ws://[fe80::1]:8082/ws"
    assert peers["node8"].endpoint() == {"type": "tcp", "host": "fe80::1", "port": 8082,
                                         "version": 6}
    # Only the serving peers gate readiness.
    assert links.ready_peers(members, "node1") == {"node2"}


def test_wanted_file_round_trips_and_writes_only_changes(tmp_path: Path) -> None:
    peers = {"node2": links.Peer("node2", "10.0.0.2", 8082)}
    assert links.write_wanted(tmp_path, "realm1", peers) is True
    assert links.write_wanted(tmp_path, "realm1", peers) is False
    assert links.parse_wanted((tmp_path / links.WANTED_FILE).read_text()) == ("realm1", peers)


@pytest.mark.parametrize("text", [
    "", "[]", '{"realm": "r"}', '{"realm": 1, "peers": {}}',
    '{"realm": "r", "peers": {"n": {"host": "x", "port": 1}}}',
    '{"realm": "r", "peers": {"n": {"host": "10.0.0.1"}}}',
])
def test_a_damaged_wanted_file_is_a_link_error(text: str) -> None:
    with pytest.raises(links.LinkError, match="links.json is damaged"):
        links.parse_wanted(text)


# --- the links' state ------------------------------------------------------------------------


def state(**up: bool) -> links.LinksReport:
    return links.LinksReport(42, 0.0, {
        name: links.LinkState(name, f"ws://{name}:8082/ws", ok, 100.0, int(ok), 0, ok)
        for name, ok in up.items()})


def test_a_pair_is_up_only_both_ways() -> None:
    one_way = links.LinkState("node2", "ws://x:8082/ws", True, 0.0, 1, 0, incoming=False)
    back = links.LinkState("node3", "ws://y:8082/ws", False, 0.0, 0, 0, incoming=True)
    report = links.LinksReport(1, 0.0, {"node2": one_way, "node3": back})
    assert report.up == set()
    assert links.links_tag(report, ["node2", "node3"]) == "0/2"
    line = links.describe(report, {"node2": links.Peer("node2", "10.0.0.2", 8082)}, 0.0)[0]
    assert "down" in line and "(to it up, from it not yet)" in line
    assert links.beacon("node2") == "lbsync.fleet.node2.beacon"


def test_state_round_trips(tmp_path: Path) -> None:
    report = state(node2=True, node3=False)
    text = links.render_state(42, report.links.values(), now=0.0)
    assert links.parse_state(text) == report
    assert report.up == {"node2"}
    assert links.read_state(tmp_path) is None
    (tmp_path / links.STATE_FILE).write_text("{")
    with pytest.raises(links.LinkError, match="links-state.json is damaged"):
        links.read_state(tmp_path)


def test_links_tag_counts_only_wanted_peers() -> None:
    assert links.links_tag(state(node2=True, node3=True), ["node2", "node4"]) == "1/2"
    assert links.links_tag(None, ["node2"]) == "0/1"
    assert links.links_tag(None, []) == "0/0"


def test_describe_says_starting_up_down_and_unwanted() -> None:
    wanted = {n: links.Peer(n, "10.0.0.2", 8082) for n in ("node2", "node3", "node5")}
    lines = links.describe(state(node2=True, node3=False, node4=True), wanted, now=130.0)
    assert [line.split()[:2] for line in lines] == [
        ["node2", "up"], ["node3", "down"], ["node4", "up"], ["node5", "starting"]]
    assert "(unwanted: being removed)" in lines[2]
    assert "for 30 s, up 1x, down 0x" in lines[0]


# --- crossbar-config with links --------------------------------------------------------------


def render(**kw: Any) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(render_crossbar_config(
        "node1", "127.77.0.1", 8080, 1, **kw))
    return config


def test_links_on_add_the_role_the_transport_and_the_component() -> None:
    key = links.fleet_public_key(links.read_secret(SECRET, "t"))
    config = render(link_port=8082, fleet_key=key)
    router = config["workers"][0]
    realm = router["realms"][0]
    rlink = next(r for r in realm["roles"] if r["name"] == "rlink")
    assert rlink["permissions"][0]["disclose"] == {"caller": True, "publisher": True}
    transport = next(t for t in router["transports"] if t["id"] == "links")
    assert transport["endpoint"] == {"type": "tcp", "interface": "127.77.0.1", "port": 8082}
    ws = transport["paths"]["ws"]
    assert list(ws["auth"]) == ["cryptosign"]  # nothing else logs in there
    assert ws["auth"]["cryptosign"]["principals"] == {
        "fleet": {"realm": "realm1", "role": "rlink", "authorized_keys": [key]}}
    assert router["components"] == [{
        "type": "class", "id": "fleet_links", "classname": "lbsync.edge.rlinks.FleetLinks",
        "realm": "realm1", "role": "trusted", "extra": {"realm": "realm1", "node": "node1"}}]
    # Crossbar's own checker accepts it.
    assert in_crossbar(
        "import json, sys; from crossbar.personality import Personality as P\n"
        f"P.check_config(P, json.loads({json.dumps(config)!r})); print('true')") is True


def test_links_off_renders_no_link_anything() -> None:
    config = render()
    router = config["workers"][0]
    assert "components" not in router
    assert [t["id"] for t in router["transports"]] == ["proxies"]
    assert [r["name"] for r in router["realms"][0]["roles"]] == ["anonymous"]


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"link_port": 8080, "fleet_key": "ab" * 32}, "--link-port: 8080 is also"),
    ({"link_port": 0, "fleet_key": "ab" * 32}, "--link-port: port 0"),
    ({"link_port": 8082, "fleet_key": None}, "need the fleet key"),
    ({"link_port": 8082, "fleet_key": "zz"}, "need the fleet key"),
])
def test_bad_link_inputs_are_refused(kw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CrossbarConfigError, match=fragment):
        render(**kw)


def test_the_command_turns_links_on_with_a_secret(tmp_path: Path) -> None:
    cbdir = tmp_path / "node1"
    (tmp_path / "secret").write_text(SECRET + "\n")
    args = ["crossbar-config", "--cbdir", str(cbdir), "--node", "node1", "--listen",
            "127.77.0.1:8080", "--proxies", "1", "--link-secret-file", str(tmp_path / "secret")]
    result = CliRunner().invoke(main, args, env=ENV)
    assert result.exit_code == 0, result.output
    assert "router links on 127.77.0.1:8082" in result.stdout
    assert (cbdir / "key.priv").exists() and (cbdir / "key.pub").exists()
    assert links.parse_wanted((cbdir / links.WANTED_FILE).read_text()) == ("realm1", {})
    # The secret itself, from the environment (the Docker images: the Serf gossip key).
    other = CliRunner().invoke(main, args[:-2], env={**ENV, "LBSYNC_LINK_SECRET": SECRET})
    assert other.exit_code == 0 and "router links on" in other.stdout
    # Without a secret the links are off, and the sidecar sees no links.json.
    off = CliRunner().invoke(main, args[:-2], env=ENV)
    assert off.exit_code == 0 and "router links off" in off.stdout
    assert not (cbdir / links.WANTED_FILE).exists()


def test_the_links_command_shows_each_link_and_checks_them(tmp_path: Path) -> None:
    import os

    cbdir = tmp_path / "cb"
    peers = {n: links.Peer(n, "10.0.0.2", 8082) for n in ("node2", "node3")}
    links.write_wanted(cbdir, "realm1", peers)
    up = links.LinkState("node2", peers["node2"].url, True, 0.0, 1, 0, incoming=True)
    half = links.LinkState("node3", peers["node3"].url, True, 0.0, 1, 0, incoming=False)
    (cbdir / links.STATE_FILE).write_text(links.render_state(os.getpid(), [up, half]))
    result = CliRunner().invoke(main, ["links", "--cbdir", str(cbdir), "--check"], env=ENV)
    assert result.exit_code == 1, result.output
    assert f"{cbdir}: 1/2 links up (router pid {os.getpid()})" in result.stdout
    assert "node3            down" in result.stdout
    assert "1 wanted link(s) not up" in result.stderr
    (cbdir / links.STATE_FILE).write_text(links.render_state(os.getpid(), [up]))
    links.write_wanted(cbdir, "realm1", {"node2": peers["node2"]})
    assert CliRunner().invoke(main, ["links", "--cbdir", str(cbdir), "--check"],
                              env=ENV).exit_code == 0
    # A report left by a router that is gone says nothing.
    (cbdir / links.STATE_FILE).write_text(links.render_state(2**22 + 12345, [up]))
    gone = CliRunner().invoke(main, ["links", "--cbdir", str(cbdir), "--check"], env=ENV)
    assert gone.exit_code == 1 and "no running router" in gone.stdout


def test_the_links_command_says_where_to_run_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["links", "--dir", str(tmp_path / "none")], env=ENV)
    assert result.exit_code == 1
    assert "run it on an edge node (docker exec NODE lbsync links)" in result.stderr
