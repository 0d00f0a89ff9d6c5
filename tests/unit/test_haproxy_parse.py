"""lbsync.haproxy parsers, error detection and session framing, without HAProxy."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbsync.haproxy.binary import config_alerts
from lbsync.haproxy.master import MasterCLI, ReloadFailed, parse_proc
from lbsync.haproxy.runtime import (
    CommandFailed,
    RuntimeAPI,
    RuntimeAPIError,
    command_problem,
    parse_address,
    parse_servers_state,
    parse_stat_sessions,
    parse_version,
    response_error,
)
from lbsync.model import ADMIN_FDRAIN, ADMIN_FMAINT, OP_RUNNING, OP_STOPPED, ServerState

# Captured from HAProxy 2.6.12 (`show servers state nodes`).
STATE_26 = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight \
srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health \
srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord \
srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 nodes 1 n1 127.0.0.1 0 1 5 5 4 1 0 0 8 0 0 0 - 8001 - 0 0 - - 0
3 nodes 2 n2 127.0.0.22 2 0 5 5 0 1 0 2 6 22 0 0 - 8001 - 0 0 - - 9100
3 nodes 3 n3 10.0.0.3 2 8 100 100 12 6 3 4 6 0 0 0 - 8002 - 0 0 - - 0
"""

# 3.x style: the same columns and more appended (and one moved), to show that parsing
# goes by name.
STATE_3X = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight \
srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health \
srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srvrecord srv_port \
srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port srv_addr_sa srv_extra
5 nodes 7 n2 127.0.0.22 2 0 5 5 0 1 0 2 6 22 0 0 - - 8001 0 0 - - 9100 127.0.0.22:8001 x
"""

STAT_HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
    "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,"
    "sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
)
STAT_26 = STAT_HEADER + """
fe,FRONTEND,,,3,3,9979,9,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,
nodes,n1,0,0,2,2,,7,0,0,,0,,0,0,0,0,UP,5,1,0,0,0,4,0,,1,3,1,,7,,2,0,,1,L4OK,,
nodes,n2,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,5,1,0,,,0,,,1,3,2,,0,,2,0,,0,,,
nodes,BACKEND,0,0,2,2,998,7,0,0,0,0,,0,0,0,0,UP,5,1,0,,0,4,0,,1,3,0,,7,,1,0,,1,,,
other,n1,0,0,9,9,,9,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,4,0,,1,4,1,,9,,2,0,,1,L4OK,,
"""

HAPROXY_V_26 = """\
HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/
Status: long-term supported branch - will stop receiving fixes around Q2 2027.
Known bugs: http://www.haproxy.org/bugs/bugs-2.6.12.html
Running on: Linux 6.1.0 #1 SMP x86_64
"""

SHOW_INFO_26 = """\
Name: HAProxy
Version: 2.6.12-1+deb12u4
Release_date: 2026/10/17
Nbthread: 2
"""

SHOW_PROC_26 = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
3299            master          3 [failed: 1]   0d00h00m58s     2.6.12-1+deb12u4
# workers
3706            worker          1               0d00h00m21s     2.6.12-1+deb12u4
# programs
"""

