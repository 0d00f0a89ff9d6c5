"""lbsync.settings.TABLE: each setting once, the CLI made of it, the images held to it."""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from lbsync.cli import main, table_options, table_values
from lbsync.settings import (
    BY_ENV,
    BY_NAME,
    TABLE,
    Setting,
    Settings,
    SettingsError,
    flags,
    parse_cidrs,
    parse_duration,
    parse_switch,
    rows_for,
    what,
)

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted({c for row in TABLE for c in row.commands})


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield prefix + name, command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")


CLICK = {"lbsync": main, **dict(_commands(main))}


def sample(row: Setting) -> str:
    """A good value of the row, other than its default."""
    if row.choices:
        return row.choices[-1]
    if row.kind is int:
        return "42"
    if row.kind is Path:
        return "/tmp/lbsync-sample"
    if row.convert is parse_duration:
        return "7s"
    if row.convert is parse_cidrs:
        return "10.0.0.0/8"
    if row.convert is parse_switch:
        return "on"
    if row.name in ("serf_rpc", "listen"):
        return "127.0.0.1:7"
    return "sample"


# --- the table itself --------------------------------------------------------------------


def test_every_variable_and_flag_is_one_row() -> None:
    assert len(BY_NAME) == len(TABLE)
    envs = [row.env for row in TABLE if row.env]
    assert len(envs) == len(set(envs)) == len(BY_ENV)
    assert all(re.fullmatch(r"LBSYNC_[A-Z0-9_]+", env) for env in envs)
    for command in COMMANDS:
        flags = [row.flag_for(command) for row in rows_for(command) if row.flag_for(command)]
        assert len(flags) == len(set(flags)), command


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.name)
def test_every_default_parses(row: Setting) -> None:
    row.parse(row.default)  # raises SettingsError if the table contradicts itself
    row.parse(sample(row))


def test_settings_defaults_are_the_tables() -> None:
    for f in dataclasses.fields(Settings):
        assert f.default == BY_NAME[f.name].value, f.name
    Settings().check()


def test_node_config_defaults_are_the_tables() -> None:
    from lbsync.edge.sidecar import NodeConfig

    for f in dataclasses.fields(NodeConfig):
        if f.name in BY_NAME and f.default is not dataclasses.MISSING:
            assert f.default == BY_NAME[f.name].value, f.name


def test_every_command_of_the_table_exists() -> None:
    assert set(COMMANDS) <= set(CLICK)


def test_the_cli_spells_no_variable_itself() -> None:
    """Options with a variable come from the table (table_options), nowhere else."""
    for path, command in CLICK.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                row = BY_ENV[str(param.envvar)]
                assert path in row.commands, (path, param.name)
                assert param.name == row.name and param.opts == [row.flag_for(path)]
    assert 'envvar="' not in (ROOT / "lbsync" / "cli.py").read_text()


def test_every_variable_lbsync_reads_is_in_the_table() -> None:
    # LBSYNC_CLUSTER marks the local cluster's processes; it is no setting.
    not_settings = {"LBSYNC_CLUSTER"}
    found: dict[str, Path] = {}
    for folder, pattern in (("lbsync", "*.py"), ("s6", "*"), ("templates", "*")):
        for path in (ROOT / folder).rglob(pattern):
            if path.is_file() and path.suffix != ".pyc":
                text = path.read_text(errors="ignore")
                for var in re.findall(r"LBSYNC_[A-Z0-9_]*[A-Z0-9]", text):
                    found.setdefault(var, path)
    unknown = {var: str(path) for var, path in found.items()
               if var not in BY_ENV and var not in not_settings}
    assert not unknown


# --- the CLI made of it ------------------------------------------------------------------


def _probe(command: str) -> tuple[click.Command, dict[str, Any]]:
    """A click command with `command`'s table options that keeps what they parse to."""
    seen: dict[str, Any] = {}

    @click.command()
    @table_options(command)
    def probe(**kw: Any) -> None:
        seen.update(table_values(command, kw))

    return probe, seen


def _given(command: str, but: str) -> dict[str, str]:
    """A good value of every required row but one, as variables."""
    return {str(row.env): sample(row) for row in rows_for(command)
            if command in row.required and row.name != but}


CASES = [(command, row) for command in COMMANDS for row in rows_for(command)
         if row.flag_for(command)]


@pytest.mark.parametrize(("command", "row"), CASES, ids=[f"{c}:{r.name}" for c, r in CASES])
def test_every_flag_reads_its_variable(command: str, row: Setting) -> None:
    probe, seen = _probe(command)
    env = {**_given(command, row.name), str(row.env): sample(row)}
    result = CliRunner().invoke(probe, [], env=env)
    assert result.exit_code == 0, result.output
    assert seen[row.name] == row.parse(sample(row))
    flag = str(row.flag_for(command))
    result = CliRunner().invoke(probe, [flag, sample(row)], env={**env, str(row.env): ""})
    assert result.exit_code == 0, result.output
    assert seen[row.name] == row.parse(sample(row))


