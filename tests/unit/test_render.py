"""lbsync.render: haproxy.cfg from Jinja2, server markers, structure(), and a real `haproxy -c`."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from lbsync.desired import desired_state
from lbsync.model import LbsyncError, Member, MemberStatus, Server
from lbsync.render import (
    BEGIN,
    END,
    ConfigPipeline,
    RenderError,
    load_template,
    render_haproxy,
    render_text,
    split_servers,
    structure,
    structure_hash,
)
from lbsync.settings import Settings, SettingsError

LABEL, SOURCE = load_template(None)
S = Settings()
SERVERS = [Server("e1", "10.0.0.1", 8080, 100, None), Server("e2", "10.0.0.2", 9000, 5, None)]
SERVER_LINE = re.compile(
    # Strict on everything a member could influence; `downinter` may come and go.
    r"^    server [A-Za-z0-9][A-Za-z0-9_.-]* [0-9a-fA-F.:]+:\d+ check inter \d+"
    r"( downinter \d+)? fall \d+ rise \d+( pool-max-conn -1 pool-purge-delay \d+s)?"
    r" weight \d+( agent-check agent-port \d+ agent-inter \d+)?( cookie [A-Za-z0-9_.-]+)?$",
    re.ASCII,
)


def render(servers: list[Server] = SERVERS, *, explicit: bool = False,
           settings: Settings = S, source: str = SOURCE) -> str:
    return render_haproxy(LABEL, source, settings, servers, explicit)


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.split("\n")]


def server_block(text: str) -> list[str]:
    """The raw lines between the markers (split on "\\n" only, like HAProxy reads)."""
    raw = text.split("\n")
    stripped = [ln.strip() for ln in raw]
    return raw[stripped.index(BEGIN) + 1:stripped.index(END)]


# --- the default template ----------------------------------------------------------------


def test_default_template_has_markers_once_and_in_order() -> None:
    text = render()
    ls = lines(text)
    assert ls.count(BEGIN) == 1
    assert ls.count(END) == 1
    assert ls.index(BEGIN) < ls.index(END)


def test_default_template_server_lines() -> None:
    assert server_block(render()) == [
        "    server e1 10.0.0.1:8080 check inter 1000 downinter 50 fall 2 rise 1"
        " pool-max-conn -1 pool-purge-delay 5s weight 100",
        "    server e2 10.0.0.2:9000 check inter 1000 downinter 50 fall 2 rise 1"
        " pool-max-conn -1 pool-purge-delay 5s weight 5",
    ]


@pytest.mark.parametrize(
    "line",
    [
        "balance leastconn",
        "option httpchk GET /info",
        "option redispatch 1",
        "timeout tunnel 1h",
        "server-state-file /etc/haproxy/haproxy.state",
        "load-server-state-from-file global",
        "stats socket /run/lbsync/haproxy.sock mode 600 level admin expose-fd listeners",
        "stats socket ipv4@127.0.0.1:9999 level user",
        "bind 127.0.0.1:1936",
        "listen stats",
        "backend nodes",
        "default_backend nodes",
        "bind *:8080",
        "master-worker",
    ],
)
def test_default_template_contains(line: str) -> None:
    assert line in lines(render())


def test_retry_on_line() -> None:
    retry = [ln for ln in lines(render()) if ln.startswith("retry-on ")]
    assert len(retry) == 1
    assert "conn-failure" in retry[0].split()


def test_stats_listen_section_binds_stats() -> None:
    ls = lines(render())
    start = ls.index("listen stats")
    assert ls[start + 1] == "bind 127.0.0.1:1936"


def test_stats_listener_serves_haproxys_prometheus_exporter() -> None:
    ls = lines(render())
    section = ls[ls.index("listen stats"):ls.index(f"backend {S.backend}")]
    assert "http-request use-service prometheus-exporter if { path /metrics }" in section
    # Before the stats page, which would otherwise answer every path under its `/` uri.
    assert section.index("http-request use-service prometheus-exporter if { path /metrics }"
                         ) < section.index("stats enable")


def test_dynamic_cookies_on_2_6() -> None:
    text = render(explicit=False)
    ls = lines(text)
    assert "cookie SERVERID insert indirect nocache dynamic" in ls
    assert "dynamic-cookie-key lbsync" in ls
    assert all(" cookie " not in ln for ln in server_block(text))


def test_explicit_cookies_on_3_0() -> None:
    servers = [dataclasses.replace(s, cookie=s.name) for s in SERVERS]
    text = render(servers, explicit=True)
    ls = lines(text)
    assert "cookie SERVERID insert indirect nocache" in ls
    assert not any(ln.startswith("dynamic-cookie-key") for ln in ls)
    assert not any(ln.endswith(" dynamic") for ln in ls if ln.startswith("cookie "))
    assert [ln.rsplit(" ", 2)[1:] for ln in server_block(text)] == [["cookie", "e1"],
                                                                    ["cookie", "e2"]]


def test_settings_reach_the_config() -> None:
    settings = Settings(
        backend="web", cookie_name="LB", cookie_key="k3y", check_path="/health",
        frontend_bind="127.0.0.1:18080", stats_bind="127.0.0.1:11936",
        runtime_socket="unix@/tmp/x/rt.sock", runtime_tcp="127.0.0.1:19999",
        runtime_tcp_level="admin",
        haproxy_config=Path("/tmp/x/lb.cfg"), maxconn=123, retries=7, check_inter=0.5,
    ).check()
    ls = lines(render(settings=settings))
    for expected in ["backend web", "default_backend web", "cookie LB insert indirect nocache "
                     "dynamic", "dynamic-cookie-key k3y", "option httpchk GET /health",
                     "bind 127.0.0.1:18080", "bind 127.0.0.1:11936",
                     "stats socket /tmp/x/rt.sock mode 600 level admin expose-fd listeners",
                     "stats socket ipv4@127.0.0.1:19999 level admin",
                     "server-state-file /tmp/x/lb.state", "maxconn 123", "retries 7"]:
        assert expected in ls
    assert server_block(render(SERVERS, settings=settings))[0].split()[5] == "500"


def test_the_tcp_runtime_socket_is_read_only_unless_raised() -> None:
    assert "stats socket ipv4@127.0.0.1:9999 level user" in lines(render())
    with pytest.raises(SettingsError, match="--runtime-tcp-level 'root': one of user, "
                                            "operator, admin"):
        Settings(runtime_tcp_level="root").check()
    # lbsync cannot change servers through a read-only socket.
    with pytest.raises(SettingsError, match="needs --runtime-tcp-level admin"):
        Settings(runtime_socket="127.0.0.1:9999").check()
    Settings(runtime_socket="127.0.0.1:9999", runtime_tcp_level="admin").check()


def test_tcp_runtime_socket_is_not_rendered_as_unix() -> None:
    settings = Settings(runtime_socket="127.0.0.1:9999", runtime_tcp="")
    text = render(settings=settings)
    assert "stats socket 127.0.0.1:9999" not in text
    assert "expose-fd" not in text
    assert "ipv4@" not in text


def test_zero_servers_renders_empty_block() -> None:
    assert server_block(render([])) == []


# --- broken templates --------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "global\n    maxconn 1\n",
        f"{BEGIN}\n",
        f"{END}\n",
        f"{END}\n{BEGIN}\n",
        f"{BEGIN}\n{BEGIN}\n{END}\n",
        f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n",
    ],
)
def test_template_without_one_pair_of_markers_is_refused(source: str) -> None:
    with pytest.raises(RenderError, match="must sit between one"):
        render_haproxy("my.j2", source, S, SERVERS, False)


def test_markers_may_be_indented() -> None:
    text = render_haproxy("my.j2", f"backend x\n  {BEGIN}\n  {END}\n", S, [], False)
    assert BEGIN in text


def test_syntax_error_names_the_template_and_line() -> None:
    source = f"global\n    maxconn 1\n{{% if %}}\n{BEGIN}\n{END}\n"
    with pytest.raises(RenderError, match=r"^template my\.j2, line 3: "):
        render_haproxy("my.j2", source, S, SERVERS, False)


def test_unclosed_block_is_a_render_error() -> None:
    with pytest.raises(RenderError, match=r"^template my\.j2, line \d+"):
        render_haproxy("my.j2", f"{{% for x in servers %}}\n{BEGIN}\n{END}\n", S, [], False)


def test_undefined_variable_is_a_render_error() -> None:
    source = f"global\n    maxconn {{{{ s.no_such_setting }}}}\n{BEGIN}\n{END}\n"
    with pytest.raises(RenderError, match=r"^template my\.j2: .*no_such_setting"):
        render_haproxy("my.j2", source, S, SERVERS, False)


def test_undefined_top_level_name_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="nope"):
        render_text("t", "{{ nope }}", {})


def test_render_text_keeps_trailing_newline() -> None:
    assert render_text("t", "a {{ x }}\n", {"x": 1}) == "a 1\n"


def test_render_text_does_not_html_escape() -> None:
    assert render_text("t", "{{ x }}", {"x": "<&>\"'"}) == "<&>\"'"


def test_load_template_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "t.j2"
    path.write_text("hello\n", encoding="utf-8")
    assert load_template(path) == (str(path), "hello\n")


def test_load_template_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.j2"
    with pytest.raises(RenderError, match=rf"^template {re.escape(str(path))}: cannot read it"):
        load_template(path)


def test_load_template_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.j2"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RenderError, match="cannot read it"):
        load_template(path)


def test_shipped_template_label() -> None:
    assert LABEL == "lbsync:haproxy.cfg.j2"
    assert BEGIN in SOURCE


# --- structure ---------------------------------------------------------------------------


def test_structure_ignores_server_lines() -> None:
    assert structure(render([])) == structure(render(SERVERS))
    assert structure_hash(render([])) == structure_hash(render(SERVERS))


def test_structure_ignores_comments_outside_the_markers() -> None:
    text = render()
    edited = text.replace("global\n", "# a new comment\nglobal\n    # indented comment\n", 1)
    assert edited != text
    assert structure(edited) == structure(text)


@pytest.mark.parametrize(
    ("old", "new"),
    [("balance leastconn", "balance roundrobin"), ("timeout tunnel 1h", "timeout tunnel 2h"),
     ("retries 3", "retries 4"), ("backend nodes", "backend other")],
)
def test_structure_sees_other_edits(old: str, new: str) -> None:
    text = render()
    assert old in text
    edited = text.replace(old, new)
    assert structure(edited) != structure(text)
    assert structure_hash(edited) != structure_hash(text)


def test_structure_sees_an_added_line() -> None:
    text = render()
    edited = text.replace("    balance leastconn\n", "    balance leastconn\n    option tcplog\n")
    assert structure(edited) != structure(text)


def test_structure_changes_with_settings_but_not_with_servers() -> None:
    assert structure(render(settings=Settings(check_path="/other"))) != structure(render())
    assert structure(render(settings=Settings(check_inter=2.0))) != structure(render())


def test_structure_hash_is_short_hex() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", structure_hash(render()))


# --- property: no member input can change the structure or escape a server line ----------

_VALID_NAME = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
_NASTY = ["\n", "\r", "\r\n", " ", "\t", ";", "#", '"', "'", "\u00e9", "\u2028", "\x00", "/",
          "\nserver evil 1.2.3.4:80", "%", "{{", "{%", "}}"]
_NAMES = st.one_of(
    _VALID_NAME,
    _VALID_NAME.map(lambda n: n + "\n"),
    st.builds(lambda a, b: a + b, _VALID_NAME, st.sampled_from(_NASTY)),
    st.builds(lambda a, b: a + b, st.sampled_from(_NASTY), _VALID_NAME),
    st.text(max_size=70),
)
_IPS = st.ip_addresses().map(str)
_ADDRS = st.one_of(
    _IPS,
    st.builds(lambda a, b: a + b, _IPS, st.sampled_from(_NASTY)),
    st.builds(lambda a, b: f"{a}%{b}", st.ip_addresses(v=6).map(str), st.text(max_size=20)),
    st.text(max_size=40),
)
_TAG_VALUES = st.one_of(
    st.sampled_from(["edge", "8080", "1", "0", "256", "257", "65535", "65536", "false",
                     "\u00b2", "\u0661\u0662", "80\n", "edge\n", "0\n", " 80"]),
    st.integers(-5, 70000).map(str),
    st.text(max_size=20),
)
_TAG_KEYS = st.one_of(st.sampled_from(["role", "port", "weight", "ready"]), st.text(max_size=12))
# Mostly members that would serve, with one field bent, so the server lines get exercised.
_NEAR_VALID_TAGS = st.fixed_dictionaries(
    {"role": st.sampled_from(["edge", "edge", "edge", "web", "edge\n", "Edge"])},
    optional={"port": _TAG_VALUES, "weight": _TAG_VALUES, "ready": _TAG_VALUES},
)
_TAGS = st.one_of(
    _NEAR_VALID_TAGS,
    st.builds(lambda extra, known: {**extra, **known},
              st.dictionaries(_TAG_KEYS, _TAG_VALUES, max_size=3), _NEAR_VALID_TAGS),
    st.dictionaries(_TAG_KEYS, _TAG_VALUES, max_size=5),
)
_STATUSES = st.one_of(st.just(MemberStatus.ALIVE), st.sampled_from(list(MemberStatus)))
_MEMBERS = st.lists(
    st.builds(Member, name=_NAMES, addr=_ADDRS, tags=_TAGS, status=_STATUSES), max_size=8)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=_MEMBERS, version=st.sampled_from([(2, 6, 12), (3, 0, 0)]))
@example(members=[Member("node1\n", "10.0.0.1", {"role": "edge"})], version=(2, 6, 12))
@example(members=[Member("node1", "fe80::1%x\nserver evil 1.2.3.4:80", {"role": "edge"})],
         version=(3, 0, 0))
def test_member_input_never_changes_structure_or_escapes_a_server_line(
    members: list[Member], version: tuple[int, int, int]
) -> None:
    by_name = {m.name: m for m in members}
    desired = desired_state(by_name, S, version)
    text = render_haproxy(LABEL, SOURCE, S, list(desired.servers.values()),
                          desired.explicit_cookies)
    empty = render_haproxy(LABEL, SOURCE, S, [], desired.explicit_cookies)
    assert structure(text) == structure(empty)
    block = server_block(text)
    for line in block:
        assert SERVER_LINE.fullmatch(line), line
    assert len(block) == len(desired.servers)
    # Nothing but the server block differs from the zero-server render.
    raw = text.split("\n")
    stripped = [ln.strip() for ln in raw]
    assert raw[: stripped.index(BEGIN) + 1] + raw[stripped.index(END):] == empty.split("\n")


# --- a real `haproxy -c` -----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("explicit", [False, True], ids=["dynamic-cookies", "explicit-cookies"])
def test_rendered_config_passes_haproxy_check(tmp_path: Path, explicit: bool) -> None:
    from lbsync.haproxy.binary import check_haproxy_config

    settings = Settings(
        haproxy_config=tmp_path / "haproxy.cfg",
        runtime_socket=str(tmp_path / "admin.sock"),
        master_socket=str(tmp_path / "master.sock"),
        runtime_tcp="127.0.0.1:19999",
        frontend_bind="127.0.0.1:18080",
        stats_bind="127.0.0.1:11936",
        backend="edge_nodes",
        check_inter=0.5,
    ).check()
    members = {
        "e1": Member("e1", "127.0.0.1", {"role": "edge", "port": "18001"}),
        "e2.example": Member("e2.example", "127.0.0.2", {"role": "edge", "weight": "0"}),
        "e-3": Member("e-3", "::1", {"role": "edge", "port": "18003", "weight": "256"}),
    }
    desired = desired_state(members, settings, (3, 0, 0) if explicit else (2, 6, 12))
    assert len(desired.servers) == 3
    text = render_haproxy(LABEL, SOURCE, settings, list(desired.servers.values()),
                          desired.explicit_cookies)
    assert (" cookie e1" in text) is explicit
    settings.haproxy_config.write_text(text, encoding="utf-8")
    check_haproxy_config(settings.haproxy_config)  # raises ConfigInvalid with HAProxy's alerts


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize(
    "changes",
    [
        {"frontend_bind": "[::1]:18080"},
        {"stats_bind": ":11936"},
        {"runtime_tcp": ""},
        {"runtime_tcp": "[::1]:19999"},
        {"runtime_socket": "unix@{tmp}/admin.sock"},
    ],
    ids=["v6-frontend", "stats-any", "no-tcp-socket", "v6-runtime-tcp", "unix@-socket"],
)
def test_settings_that_pass_check_render_a_config_haproxy_accepts(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    from lbsync.haproxy.binary import check_haproxy_config

    base = Settings(
        haproxy_config=tmp_path / "haproxy.cfg", runtime_socket=str(tmp_path / "admin.sock"),
        master_socket=str(tmp_path / "master.sock"), runtime_tcp="127.0.0.1:19999",
        frontend_bind="127.0.0.1:18080", stats_bind="127.0.0.1:11936",
    )
    settings = dataclasses.replace(
        base, **{k: v.format(tmp=tmp_path) for k, v in changes.items()}).check()
    text = render_haproxy(LABEL, SOURCE, settings, [Server("e1", "127.0.0.1", 18001)], False)
    settings.haproxy_config.write_text(text, encoding="utf-8")
    # Settings.check() accepted the value, so HAProxy must accept what it renders to.
    check_haproxy_config(settings.haproxy_config)


# --- the pipeline: render -> haproxy -c -> atomic write ----------------------------------


class Check:
    """A stand-in for `haproxy -c`: records what it saw, rejects on demand."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.reject = False

    def __call__(self, path: Path) -> None:
        self.seen.append(path.read_text(encoding="utf-8"))
        if self.reject:
            raise LbsyncError("[ALERT] parsing error")