SHOW_PROC_3X = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
1162            master          5 [failed: 0]   0d00h02m07s     3.0.5-1
# workers
1271            worker          0               0d00h00m00s     3.0.5-1
# old workers
1233            worker          3               0d00h00m43s     3.0.5-1
# programs
"""


def test_parse_servers_state_26() -> None:
    states = parse_servers_state(STATE_26)
    assert states[0] == ServerState(
        "nodes", "n1", "127.0.0.1", 8001, OP_STOPPED, ADMIN_FMAINT, uweight=5, iweight=5
    )
    assert states[0].in_maint and states[0].state_word == "MAINT"
    assert states[1].port == 8001 and states[1].op_state == OP_RUNNING and states[1].up
    assert states[2].admin_state == ADMIN_FDRAIN and states[2].state_word == "DRAIN"
    assert all(s.sessions == 0 for s in states)


def test_parse_servers_state_3x_goes_by_column_name() -> None:
    (state,) = parse_servers_state(STATE_3X)
    assert (state.name, state.addr, state.port) == ("n2", "127.0.0.22", 8001)
    assert (state.op_state, state.admin_state, state.uweight) == (OP_RUNNING, 0, 5)


def test_parse_servers_state_empty_backend() -> None:
    header = STATE_26.splitlines()[1]
    assert parse_servers_state(f"1\n{header}\n") == []
    assert parse_servers_state("") == []


@pytest.mark.parametrize(
    "text",
    [
        "Can't find backend.",
        "1\n# be_id be_name srv_name\n3 nodes n1\n",  # header lacks needed columns
        STATE_26.splitlines()[1] + "\n3 nodes 1 n1 127.0.0.1 0 1\n",  # short row
        STATE_26.replace("8001", "eighty", 1),  # port not a number
    ],
)
def test_parse_servers_state_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_servers_state(text)


def test_parse_stat_sessions_reads_scur_of_one_backend() -> None:
    assert parse_stat_sessions(STAT_26, "nodes") == {"n1": 2, "n2": 0}
    assert parse_stat_sessions(STAT_26, "other") == {"n1": 9}
    assert parse_stat_sessions(STAT_HEADER + "\n", "nodes") == {}
    with pytest.raises(ValueError):
        parse_stat_sessions("No such proxy.", "nodes")


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (HAPROXY_V_26, (2, 6, 12)),
        (SHOW_INFO_26, (2, 6, 12)),
        ("2.6.12-1+deb12u4\n", (2, 6, 12)),  # show version
        ("HAProxy version 3.0.5-1 2024/09/19 - https://haproxy.org/\n", (3, 0, 5)),
        ("HAProxy version 3.1-dev5-0ab5ee7 2024/08/07 - https://haproxy.org/\n", (3, 1, 0)),
        ("HA-Proxy version 1.8.19 2019/02/11\n", (1, 8, 19)),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int]) -> None:
    assert parse_version(text) == version


def test_parse_version_rejects_other_text() -> None:
    with pytest.raises(ValueError):
        parse_version("Unknown command.\nRunning on: Linux 6.1\n")


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("add server nodes/n2 127.0.0.22:8001 check weight 5", "New server registered."),
        ("del server nodes/n2", "Server deleted."),
        ("enable health nodes/n2", ""),
        ("enable server nodes/n2", "\n"),
        ("set server nodes/n2 state drain", ""),
        ("set server nodes/n2 weight 7", ""),
        ("set weight nodes/n2 7", ""),
        ("shutdown sessions server nodes/n2", ""),
        ("enable dynamic-cookie backend nodes", ""),
        (
            "set server nodes/n2 addr 127.0.0.2 port 9000",
            "IP changed from '127.0.0.1' to '127.0.0.2', port changed from '18081' to '9000' "
            "by 'stats socket command'",
        ),
        ("set server nodes/n2 addr 127.0.0.2",
         "no need to change the addr by 'stats socket command'"),
        ("show servers state nodes", STATE_26),
        ("show stat", STAT_26),
        ("get weight nodes/n1", "1 (initial 1)"),
    ],
)
def test_response_error_accepts_success(command: str, answer: str) -> None:
    assert response_error(command, answer) is None


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("add server nodes/n2 1.2.3.4:1 cookie n2",
         "'cookie' option is not accepted for dynamic server"),
        ("add server nodes/n2 1.2.3.4:1", "Already exists a server with the same name in backend."),
        ("del server nodes/n2", "No such server."),
        ("del server nodes/n2", "Only servers in maintenance mode can be deleted."),
        ("del server nodes/n2", "Server still has connections attached to it, cannot remove it."),
        ("set server nodes/n2 weight 300",
         "Absolute weight can only be between 0 and 256 inclusive."),
        ("set server nodes/n2 agent down", "agent checks are not enabled on this server."),
        ("enable health nodes/n2",
         "Health check was not configured on this server, cannot enable."),
        ("show servers state nosuch", "Can't find backend."),
        ("show stat nosuch 4 -1", "No such proxy."),
        ("get weight nodes/zz", "No such server."),
        ("show info", "Permission denied"),
        # The success text of another command is no success.
        ("enable server nodes/n2", "New server registered."),
        ("set server nodes/n2 state ready", "Server deleted."),
    ],
)
def test_response_error_reports_haproxys_text(command: str, answer: str) -> None:
    assert response_error(command, answer + "\n") == answer


@pytest.mark.parametrize(
    ("command", "answer", "error"),
    [
        ("bogus", "Unknown command. Please enter one of the following commands only:\n  help\n",
         "unknown command"),
        ("show bogus", "Unknown command, but maybe one of the following ones is a better match:\n",
         "unknown command"),
        ("del server nodes/n2", "line one\n  line two\n", "line one line two"),
        ("del server nodes/n2", "x" * 400, "x" * 297 + "..."),
        ("add server nodes/n2 1.2.3.4:1", "", "empty answer"),  # it always says something
    ],
)
def test_response_error_condenses_to_one_line(command: str, answer: str, error: str) -> None:
    assert response_error(command, answer) == error


@pytest.mark.parametrize(
    "command",
    [
        "show info; del server nodes/n1",
        "set server nodes/n1 weight 5\ndel server nodes/n1",
        "set server nodes/n1 weight 5\rdel server nodes/n1",
        "show info\x00",
        "",
        "   ",
        "prompt",
        "quit",
        "set ssl cert /x.pem <<",
    ],
)
def test_unsafe_commands_are_refused_before_connecting(command: str) -> None:
    assert command_problem(command) is not None
    # No socket exists at this path: the ValueError proves nothing was sent.
    with pytest.raises(ValueError, match="refusing to send"):
        RuntimeAPI("/nonexistent/lbsync-test.sock").execute(["show info", command])


def test_backend_name_with_spaces_is_refused() -> None:
    with pytest.raises(ValueError):
        RuntimeAPI("/nonexistent/lbsync-test.sock").servers_state("nodes; del server x/y")
    with pytest.raises(ValueError):
        RuntimeAPI("/nonexistent/lbsync-test.sock").servers_state("nodes x")


@pytest.mark.parametrize(
    ("text", "path", "host", "port"),
    [
        ("/run/haproxy/admin.sock", "/run/haproxy/admin.sock", None, None),
        ("unix@/run/haproxy/admin.sock", "/run/haproxy/admin.sock", None, None),
        ("unix@admin.sock", "admin.sock", None, None),
        ("127.0.0.1:9999", None, "127.0.0.1", 9999),
        ("ipv4@127.0.0.1:19999", None, "127.0.0.1", 19999),
        ("ipv6@[::1]:9999", None, "::1", 9999),
        ("haproxy.local:9999", None, "haproxy.local", 9999),
    ],
)
def test_parse_address(text: str, path: str | None, host: str | None, port: int | None) -> None:
    address = parse_address(text)
    assert (address.path, address.host, address.port) == (path, host, port)


@pytest.mark.parametrize(
    "text", ["", "admin.sock", "unix@", "127.0.0.1", "127.0.0.1:", ":9999", "h:99999", "h:x"]
)
def test_parse_address_rejects_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="neither a unix socket path|no socket path"):
        RuntimeAPI(text)


def test_parse_proc() -> None:
    status = parse_proc(SHOW_PROC_26)
    assert (status.master_pid, status.reloads, status.failed_reloads) == (3299, 3, 1)
    assert status.workers == (3706,) and status.old_workers == ()
    status = parse_proc(SHOW_PROC_3X)
    assert (status.reloads, status.workers, status.old_workers) == (5, (1271,), (1233,))
    with pytest.raises(ValueError):
        parse_proc("Unknown command.")


def test_config_alerts_keep_haproxys_words_without_noise() -> None:
    output = """\
