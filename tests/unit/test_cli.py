"""lbsync.cli through click's CliRunner: flags, LBSYNC_* variables, `handle` and `render`."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lbsync.cli import main
from lbsync.model import Member
from lbsync.registry import Registry

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None,
                                   reason="haproxy is not installed")

# Settings the environment of the test run must not leak into.
_CLEAN_ENV: dict[str, str | None] = {
    name: None for name in (
        "LBSYNC_DEFAULT_PORT", "LBSYNC_BACKEND", "LBSYNC_CHECK_INTER", "LBSYNC_SERF_RPC",
        "LBSYNC_ALLOW_CIDR", "LBSYNC_REGISTRY_DIR", "LBSYNC_HAPROXY_CONFIG", "LBSYNC_TEMPLATE",
        "LBSYNC_RUNTIME_SOCKET", "LBSYNC_MASTER_SOCKET", "LBSYNC_RUNTIME_TCP",
        "LBSYNC_FRONTEND_BIND", "LBSYNC_STATS_BIND", "LBSYNC_ROLE", "LBSYNC_LOG_LEVEL",
        "LBSYNC_METRICS_BIND", "LBSYNC_SERF_AUTH_KEY", "LBSYNC_SERF_AUTH_KEY_FILE",
        "SERF_EVENT",
    )
}


def run(args: Sequence[str], env: Mapping[str, str | None] | None = None,
        stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={**_CLEAN_ENV, **(env or {})},
                              input=stdin)


def assert_one_error_line(result: Result, *fragments: str) -> str:
    """Exit 1 with exactly one `lbsync: error:` line on stderr and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lbsync: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def tmp_flags(tmp: Path) -> list[str]:
    """Flags that keep every path of `render` inside tmp and every port unusual."""
    return [
        "--registry-dir", str(tmp / "nodes"),
        "--haproxy-config", str(tmp / "etc" / "haproxy.cfg"),
        "--runtime-socket", str(tmp / "run" / "admin.sock"),
        "--master-socket", str(tmp / "run" / "master.sock"),
        "--runtime-tcp", "127.0.0.1:19999",
        "--frontend-bind", "127.0.0.1:18080",
        "--stats-bind", "127.0.0.1:11936",
    ]


# --- help --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["render"], ["agent"], ["handle"], ["members"],
                                     ["status"]])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(command: list[str], flag: str) -> None:
    result = run([*command, flag])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    assert "Traceback" not in result.output


def test_help_lists_env_vars_for_settings() -> None:
    out = run(["render", "--help"]).output
    for var in ("LBSYNC_DEFAULT_PORT", "LBSYNC_REGISTRY_DIR", "LBSYNC_ALLOW_CIDR",
                "LBSYNC_CHECK_INTER", "LBSYNC_SERF_RPC"):
        assert var in out
    agent_help = run(["agent", "--help"]).output
    assert "--metrics-bind" in agent_help and "LBSYNC_METRICS_BIND" in agent_help


def test_version() -> None:
    result = run(["--version"])
    assert result.exit_code == 0
    assert re.search(r"\d+\.\d+\.\d+", result.output)


def test_unknown_command_is_a_usage_error() -> None:
    result = run(["frobnicate"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# --- bad flag values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--default-port", "70000"], "--default-port"),
        (["--default-weight", "300"], "--default-weight"),
        (["--serf-rpc", "nope"], "--serf-rpc"),
        (["--check-inter", "abc"], "--check-inter"),
        (["--check-inter", "0"], "--check-inter"),
        (["--drain-timeout", "5h"], "--drain-timeout"),
        (["--failed-grace", "-1s"], "--failed-grace"),
        (["--failed-timeout", "-1s"], "--failed-timeout"),
        (["--failed-timeout", "soon"], "--failed-timeout"),
        (["--allow-cidr", "300.0.0.0/8"], "--allow-cidr"),
        (["--backend", "a b"], "--backend"),
        (["--role", "a;b"], "--role"),
        (["--stats-bind", "nope"], "--stats-bind"),
        (["--check-path", "no-slash"], "--check-path"),
        (["--metrics-bind", "nope"], "--metrics-bind"),
        (["--metrics-bind", "127.0.0.1:70000"], "--metrics-bind"),
    ],
)
@pytest.mark.parametrize("command", ["render", "agent"])
def test_bad_flag_value_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, flags: list[str],
    fragment: str
) -> None:
    import lbsync.daemon

    def must_not_run(*_args: object) -> None:
        raise AssertionError("the daemon started despite a bad flag")

    monkeypatch.setattr(lbsync.daemon, "run_daemon", must_not_run)
    result = run([command, *tmp_flags(tmp_path), *flags])
    assert_one_error_line(result, fragment)
    # Refused before doing anything: no folder or state file was prepared.
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("flags", [["--default-port", "abc"], ["--check-fall", "x"],
                                   ["--log-level", "loud"]])