def pipeline(tmp_path: Path) -> tuple[ConfigPipeline, Check, Path]:
    cfg = tmp_path / "etc" / "haproxy.cfg"
    check = Check()
    return ConfigPipeline(dataclasses.replace(S, haproxy_config=cfg), check), check, cfg


def test_pipeline_checks_the_candidate_then_swaps_it_in(tmp_path: Path) -> None:
    p, check, cfg = pipeline(tmp_path)
    text = p.render(SERVERS, False)
    assert p.install(text) is True
    assert check.seen == [text] and cfg.read_text(encoding="utf-8") == text
    assert sorted(f.name for f in cfg.parent.iterdir()) == ["haproxy.cfg"], "no candidate left"


def test_pipeline_skips_unchanged_text_unless_asked_to_check_it(tmp_path: Path) -> None:
    p, check, cfg = pipeline(tmp_path)
    text = p.render(SERVERS, False)
    p.install(text)
    assert p.install(text) is False and len(check.seen) == 1, "unchanged: not checked again"
    assert p.install(text, check_unchanged=True) is False and len(check.seen) == 2


def test_pipeline_keeps_the_old_file_when_the_check_rejects(tmp_path: Path) -> None:
    p, check, cfg = pipeline(tmp_path)
    cfg.parent.mkdir()
    cfg.write_bytes(b"old \xe2\x9c\x93\n")
    check.reject = True
    with pytest.raises(LbsyncError, match="parsing error"):
        p.install(p.render(SERVERS, False))
    assert cfg.read_bytes() == b"old \xe2\x9c\x93\n"
    assert sorted(f.name for f in cfg.parent.iterdir()) == ["haproxy.cfg"]