[NOTICE]   (5237) : haproxy version is 2.6.12-1+deb12u4
[NOTICE]   (5237) : path to executable is /usr/sbin/haproxy
[ALERT]    (5237) : config : parsing [bad.cfg:2] : unknown keyword 'bogus_kw' in 'global' section
[ALERT]    (5237) : config : [bad.cfg:6] : 'server b/s' : unknown keyword 'chek'; did you mean \
'check' maybe ?
[ALERT]    (5237) : config : Error(s) found in configuration file : bad.cfg
[ALERT]    (5237) : config : Fatal errors found in configuration.
"""
    assert config_alerts(output) == [
        "parsing [bad.cfg:2] : unknown keyword 'bogus_kw' in 'global' section",
        "[bad.cfg:6] : 'server b/s' : unknown keyword 'chek'; did you mean 'check' maybe ?",
    ]
    assert config_alerts("segfault\n") == ["segfault"]


# ---------------------------------------------------------------------------------------
# Session framing against a scripted fake CLI
# ---------------------------------------------------------------------------------------


class FakeCLI:
    """A unix-socket CLI speaking HAProxy's interactive framing, in tiny chunks."""

    def __init__(self, path: Path, replies: dict[str, str], prompt: str = "\n> ",
                 close_after: str | None = None):
        self.replies = replies
        self.prompt = prompt
        self.close_after = close_after
        self.received: list[str] = []
        self.connections = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = line.decode()
                self.received.append(command)
                if command == "quit":
                    return
                if command == "prompt":
                    answer = ""
                else:
                    answer = self.replies.get(command, "Unknown command.\n")
                if command == self.close_after:
                    conn.sendall(answer.encode())
                    return
                payload = (answer + self.prompt).encode()
                for i in range(0, len(payload), 7):  # answers arrive split anywhere
                    conn.sendall(payload[i:i + 7])

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake_path() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="lbsync-hxu-"))
    try:
        yield directory / "cli.sock"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_execute_frames_answers_in_one_connection(fake_path: Path) -> None:
    fake = FakeCLI(fake_path, {
        "show servers state nodes": STATE_26,
        "show stat nodes 4 -1": STAT_26,
        "add server nodes/n4 10.0.0.4:80": "New server registered.\n",
        "del server nodes/n3": "Server deleted.\n",  # 2.6 prints no blank line after this one
        "enable server nodes/n4": "",
    })
    try:
        rt = RuntimeAPI(str(fake_path))
        answers = rt.execute(["add server nodes/n4 10.0.0.4:80", "del server nodes/n3",
                              "enable server nodes/n4", "show servers state nodes"])
        assert answers == ["New server registered.", "Server deleted.", "", STATE_26.rstrip("\n")]
        states = rt.servers_state("nodes")
        assert {s.name: s.sessions for s in states} == {"n1": 2, "n2": 0, "n3": 0}
        assert fake.connections == 2
        assert fake.received[:5] == ["prompt", "add server nodes/n4 10.0.0.4:80",
                                     "del server nodes/n3", "enable server nodes/n4",
                                     "show servers state nodes"]
    finally:
        fake.close()


