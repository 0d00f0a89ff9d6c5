"""The one `serf agent` command line (lbsync.serf.agent_cmd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbsync.model import LbsyncError
from lbsync.serf.agent_cmd import SerfAgentArgsError, serf_agent_argv


def test_the_least_is_node_bind_rpc_and_a_quiet_log() -> None:
    assert serf_agent_argv("n1", "127.0.0.11:7946", "127.0.0.11:7373") == [
        "serf", "agent", "-node", "n1", "-bind", "127.0.0.11:7946",
        "-rpc-addr", "127.0.0.11:7373", "-log-level", "warn"]


def test_log_level_none_leaves_serfs_default() -> None:
    assert "-log-level" not in serf_agent_argv("n1", "a:1", "a:2", log_level=None)


def test_every_flag() -> None:
    argv = serf_agent_argv(
        "lb", "127.0.0.1:7946", "127.0.0.1:7373", serf="/usr/bin/serf",
        advertise="10.0.0.1:7946", tags={"role": "lb", "port": "8080"},
        join=["127.0.0.2:7946", "127.0.0.3:7946"], retry_join="127.0.0.4:7946",
        retry_interval="1s", profile="local", snapshot=Path("/s/serf.snapshot"), rejoin=True,
        event_handler="lbsync handle --registry-dir /nodes", config_file=Path("/c/serf.json"),
        encrypt="a2V5", log_level="debug")
    assert argv[:2] == ["/usr/bin/serf", "agent"]
    pairs = list(zip(argv[2::2], argv[3::2], strict=False))
    assert ("-advertise", "10.0.0.1:7946") in pairs
    assert argv.count("-tag") == 2 and "role=lb" in argv and "port=8080" in argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-join"] == [
        "127.0.0.2:7946", "127.0.0.3:7946"]
    # One address given as a string is one address, not its characters.
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-retry-join"] == [
        "127.0.0.4:7946"]
    for flag, value in [("-retry-interval", "1s"), ("-profile", "local"),
                        ("-snapshot", "/s/serf.snapshot"), ("-config-file", "/c/serf.json"),
                        ("-encrypt", "a2V5"), ("-log-level", "debug"),
                        ("-event-handler", "lbsync handle --registry-dir /nodes")]:
        assert argv[argv.index(flag) + 1] == value, flag
    assert "-rejoin" in argv


def test_a_name_lbsync_refuses_still_starts_an_agent() -> None:
    # The tests start members whose names lbsync must refuse: the builder only spells.
    assert serf_agent_argv("evil;name", "a:1", "a:2")[3] == "evil;name"


def test_a_tag_value_may_hold_equals_as_serf_keeps_it() -> None:
    assert "x=a,b=c" in serf_agent_argv("n", "a:1", "a:2", tags={"x": "a,b=c"})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"node": ""}, r"^serf agent -node: '' is empty"),
    ({"node": " n1"}, r"-node: ' n1'"),
    ({"node": "n\n1"}, r"-node: 'n\\n1'"),
    ({"bind": ""}, r"^serf agent -bind: '' is empty"),
    ({"rpc_addr": "a:\n2"}, r"-rpc-addr: 'a:\\n2' is empty or has a control character"),
    ({"tags": {"": "x"}}, r"^serf agent -tag: key '' is empty"),
    ({"tags": {"a=b": "x"}}, r"-tag: key 'a=b' is empty or has '='"),
    ({"tags": {"role": "edge\n"}}, r"^serf agent -tag role: value 'edge\\n' has a control"),
    ({"profile": "fast"}, r"-profile: 'fast' is not one of lan, wan, local"),
    ({"log_level": "loud"}, r"-log-level: 'loud' is not one of"),
    ({"join": [""]}, r"-join: '' is empty"),
])
def test_bad_values_are_one_clear_lbsync_error(kwargs: dict[str, object], match: str) -> None:
    args = {"node": "n1", "bind": "127.0.0.1:7946", "rpc_addr": "127.0.0.1:7373", **kwargs}
    with pytest.raises(SerfAgentArgsError, match=match) as e:
        serf_agent_argv(**args)  # type: ignore[arg-type]
    assert isinstance(e.value, LbsyncError) and "\n" not in str(e.value)