def test_split_servers_leaves_the_markers_out() -> None:
    outside, inside = split_servers("global\n  # lbsync:servers begin\n  server a 1:2\n"
                                    "  # lbsync:servers end\nbackend b\n")
    assert outside == ["global", "backend b"]
    assert inside == ["  server a 1:2"]


# --- TLS ---------------------------------------------------------------------------------


def tls_settings(tmp_path: Path, **changes: Any) -> Settings:
    from tests.rig.certs import make_pem

    pem = tmp_path / "site.pem"
    pem.write_text(make_pem("site"))
    return dataclasses.replace(S, tls_cert=pem, **changes).check()


def test_no_tls_without_a_certificate() -> None:
    text = render()
    for word in ("ssl", "ssl_fc", "Secure", "secure", "Strict-Transport", "redirect"):
        assert word not in text, word


@pytest.mark.parametrize("explicit", [False, True])
def test_tls_binds_the_certificate_by_its_path_on_the_same_frontend(
        tmp_path: Path, explicit: bool) -> None:
    s = tls_settings(tmp_path, tls_bind="10.0.0.1:443")
    text = render(settings=s, explicit=explicit)
    frontend = text.split("frontend http\n", 1)[1].split("\n\n", 1)[0]
    assert f"    bind 10.0.0.1:443 ssl crt {tmp_path / 'site.pem'} alpn h2,http/1.1" in \
        frontend.split("\n")
    assert "    bind *:8080" in frontend.split("\n")  # plain HTTP still served
    assert "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets" in lines(text)
    ciphers = [ln for ln in lines(text) if ln.startswith("ssl-default-bind-cipher")]
    assert len(ciphers) == 2 and all("CBC" not in ln and "RSA-AES128-SHA" not in ln
                                     for ln in ciphers)
    assert "redirect" not in text and "Strict-Transport-Security" not in text
    # Both schemes served: Secure is added on TLS responses only, to the sticky cookie only.
    assert ("http-after-response replace-header Set-Cookie ^(SERVERID=.*)$ \"\\1; Secure\" "
            "if { ssl_fc }") in lines(text)
    cookie_line = next(ln for ln in lines(text) if ln.startswith("cookie SERVERID"))
    assert "secure" not in cookie_line