def test_wrongly_typed_flag_is_a_usage_error(tmp_path: Path, flags: list[str]) -> None:
    args = [*flags, "render"] if flags[0] == "--log-level" else ["render", *flags]
    result = run(args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Invalid value" in result.stderr


def _agent_must_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import lbsync.daemon

    def must_not_run(*_args: object) -> None:
        raise AssertionError("the daemon started despite a bad flag")

    monkeypatch.setattr(lbsync.daemon, "run_daemon", must_not_run)


@pytest.mark.parametrize("via", ["flag", "env"])
def test_agent_metrics_port_in_use_is_one_error_line_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    import socket
    import sys

    _agent_must_not_run(monkeypatch)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        bind = f"127.0.0.1:{busy.getsockname()[1]}"
        flags = [*tmp_flags(tmp_path), "--haproxy-bin", sys.executable]
        result = run(["agent", *flags, *(["--metrics-bind", bind] if via == "flag" else [])],
                     env={"LBSYNC_METRICS_BIND": bind} if via == "env" else None)
    assert_one_error_line(result, f"--metrics-bind: cannot listen on {bind}", "in use")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "etc").exists()


def test_agent_hands_a_bound_metrics_server_to_the_daemon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import sys
    import urllib.request

    import lbsync.daemon

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seen: dict[str, object] = {}

    def fake_run_daemon(settings: object, stop: object, metrics: object, server: object) -> None:
        from lbsync.metrics import Metrics, MetricsServer

        assert isinstance(metrics, Metrics) and isinstance(server, MetricsServer)
        server.start()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                seen["text"] = r.read().decode()
        finally:
            server.stop()

    monkeypatch.setattr(lbsync.daemon, "run_daemon", fake_run_daemon)
    result = run(["agent", *tmp_flags(tmp_path), "--haproxy-bin", sys.executable,
                  "--metrics-bind", f"127.0.0.1:{port}"])
    assert result.exit_code == 0, result.output
    assert "lbsync_reconcile_passes_total" in str(seen["text"])


def test_agent_without_metrics_bind_serves_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import lbsync.daemon

    seen: list[object] = []
    monkeypatch.setattr(lbsync.daemon, "run_daemon",
                        lambda settings, stop, metrics, server: seen.append(server))
    result = run(["agent", *tmp_flags(tmp_path), "--haproxy-bin", sys.executable])
    assert result.exit_code == 0, result.output
    assert seen == [None]


def test_members_with_bad_serf_rpc() -> None:
    assert_one_error_line(run(["members", "--serf-rpc", "nope"]), "--serf-rpc")


def test_members_reads_the_rpc_token_from_its_file(tmp_path: Path) -> None:
    from serf_fake import FakeAgent

    token = tmp_path / "serf-rpc.token"
    token.write_text("t0ken\n")
    agent = FakeAgent(auth_key="t0ken")
    try:
        env = {"LBSYNC_CLUSTER_DIR": str(tmp_path),  # no lbsync.env there to fill in
               "LBSYNC_SERF_RPC": f"127.0.0.1:{agent.port}"}
        ok = run(["members", "--serf-auth-key-file", str(token)], env=env)
        assert ok.exit_code == 0, ok.output
        assert "a1" in ok.output and "role=edge" in ok.output
        via_env = run(["members"], env={**env, "LBSYNC_SERF_AUTH_KEY_FILE": str(token)})
        assert via_env.exit_code == 0, via_env.output
        assert_one_error_line(run(["members"], env=env), "requires an RPC auth key")
        assert_one_error_line(
            run(["members", "--serf-auth-key-file", str(tmp_path / "nope")], env=env),
            "--serf-auth-key-file", "No such file")
    finally:
        agent.close()


def test_a_missing_auth_key_file_is_one_error_line(tmp_path: Path) -> None:
    assert_one_error_line(
        run(["render", *tmp_flags(tmp_path), "--serf-auth-key-file", str(tmp_path / "no")]),
        f"--serf-auth-key-file {tmp_path / 'no'}: No such file")


def test_the_auth_key_itself_wins_over_its_file(tmp_path: Path) -> None:
    from lbsync.cli import auth_key

    (tmp_path / "token").write_text("from-file\n")
    assert auth_key(None, tmp_path / "token") == "from-file"
    assert auth_key("given", tmp_path / "token") == "given"
    assert auth_key(None, None) is None