def test_run_raises_with_every_refusal(fake_path: Path) -> None:
    fake = FakeCLI(fake_path, {"del server nodes/n1": "No such server.\n"})
    try:
        with pytest.raises(CommandFailed) as failed:
            RuntimeAPI(f"unix@{fake_path}").run(["del server nodes/n1", "bogus"])
        assert failed.value.failures == [
            ("del server nodes/n1", "No such server."),
            ("bogus", "unknown command"),
        ]
        assert str(failed.value) == (
            f"HAProxy at unix@{fake_path} refused 'del server nodes/n1': No such server. "
            "(and 1 more)"
        )
    finally:
        fake.close()


def test_unparsable_servers_state_is_a_runtime_api_error(fake_path: Path) -> None:
    fake = FakeCLI(fake_path, {
        "show servers state nodes": "1\n# be_name srv_name\nnodes n1\n",
        "show stat nodes 4 -1": STAT_26,
    })
    try:
        with pytest.raises(RuntimeAPIError, match="unexpected answer from HAProxy at"):
            RuntimeAPI(str(fake_path)).servers_state("nodes")
    finally:
        fake.close()


def test_silent_cli_times_out_with_a_clear_error(fake_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(fake_path))
    listener.listen(1)  # accepts (in the backlog) but never answers
    try:
        with pytest.raises(RuntimeAPIError, match=r"did not answer within 0\.2s"):
            RuntimeAPI(str(fake_path), timeout=0.2).execute(["show info"])
    finally:
        listener.close()


def test_missing_socket_names_the_address(tmp_path: Path) -> None:
    path = str(tmp_path / "gone.sock")
    with pytest.raises(RuntimeAPIError, match=f"cannot connect to HAProxy at {path}: no such"):
        RuntimeAPI(path).execute(["show info"])


def test_master_reload_3x_style_answers(fake_path: Path) -> None:
    status = {"Success=1": "Success=1\n--\n[NOTICE]   (1) : Loading success.\n",
              "Success=0": "Success=0\n--\n[ALERT]    (1) : config : parsing [h.cfg:3] : bad\n"}
    for outcome, reply in status.items():
        path = fake_path.with_name(f"{outcome}.sock")
        fake = FakeCLI(path, {"show proc": SHOW_PROC_3X, "reload": reply}, prompt="master> ",
                       close_after="reload")
        try:
            master = MasterCLI(str(path))
            if outcome == "Success=1":
                master.reload()
            else:
                with pytest.raises(ReloadFailed, match=r"parsing \[h\.cfg:3\] : bad"):
                    master.reload()
            assert list(master.status().workers) == [1271]
        finally:
            fake.close()


def test_master_prompt_after_failed_reload_is_recognised(fake_path: Path) -> None:
    fake = FakeCLI(fake_path, {"show proc": SHOW_PROC_26}, prompt="master[ReloadFailed]> ")
    try:
        assert MasterCLI(str(fake_path)).status().failed_reloads == 1
    finally:
        fake.close()


def test_pipelined_batch_cut_short_names_the_command_it_was_on(fake_path: Path) -> None:
    fake = FakeCLI(fake_path, {"enable server nodes/n1": "", "enable server nodes/n2": ""},
                   close_after="enable server nodes/n2")
    try:
        with pytest.raises(RuntimeAPIError, match="closed the connection during "
                                                  "'enable server nodes/n2'"):
            RuntimeAPI(str(fake_path)).execute(
                ["enable server nodes/n1", "enable server nodes/n2", "enable server nodes/n3"])
    finally:
        fake.close()