def test_tls_redirect_makes_the_cookie_secure_and_keeps_the_tls_port(tmp_path: Path) -> None:
    text = render(settings=tls_settings(tmp_path, tls_redirect=True, tls_bind="*:8443"))
    assert ("http-request redirect location https://%[req.hdr(host),regsub(:[0-9]+$,)]:8443"
            "%[capture.req.uri] code 301 unless { ssl_fc }") in lines(text)
    cookie_line = next(ln for ln in lines(text) if ln.startswith("cookie SERVERID"))
    assert cookie_line.endswith(" secure")
    assert "http-after-response" not in text


def test_tls_redirect_to_443_is_a_scheme_redirect(tmp_path: Path) -> None:
    text = render(settings=tls_settings(tmp_path, tls_redirect=True, tls_bind="*:443"))
    assert "http-request redirect scheme https code 301 unless { ssl_fc }" in lines(text)


def test_hsts_only_on_tls_responses(tmp_path: Path) -> None:
    text = render(settings=tls_settings(tmp_path, hsts=31536000))
    assert ('http-response set-header Strict-Transport-Security "max-age=31536000" '
            "if { ssl_fc }") in lines(text)


def test_a_dotted_cookie_name_is_matched_literally(tmp_path: Path) -> None:
    text = render(settings=tls_settings(tmp_path, cookie_name="lb.sid"))
    assert "^(lb\\.sid=.*)$" in text


def test_tls_settings_are_structure(tmp_path: Path) -> None:
    plain = structure_hash(render())
    tls = structure_hash(render(settings=tls_settings(tmp_path)))
    redirect = structure_hash(render(settings=tls_settings(tmp_path, tls_redirect=True)))
    assert len({plain, tls, redirect}) == 3