# --- LBSYNC_* variables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"LBSYNC_DEFAULT_PORT": "70000"}, "--default-port"),
        ({"LBSYNC_SERF_RPC": "nope"}, "--serf-rpc"),
        ({"LBSYNC_CHECK_INTER": "abc"}, "--check-inter"),
        ({"LBSYNC_ALLOW_CIDR": "300.0.0.0/8"}, "--allow-cidr"),
        ({"LBSYNC_BACKEND": "a b"}, "--backend"),
        ({"LBSYNC_FAILED_TIMEOUT": "-5s"}, "--failed-timeout"),
    ],
)
def test_env_vars_are_read_and_checked(tmp_path: Path, env: dict[str, str],
                                       fragment: str) -> None:
    assert_one_error_line(run(["render", *tmp_flags(tmp_path)], env=env), fragment)


def test_flag_wins_over_env_var(tmp_path: Path) -> None:
    result = run(["render", *tmp_flags(tmp_path), "--default-port", "70001"],
                 env={"LBSYNC_DEFAULT_PORT": "9000"})
    assert_one_error_line(result, "70001")


# --- handle ------------------------------------------------------------------------------


def test_handle_without_serf_event_fails_clearly(tmp_path: Path) -> None:
    result = run(["handle", "--registry-dir", str(tmp_path / "nodes")], stdin="")
    assert_one_error_line(result, "SERF_EVENT is not set")
    assert not (tmp_path / "nodes").exists()


def test_handle_with_unknown_event_fails_clearly(tmp_path: Path) -> None:
    result = run(["handle", "--registry-dir", str(tmp_path)], env={"SERF_EVENT": "bogus"},
                 stdin="n1\t10.0.0.1\tedge\trole=edge\n")
    assert_one_error_line(result, "'bogus'", "member-join")
    assert list(tmp_path.iterdir()) == []


def test_handle_join_writes_registry_files(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    stdin = ("n1\t10.0.0.1\tedge\trole=edge,port=9000\n"
             "n2\t10.0.0.2\tedge\tweight=5,role=edge\n")
    result = run(["handle", "--registry-dir", str(nodes)], env={"SERF_EVENT": "member-join"},
                 stdin=stdin)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in nodes.iterdir()) == ["n1.json", "n2.json"]
    n1 = json.loads((nodes / "n1.json").read_text(encoding="utf-8"))
    assert (n1["address"], n1["port"], n1["status"], n1["last_event"]) == (
        "10.0.0.1", 9000, "alive", "member-join")
    assert n1["tags"] == {"port": "9000", "role": "edge"}
    assert "2 registry entries changed" in result.stderr


def test_handle_registry_dir_from_env(tmp_path: Path) -> None:
    result = run(["handle"], env={"SERF_EVENT": "member-join",
                                  "LBSYNC_REGISTRY_DIR": str(tmp_path)},
                 stdin="n1\t10.0.0.1\tedge\trole=edge\n")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "n1.json").is_file()


def test_handle_bad_line_exits_1_but_stores_the_good_ones(tmp_path: Path) -> None:
    stdin = ("good1\t10.0.0.1\tedge\trole=edge\n"
             "bad name\t10.0.0.9\tedge\trole=edge\n"
             "good2\t10.0.0.2\tedge\trole=edge\n")
    result = run(["handle", "--registry-dir", str(tmp_path)],
                 env={"SERF_EVENT": "member-join"}, stdin=stdin)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good1.json", "good2.json"]
    refused = [ln for ln in result.stderr.splitlines() if ln.startswith("lbsync: refused")]
    assert len(refused) == 1
    assert "line 2" in refused[0]


def test_handle_leave_then_reap(tmp_path: Path) -> None:
    flags = ["handle", "--registry-dir", str(tmp_path)]
    line = "n1\t10.0.0.1\tedge\trole=edge\n"
    assert run(flags, env={"SERF_EVENT": "member-join"}, stdin=line).exit_code == 0
    assert run(flags, env={"SERF_EVENT": "member-leave"}, stdin=line).exit_code == 0
    assert json.loads((tmp_path / "n1.json").read_text())["status"] == "left"
    assert run(flags, env={"SERF_EVENT": "member-reap"}, stdin=line).exit_code == 0
    assert list(tmp_path.iterdir()) == []