# A bad value for each setting of the load balancer, as its variable.
BAD = {
    "registry_dir": None, "template": None, "serf_auth_key": None,
    "serf_auth_key_file": "/nonexistent/token", "haproxy_bin": None,
    "haproxy_config": "/a b/haproxy.cfg", "role": "a b", "backend": "a b",
    "default_port": "0", "default_weight": "999", "allow_cidr": "300.0.0.0/8",
    "runtime_socket": "relative.sock", "runtime_tcp": ":9999", "runtime_tcp_level": "root",
    "master_socket": "/run/m aster", "frontend_bind": "nope", "stats_bind": "nope",
    "cookie_name": "a;b", "cookie_key": "a b", "check_path": "info", "check_inter": "0",
    "check_downinter": "0ms", "check_fall": "0", "check_rise": "0", "drain_timeout": "5h",
    "failed_grace": "-1s", "failed_timeout": "soon", "resync_interval": "0", "poll_interval": "x",
    "reload_min_interval": "-1", "serf_rpc": "nope", "metrics_bind": "127.0.0.1:0",
    "tls_cert": "/nonexistent/site.pem", "tls_bind": "nope", "tls_redirect": "maybe",
    "hsts": "-1", "cert_expiry_margin": "-1",
}


def test_bad_covers_every_setting_of_the_load_balancer() -> None:
    assert set(BAD) == {row.name for row in Settings.rows() if row.env}


@pytest.mark.parametrize("name", sorted(n for n, bad in BAD.items() if bad is not None))
def test_a_bad_variable_is_one_error_naming_it(tmp_path: Path, name: str) -> None:
    row = BY_NAME[name]
    inside = {f"LBSYNC_{k}": str(tmp_path / v) for k, v in (
        ("REGISTRY_DIR", "nodes"), ("HAPROXY_CONFIG", "etc/haproxy.cfg"),
        ("RUNTIME_SOCKET", "run/admin.sock"), ("MASTER_SOCKET", "run/master.sock"))}
    env: dict[str, str | None] = {**{var: None for var in BY_ENV}, **inside,
                                  "LBSYNC_RUNTIME_TCP": "127.0.0.1:19999",
                                  str(row.env): BAD[name]}
    result = CliRunner().invoke(main, ["render"], env=env)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert str(row.env) in lines[-1], lines
    if result.exit_code == 1:  # lbsync's own check: one line
        assert len(lines) == 1 and lines[0].startswith("lbsync: error: ")
    else:  # a wrongly typed int: click's usage error
        assert result.exit_code == 2 and "Invalid value" in lines[-1]
    assert not (tmp_path / "run").exists() and not (tmp_path / "etc").exists()


@pytest.mark.parametrize(("var", "bad"), [("LBSYNC_LINKS_WAIT", "x"),
                                          ("LBSYNC_DRAIN_TIMEOUT", "-"),
                                          ("LBSYNC_LISTEN", "nope"),
                                          ("LBSYNC_SERF_RPC", "nope"),
                                          ("LBSYNC_AGENT_PORT", "x")])
def test_a_bad_variable_of_the_node_names_it(var: str, bad: str) -> None:
    env: dict[str, str | None] = {v: None for v in BY_ENV}
    env.update(LBSYNC_NODE_NAME="node1", LBSYNC_LISTEN="127.0.0.1:18080",
               LBSYNC_AGENT_PORT="18081", LBSYNC_SERF_RPC="127.0.0.1:17373")
    env[var] = bad
    result = CliRunner().invoke(main, ["node"], env=env)
    assert result.exit_code in (1, 2)
    assert var in result.stderr.strip().splitlines()[-1]


# --- the images and the compose files ----------------------------------------------------


