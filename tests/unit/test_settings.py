"""lbsync.settings: flag parsers and Settings.check() naming the flag at fault."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from lbsync.model import LbsyncError
from lbsync.settings import (
    Settings,
    SettingsError,
    is_unix_socket,
    parse_cidrs,
    parse_duration,
    parse_hostport,
)

# --- parse_hostport ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7373", ("127.0.0.1", 7373)),
        ("localhost:1", ("localhost", 1)),
        ("serf.example.com:65535", ("serf.example.com", 65535)),
        ("[::1]:7373", ("::1", 7373)),
        ("[2001:db8::1]:80", ("2001:db8::1", 80)),
        ("*:8080", ("*", 8080)),
        ("  10.0.0.1:80  ", ("10.0.0.1", 80)),
        # What tests/rig/serfaddr.parse_rpc_addr took, before this parser was the one.
        (" 10.1.2.3:1 ", ("10.1.2.3", 1)),
        ("serf.local:65535", ("serf.local", 65535)),
        ("[fd00::2]:80", ("fd00::2", 80)),
    ],
)
def test_parse_hostport_good(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "--x") == expected


def test_parse_hostport_without_host_when_allowed() -> None:
    assert parse_hostport(":8080", "--frontend-bind", host_required=False) == ("*", 8080)


@pytest.mark.parametrize(
    "text",
    ["nope", "", ":8080", "127.0.0.1", "127.0.0.1:", "::1:80", "[::1]", "host:port",
     "a b:80", "host:123456", "host:80/x", "http://host:80", "[::g]:80", "host;x:80",
     "127.0.0.1:http", "127.0.0.1:-1", "[::1:7373", "[]:7373"],
)
def test_parse_hostport_bad(text: str) -> None:
    with pytest.raises(SettingsError, match=r"^--serf-rpc: .* is not HOST:PORT$"):
        parse_hostport(text, "--serf-rpc")


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_parse_hostport_port_out_of_range(port: str) -> None:
    with pytest.raises(SettingsError, match=r"^--serf-rpc: port \d+ is outside 1-65535$"):
        parse_hostport(f"127.0.0.1:{port}", "--serf-rpc")


def test_parse_hostport_refuses_non_ascii_digits() -> None:
    # `\d` matches any Unicode digit and int() reads them, so "*:٨٠" passes as port 80 while
    # the raw text is what the template writes into `bind`.
    with pytest.raises(SettingsError):
        parse_hostport("*:\u0668\u0660", "--frontend-bind", host_required=False)


def test_settings_error_is_an_lbsync_error() -> None:
    assert issubclass(SettingsError, LbsyncError)


# --- parse_duration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2", 2.0), ("2s", 2.0), ("0.5", 0.5), ("1.5s", 1.5), ("500ms", 0.5), ("1m", 60.0),
     ("2.5m", 150.0), ("0", 0.0), (" 3s ", 3.0)],
)
def test_parse_duration_good(text: str, seconds: float) -> None:
    assert parse_duration(text, "--check-inter") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "", "1h", "-1s", "1 s", ".5s", "1.s", "s", "1e3",
                                  "inf", "nan", "1ms2"])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(SettingsError, match=r"^--check-inter: .* is not a duration"):
        parse_duration(text, "--check-inter")


# --- parse_cidrs -------------------------------------------------------------------------


def test_parse_cidrs_empty_means_all() -> None:
    assert parse_cidrs("") == ()
    assert parse_cidrs(" , ,") == ()


def test_parse_cidrs_mixed_families_and_host_bits() -> None:
    nets = parse_cidrs("10.0.0.0/8, 2001:db8::/32,192.168.1.7/24,10.9.9.9")
    assert nets == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.168.1.0/24"),  # host bits dropped (strict=False)
        ipaddress.ip_network("10.9.9.9/32"),
    )


@pytest.mark.parametrize("bad", ["300.0.0.0/8", "10.0.0.0/33", "nope", "10.0.0.0/8/8",
                                 "2001:db8::/129"])
def test_parse_cidrs_bad(bad: str) -> None:
    with pytest.raises(SettingsError, match=r"^--allow-cidr: .* is not a network") as info:
        parse_cidrs(f"10.0.0.0/8,{bad}")
    assert repr(bad) in str(info.value)


# --- Settings.check ----------------------------------------------------------------------


def test_default_settings_pass_check() -> None:
    s = Settings()
    assert s.check() is s


def _bad(**changes: Any) -> str:
    with pytest.raises(SettingsError) as info:
        dataclasses.replace(Settings(), **changes).check()
    return str(info.value)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"backend": "a b"}, "--backend"),
        ({"backend": ""}, "--backend"),
        ({"backend": "-x"}, "--backend"),
        ({"backend": "b" * 64}, "--backend"),
        ({"cookie_name": "SERVER ID"}, "--cookie-name"),
        ({"cookie_name": "a;b"}, "--cookie-name"),
        ({"role": "a b"}, "--role"),
        ({"role": ""}, "--role"),
        ({"role": "r" * 64}, "--role"),
        ({"default_port": 0}, "--default-port"),
        ({"default_port": 70000}, "--default-port"),
        ({"default_weight": -1}, "--default-weight"),
        ({"default_weight": 257}, "--default-weight"),
        ({"check_path": "info"}, "--check-path"),
        ({"check_path": "/a b"}, "--check-path"),
        ({"check_path": "/a\nb"}, "--check-path"),
        ({"check_path": '/a"'}, "--check-path"),
        ({"cookie_key": ""}, "--cookie-key"),
        ({"cookie_key": "a b"}, "--cookie-key"),
        ({"cookie_key": "k" * 129}, "--cookie-key"),
        ({"check_fall": 0}, "--check-fall"),
        ({"check_rise": 0}, "--check-rise"),
        # No flag sets these two (lbsync.settings.TABLE): the message names the setting.
        ({"retries": 0}, "retries"),
        ({"maxconn": 0}, "maxconn"),
        ({"check_inter": 0.0}, "--check-inter"),
        ({"check_inter": -1.0}, "--check-inter"),
        ({"check_downinter": 0.0}, "--check-downinter"),
        ({"resync_interval": 0.0}, "--resync-interval"),
        ({"poll_interval": 0.0}, "--poll-interval"),
        ({"drain_timeout": -1.0}, "--drain-timeout"),
        ({"failed_grace": -1.0}, "--failed-grace"),
        ({"failed_timeout": -1.0}, "--failed-timeout"),
        ({"reload_min_interval": -0.5}, "--reload-min-interval"),
        ({"frontend_bind": "nope"}, "--frontend-bind"),
        ({"frontend_bind": "*:0"}, "--frontend-bind"),
        ({"stats_bind": "127.0.0.1"}, "--stats-bind"),
        ({"runtime_tcp": ":9999"}, "--runtime-tcp"),
        ({"runtime_tcp": "127.0.0.1:99999"}, "--runtime-tcp"),
        ({"metrics_bind": "nope"}, "--metrics-bind"),
        ({"metrics_bind": "127.0.0.1:0"}, "--metrics-bind"),
        ({"metrics_bind": "127.0.0.1"}, "--metrics-bind"),
        ({"metrics_bind": "http://127.0.0.1:9180"}, "--metrics-bind"),
        ({"runtime_socket": "relative/path.sock"}, "--runtime-socket"),
        ({"runtime_socket": "/run/my sock"}, "--runtime-socket"),
        ({"runtime_socket": "/run/a;b"}, "--runtime-socket"),
        ({"master_socket": "/run/m#aster"}, "--master-socket"),
        ({"master_socket": "/run/'m'"}, "--master-socket"),
        ({"haproxy_config": Path("/etc/ha proxy/haproxy.cfg")}, "--haproxy-config"),
        ({"haproxy_config": Path('/etc/"x".cfg')}, "--haproxy-config"),
    ],
)
def test_check_refuses_and_names_the_flag(changes: dict[str, Any], flag: str) -> None:
    assert flag in _bad(**changes)


@pytest.mark.parametrize("name", ["nodes\n", "SERVERID\n"])
def test_check_refuses_backend_and_cookie_name_with_trailing_newline(name: str) -> None:
    # Both are written into haproxy.cfg and into runtime commands.
    with pytest.raises(SettingsError):
        Settings(backend=name).check()
    with pytest.raises(SettingsError):
        Settings(cookie_name=name).check()


@pytest.mark.parametrize(
    "changes",
    [
        {"runtime_tcp": ""},  # no TCP socket
        {"runtime_socket": "127.0.0.1:9999", "runtime_tcp_level": "admin"},
        {"runtime_socket": "unix@/run/x.sock"},
        {"frontend_bind": ":80"},
        {"stats_bind": "*:1936"},
        {"metrics_bind": ""},  # off, the default
        {"metrics_bind": "127.0.0.1:9180"},
        {"metrics_bind": "*:9180"},
        {"metrics_bind": ":9180"},
        {"metrics_bind": "[::1]:9180"},
        {"drain_timeout": 0.0, "reload_min_interval": 0.0, "failed_grace": 0.0,
         "failed_timeout": 0.0},
        {"default_weight": 0},
        {"default_port": 65535},
        {"check_path": "/health?full=1&x=%20"},
        {"cookie_key": "a" * 128},
    ],
)
def test_check_accepts_edge_values(changes: dict[str, Any]) -> None:
    dataclasses.replace(Settings(), **changes).check()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().backend = "x"  # type: ignore[misc]


def test_auth_key_not_in_repr() -> None:
    assert "s3cret" not in repr(Settings(serf_auth_key="s3cret"))


# --- derived values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "state"),
    [
        ("/etc/haproxy/haproxy.cfg", "/etc/haproxy/haproxy.state"),
        ("/tmp/x/lb.conf", "/tmp/x/lb.state"),
        ("/tmp/x/haproxy", "/tmp/x/haproxy.state"),
        ("/tmp/x/a.b.cfg", "/tmp/x/a.b.state"),
        ("rel/haproxy.cfg", "rel/haproxy.state"),
    ],
)
def test_state_file_sits_beside_the_config(config: str, state: str) -> None:
    assert Settings(haproxy_config=Path(config)).state_file == Path(state)


@pytest.mark.parametrize(("address", "unix"), [("/run/x.sock", True), ("unix@/run/x", True),
                                              ("127.0.0.1:9999", False), ("x.sock", False)])
def test_is_unix_socket(address: str, unix: bool) -> None:
    assert is_unix_socket(address) is unix


def test_metrics_are_off_by_default() -> None:
    assert Settings().metrics_bind == ""


# --- TLS ---------------------------------------------------------------------------------


def _pem(tmp_path: Path, name: str = "site.pem") -> Path:
    from tests.rig.certs import make_pem

    path = tmp_path / name
    path.write_text(make_pem(name))
    return path


def test_tls_is_off_by_default() -> None:
    s = Settings()
    assert s.tls_cert is None and s.tls_redirect is False and s.hsts == 0
    assert s.cert_files() == []


def test_tls_cert_is_made_absolute_not_resolved(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pem = _pem(tmp_path)
    (tmp_path / "link.pem").symlink_to(pem)
    monkeypatch.chdir(tmp_path)
    s = Settings.build({"tls_cert": "link.pem"})
    assert s.tls_cert == tmp_path / "link.pem"  # HAProxy's name for it: not site.pem
    assert s.cert_files() == [tmp_path / "link.pem"]


def test_a_folder_is_each_of_its_certificates(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    a, b = _pem(folder, "a.pem"), _pem(folder, "b.pem")
    (folder / "a.pem.ocsp").write_bytes(b"\x30")  # HAProxy's extra files are no certificate
    (folder / ".hidden").write_text("x")
    assert Settings.build({"tls_cert": str(folder)}).cert_files() == [a, b]


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("", "no PEM certificate"),
    ("hello", "no PEM certificate"),
    ("cert only", "no PEM private key"),
    ("folder", "folder with no certificate file"),
])
def test_a_bad_tls_cert_is_one_error_naming_the_file(tmp_path: Path, content: str | None,
                                                     message: str) -> None:
    path = tmp_path / "site.pem"
    if content == "cert only":
        content = _pem(tmp_path, "x.pem").read_text().split("-----BEGIN PRIVATE KEY")[0]
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError, match=f"^--tls-cert: {path}.*{message}"):
        Settings.build({"tls_cert": str(path)})


@pytest.mark.parametrize("changes", [{"tls_redirect": "on"}, {"hsts": "3600"}])
def test_redirect_and_hsts_need_a_certificate(changes: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="needs --tls-cert"):
        Settings.build(changes)


@pytest.mark.parametrize(("text", "on"), [("on", True), ("OFF", False), ("1", True),
                                          ("no", False), ("true", True)])
def test_tls_redirect_reads_a_switch(tmp_path: Path, text: str, on: bool) -> None:
    s = Settings.build({"tls_cert": str(_pem(tmp_path)), "tls_redirect": text})
    assert s.tls_redirect is on


def test_fingerprint_is_what_haproxy_calls_sha1() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from lbsync.haproxy.certs import fingerprint
    from tests.rig.certs import make_pem

    pem = make_pem("x")
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert fingerprint(pem) == cert.fingerprint(hashes.SHA1()).hex().upper()
    assert fingerprint("no pem") == ""