def test_handle_user_event_is_ignored(tmp_path: Path) -> None:
    result = run(["handle", "--registry-dir", str(tmp_path / "nodes")],
                 env={"SERF_EVENT": "user"}, stdin="payload\n")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "nodes").exists()


# --- render ------------------------------------------------------------------------------


def _two_members(tmp: Path) -> None:
    reg = Registry(tmp / "nodes")
    reg.put(Member("e1", "127.0.0.1", {"role": "edge", "port": "18001"}))
    reg.put(Member("e2", "127.0.0.2", {"role": "edge"}))
    reg.put(Member("db", "127.0.0.3", {"role": "db"}))  # another role: not a server


@needs_haproxy
def test_render_writes_a_valid_config(tmp_path: Path) -> None:
    from lbsync.haproxy.binary import check_haproxy_config

    _two_members(tmp_path)
    result = run(["render", *tmp_flags(tmp_path)], env={"LBSYNC_DEFAULT_PORT": "18002"})
    assert result.exit_code == 0, result.output
    cfg = tmp_path / "etc" / "haproxy.cfg"
    assert "2 servers, written" in result.stdout
    text = cfg.read_text(encoding="utf-8")
    servers = [ln.split()[1:3] for ln in text.splitlines() if ln.startswith("    server ")]
    assert servers == [["e1", "127.0.0.1:18001"], ["e2", "127.0.0.2:18002"]]
    check_haproxy_config(cfg)
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["haproxy.cfg", "haproxy.state"]
    # A second run changes nothing.
    again = run(["render", *tmp_flags(tmp_path)], env={"LBSYNC_DEFAULT_PORT": "18002"})
    assert again.exit_code == 0, again.output
    assert "unchanged" in again.stdout


@needs_haproxy
def test_render_out_flag(tmp_path: Path) -> None:
    _two_members(tmp_path)
    out = tmp_path / "other.cfg"
    result = run(["render", *tmp_flags(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert not (tmp_path / "etc" / "haproxy.cfg").exists()


@needs_haproxy
@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("global\n{% if %}\n# lbsync:servers begin\n# lbsync:servers end\n", "line 2"),
        ("global\n    maxconn {{ s.nope }}\n", "nope"),
        ("global\n    maxconn 1\n", "lbsync:servers begin"),
    ],
    ids=["syntax", "undefined", "no-markers"],
)
def test_render_with_broken_template_keeps_the_old_file(
    tmp_path: Path, template: str, fragment: str
) -> None:
    _two_members(tmp_path)
    cfg = tmp_path / "etc" / "haproxy.cfg"
    cfg.parent.mkdir()
    old = b"# the config HAProxy runs now\n\xe2\x9c\x93 bytes kept as they are\n"
    cfg.write_bytes(old)
    broken = tmp_path / "broken.j2"
    broken.write_text(template, encoding="utf-8")
    result = run(["render", *tmp_flags(tmp_path), "--template", str(broken)])
    line = assert_one_error_line(result, fragment)
    assert line.startswith(f"lbsync: error: template {broken}")
    assert cfg.read_bytes() == old
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["haproxy.cfg"]


@needs_haproxy
def test_render_config_haproxy_rejects_keeps_the_old_file(tmp_path: Path) -> None:
    _two_members(tmp_path)
    cfg = tmp_path / "etc" / "haproxy.cfg"
    cfg.parent.mkdir()
    cfg.write_text("old\n", encoding="utf-8")
    template = tmp_path / "bad-directive.j2"
    template.write_text("global\n    no-such-directive 1\nbackend nodes\n"
                        "    # lbsync:servers begin\n"
                        "{% for srv in servers %}    server {{ srv.name }} {{ srv.hostport }}\n"
                        "{% endfor %}    # lbsync:servers end\n", encoding="utf-8")
    result = run(["render", *tmp_flags(tmp_path), "--template", str(template)])
    assert_one_error_line(result, "HAProxy rejects", "no-such-directive")
    assert cfg.read_text(encoding="utf-8") == "old\n"
    # The candidate file handed to `haproxy -c` is gone.
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["haproxy.cfg", "haproxy.state"]


@needs_haproxy
def test_render_missing_template_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.j2"
    result = run(["render", *tmp_flags(tmp_path), "--template", str(missing)])
    assert_one_error_line(result, f"template {missing}: cannot read it")


def test_render_with_missing_haproxy_binary(tmp_path: Path) -> None:
    result = run(["render", *tmp_flags(tmp_path), "--haproxy-bin",
                  str(tmp_path / "no-haproxy")])
    assert_one_error_line(result, "not found")
    assert not (tmp_path / "etc").exists()