def _dockerfile_env(path: Path) -> dict[str, str]:
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for word in shlex.split(line[4:]):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def _compose_env(path: Path) -> dict[str, dict[str, str]]:
    """service -> its environment, with ${VAR:-default} read as its default."""
    doc = yaml.safe_load(path.read_text())
    out = {}
    for service, spec in doc["services"].items():
        env = {str(k): str(v) for k, v in (spec.get("environment") or {}).items()}
        out[service] = {k: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    return out


def _image_values() -> list[tuple[str, str, str]]:
    """(where, variable, value) for every LBSYNC_* variable an image or compose file sets."""
    values = []
    for image in ("base", "lb", "node"):
        for key, value in _dockerfile_env(ROOT / "images" / image / "Dockerfile").items():
            values.append((f"images/{image}/Dockerfile", key, value))
    for name in ("docker-compose.yml", "docker-stack.yml"):
        for service, env in _compose_env(ROOT / name).items():
            values += [(f"{name} {service}", key, value) for key, value in env.items()]
    return [v for v in values if v[1].startswith("LBSYNC_")]


# Values the images set on purpose instead of the table's default.
OVERRIDES: dict[tuple[str, str], str] = {
    ("LBSYNC_REGISTRY_DIR", "/var/lib/lbsync/nodes"): "state in /var/lib/lbsync, which "
    "survives `docker restart`",
    ("LBSYNC_HAPROXY_CONFIG", "/var/lib/lbsync/haproxy.cfg"): "the same",
    ("LBSYNC_STATS_BIND", "*:1936"): "the stats page is published from the container",
    ("LBSYNC_METRICS_BIND", "*:9180"): "the agent's metrics are published from the container",
    ("LBSYNC_SERF_RPC", "127.0.0.1:7373"): "every container runs its Serf agent",
    ("LBSYNC_RUNTIME_SOCKET", "/run/lbsync-admin/haproxy.sock"): "Swarm: a folder of its own "
    "(mode 0600)",
    ("LBSYNC_PROXIES", "2"): "a node container gets 2 proxy workers, not 2 x the host's CPUs",
    # The node image's own settings, which have no default (or none that fits a container).
    ("LBSYNC_CBDIR", "/var/lib/lbsync/cbdir"): "the node's Crossbar folder in the image",
    ("LBSYNC_LISTEN", "0.0.0.0:8080"): "Crossbar serves the container's network",
    ("LBSYNC_AGENT_PORT", "8081"): "the agent-check port of the image",
    ("LBSYNC_STOP_COMMAND", "s6-svc -wD -T 20000 -d /etc/s6/node/crossbar"): "s6 stops "
    "Crossbar after the leave",
}


def test_images_and_compose_set_only_settings_of_the_table() -> None:
    values = _image_values()
    assert {var for _, var, _ in values} >= {"LBSYNC_REGISTRY_DIR", "LBSYNC_DRAIN_TIMEOUT",
                                            "LBSYNC_LISTEN", "LBSYNC_PROXIES"}  # found them
    for where, var, value in values:
        assert var in BY_ENV, f"{where}: {var} is no setting of lbsync.settings.TABLE"
        row = BY_ENV[var]
        row.parse(value, f"{where}: {var}")  # raises SettingsError
        if (var, value) not in OVERRIDES:
            assert row.parse(value) == row.value, (
                f"{where}: {var}={value} is not the table's default {row.default!r}: set the "
                "default there, or list the override here with its reason")


def test_every_override_is_still_one() -> None:
    used = {(var, value) for _, var, value in _image_values()}
    for (var, value) in OVERRIDES:
        assert (var, value) in used, f"{var}={value} is no longer set: drop the override"
        assert BY_ENV[var].parse(value) != BY_ENV[var].value, f"{var}={value} is the default"


# --- command lines from the table --------------------------------------------------------


def test_flags_spell_a_command_line_from_the_table_in_the_order_given() -> None:
    assert flags("node", node_name="n1", drain_timeout="7s", weight=None, cbdir=Path("/c")) == [
        "--name", "n1", "--drain-timeout", "7s", "--cbdir", "/c"]
    # A command's own spelling of a setting (crossbar-config's older --node).
    assert flags("crossbar-config", node_name="n1") == ["--node", "n1"]
    assert what("node_name", "crossbar-config") == "--node" and what("node_name") == "--name"


@pytest.mark.parametrize(("command", "name"), [
    ("agent", "admin_socket"),  # no such setting
    ("agent", "node_name"),  # a setting, but not the agent's
    ("crossbar-config", "link_secret"),  # a variable only, no flag
])
def test_flags_refuse_a_name_the_command_has_no_flag_for(command: str, name: str) -> None:
    with pytest.raises(SettingsError, match=f"^lbsync {command} has no flag for the setting "
                       f"'{name}'$"):
        flags(command, **{name: "x"})


# --- README ------------------------------------------------------------------------------

README_BEGIN = "<!-- settings: made from lbsync.settings.TABLE, checked by tests/unit/" \
               "test_settings_table.py -->"
README_END = "<!-- settings end -->"


def readme_table() -> str:
    lines = ["| flag | variable | default | commands | what |", "|---|---|---|---|---|"]
    for row in TABLE:
        if not (row.flag or row.env):
            continue
        flag = f"`{row.flag}`" if row.flag else "(none)"
        for command, other in row.flags:
            flag += f" (`{command}`: `{other}`)"
        default = {None: "", "": "`''`"}.get(row.default, f"`{row.default}`")
        commands = ", ".join(sorted(row.commands)).replace("lbsync", "all (before the command)")
        lines.append(f"| {flag} | `{row.env}` | {default} | {commands} | {row.help} |")
    return "\n".join(lines)


def test_the_readme_lists_the_table() -> None:
    text = (ROOT / "README.md").read_text()
    assert README_BEGIN in text and README_END in text
    listed = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert listed == readme_table(), "README.md's settings table, as it should read:\n" + (
        readme_table())
