"""HAProxy's Runtime API (the stats socket): parsers and a one-session client.

The socket has no status codes: every command answers with free text, and success looks
different per command (an empty answer, "New server registered.", ...). So the parsers
here are pure and tested against literal answers, and `response_error` decides per
command what success looks like; anything else is an error carrying HAProxy's words.

One `execute` call is one connection in interactive ("prompt") mode: each answer ends at
the next prompt, which delimits answers reliably (the non-interactive mode separates
answers by blank lines only some of the time). The commands are pipelined, a window at a
time (`CLISession.commands`), so a batch costs a few round trips, not one per command.
"""

from __future__ import annotations

import contextlib
import csv
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lbsync.model import LbsyncError, ServerState
from lbsync.settings import SettingsError, parse_hostport

_CHUNK = 65536
# Commands in flight at once in `CLISession.commands`. Their text (~100 bytes each) and
# their answers (a line or none) stay well inside a socket's buffers, so neither side can
# block on a full buffer while the other waits for it.
PIPELINE_WINDOW = 64
# Ends a pipelined window (see CLISession.commands).
_ADDR_CHANGE = re.compile(r"set server \S+ (addr|fqdn) ")


class RuntimeAPIError(LbsyncError):
    """The Runtime API could not be reached, or answered something unusable."""


class CommandFailed(RuntimeAPIError):
    """HAProxy refused one or more commands of a batch; all commands were still sent."""

    def __init__(self, address: str, failures: Sequence[tuple[str, str]], answers: list[str]):
        command, message = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(f"HAProxy at {address} refused '{command}': {message}{more}")
        self.failures = list(failures)
        self.answers = answers


# ---------------------------------------------------------------------------------------
# Pure parsers
# ---------------------------------------------------------------------------------------

_STATE_COLUMNS = (
    "be_name", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state",
    "srv_uweight", "srv_iweight", "srv_port",
)


def parse_servers_state(text: str) -> list[ServerState]:
    """Rows of `show servers state [BACKEND]`, matched to the header by column name.

    Columns are looked up by name because HAProxy appends columns between versions; a
    row longer than the header is accepted for the same reason. ValueError when the text
    is not a servers-state dump.
    """
    header: list[str] | None = None
    states: list[ServerState] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            header = line[1:].split()
            missing = [c for c in _STATE_COLUMNS if c not in header]
            if missing:
                raise ValueError(f"servers state header lacks {', '.join(missing)}")
            continue
        if header is None:
            if line.isdigit():  # the format version, "1" since HAProxy 1.6
                continue
            raise ValueError(f"line {number} comes before the header: {line[:80]!r}")
        fields = line.split()
        if len(fields) < len(header):
            raise ValueError(f"line {number} has {len(fields)} fields, header has {len(header)}")
        row = dict(zip(header, fields, strict=False))
        try:
            states.append(
                ServerState(
                    backend=row["be_name"],
                    name=row["srv_name"],
                    addr=row["srv_addr"],
                    port=int(row["srv_port"]),
                    op_state=int(row["srv_op_state"]),
                    admin_state=int(row["srv_admin_state"]),
                    uweight=int(row["srv_uweight"]),
                    iweight=int(row["srv_iweight"]),
                )
            )
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    if header is None and text.strip() and not text.strip().isdigit():
        raise ValueError(f"not a servers state dump: {text.strip()[:80]!r}")
    return states


def parse_stat_sessions(csv_text: str, backend: str) -> dict[str, int]:
    """Server name -> current sessions (`scur`) in `backend`, from `show stat` CSV."""
    lines = csv_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("# pxname,")), None)
    if start is None:
        raise ValueError("show stat output has no '# pxname,...' header")
    header = lines[start][2:].rstrip(",").split(",")
    for column in ("pxname", "svname", "scur"):
        if column not in header:
            raise ValueError(f"show stat header lacks {column}")
    sessions: dict[str, int] = {}
    for row in csv.DictReader((line for line in lines[start + 1:] if line), fieldnames=header):
        if row["pxname"] != backend or row["svname"] in ("FRONTEND", "BACKEND"):
            continue
        scur = row["scur"] or "0"
        if not scur.isdigit():
            raise ValueError(f"scur of {backend}/{row['svname']} is {scur!r}")
        sessions[row["svname"]] = int(scur)
    return sessions


_LABELLED_VERSION = re.compile(r"(?:HA-?Proxy version|Version:)\s*(\d+)\.(\d+)(?:\.(\d+))?")
_BARE_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) from `haproxy -v`, `show info` or `show version`.

    Development builds ("3.1-dev5") have no patch number; it reads as 0.
    """
    match = _LABELLED_VERSION.search(text)
    if match is None:
        first = text.strip().splitlines()[0] if text.strip() else ""
        match = _BARE_VERSION.match(first)
    if match is None:
        raise ValueError(f"no HAProxy version in {text.strip()[:80]!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


# The answers that mean success, per command prefix; any other mutating command succeeds
# only with an empty answer.
_SUCCESS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("add server ", re.compile(r"New server registered\.")),
    ("del server ", re.compile(r"Server deleted\.")),
    (
        "set server ",
        # `set server B/S addr ...` reports what changed, even when nothing did.
        re.compile(r"|(IP changed from|no need to change the addr|port changed from)\b.*"),
    ),
)
_READ_VERBS = ("show", "get", "help")
# How read commands report failure; their normal output is free-form.
_READ_ERROR = re.compile(
    r"(Unknown command|Permission denied|No such |Can't find |Require |Missing |Invalid |"
    r"Unexpected |'[^']*' expects )"
)


def response_error(command: str, answer: str) -> str | None:
    """HAProxy's complaint about `command` as one line, or None when `answer` is success."""
    text = answer.strip()
    first_word = command.split(maxsplit=1)[0] if command.strip() else ""
    if first_word in _READ_VERBS:
        if not _READ_ERROR.match(text):
            return None
    else:
        success = next((p for prefix, p in _SUCCESS if command.startswith(prefix)), None)
        ok = not text if success is None else success.fullmatch(text) is not None
        if ok:
            return None
    return _one_line(text) or "empty answer"


def _one_line(text: str) -> str:
    if text.startswith("Unknown command"):
        return "unknown command"  # the help listing that follows is noise
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= 300 else line[:297] + "..."


def command_problem(command: str) -> str | None:
    """Why `command` must not be sent, or None.

    ';' and line breaks end a command, so a value carrying one would smuggle a second
    command; 'prompt', 'quit' and '<<' payloads would change how answers are framed.
    """
    if not command.strip():
        return "empty command"
    if ";" in command:
        return f"';' in command {command!r}"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in command):
        return f"control character (newline, CR, ...) in command {command!r}"
    words = command.split()
    if words[0] in ("prompt", "quit"):
        return f"'{words[0]}' would break the session framing"
    if words[-1].startswith("<<"):
        return "payload commands ('<<') are not supported"
    return None


# ---------------------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where a CLI listens: a unix socket path, or a TCP host and port."""

    text: str
    path: str | None = None
    host: str | None = None
    port: int | None = None


def parse_address(text: str) -> Address:
    """A CLI address: `/path`, `unix@path`, `HOST:PORT`, `ipv4@HOST:PORT`, `ipv6@[H]:PORT`."""
    if text.startswith("/"):
        return Address(text, path=text)
    if text.startswith("unix@"):
        if not text[5:]:
            raise ValueError(f"runtime API address {text!r} has no socket path after 'unix@'")
        return Address(text, path=text[5:])
    rest = text
    for prefix in ("ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"):
        if rest.startswith(prefix):
            rest = rest[len(prefix):]
            break
    try:  # HOST:PORT as every other address of lbsync is read
        host, port = parse_hostport(rest, "runtime API address")
    except SettingsError:
        raise ValueError(
            f"runtime API address {text!r} is neither a unix socket path (/path or unix@path) "
            "nor HOST:PORT (ipv4@HOST:PORT)"
        ) from None
    return Address(text, host=host, port=port)


# The prompt is the last line of the buffer: "> " on a worker, "master> " or
# "master[ReloadFailed]> " on the master CLI, optionally with a "[d:hh:mm:ss] " uptime or
# an "(xe)" mode suffix. Answers end with a newline, so such a line delimits them.
_PROMPT_LINE = re.compile(rb"(?:\[[\d:]+\] )?(?:master(?:\[\w+\])?|\d+)?(?:\([a-z]*\))?> ")
# Where one answer ends when several follow each other: a newline, then the prompt.
# (An answer of the batch commands never has a line starting with "> ".)
_ANSWER_END = re.compile(rb"\n" + _PROMPT_LINE.pattern)


class CLISession:
    """One connection to an HAProxy CLI in interactive mode.

    Shared by the worker's Runtime API and the master CLI; both speak the same framing.
    """

    def __init__(self, address: Address, timeout: float):
        self.address = address
        self.timeout = timeout
        self._sock = _connect(address, timeout)
        try:
            self._send("prompt")
            self.read_answer()  # the first prompt, nothing else
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> CLISession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # HAProxy may already have closed (CLI timeout, master re-exec).
        with contextlib.suppress(OSError):
            self._sock.sendall(b"quit\n")
        self._sock.close()

    def command(self, command: str) -> str:
        """Send one command and return its answer (the prompt and trailing newlines removed)."""
        self._send(command)
        answer, closed = self.read_answer()
        if closed:
            raise RuntimeAPIError(
                f"HAProxy at {self.address.text} closed the connection during '{command}'"
            )
        return answer

    def commands(self, commands: Sequence[str], window: int = PIPELINE_WINDOW) -> list[str]:
        """Send the commands `window` at a time; their answers, in order.

        HAProxy runs a session's commands in order and ends each answer with a prompt, so
        a window costs one round trip instead of one per command. That matters when the
        machine is busy: in a join storm (hundreds of Serf agents on two cores) each round
        trip waited for lbsync, then HAProxy, to be scheduled, and a 70-server batch sent
        one command at a time took 13 s (bench part 5).
        """
        answers: list[str] = []
        chunk: list[str] = []
        for i, command in enumerate(commands):
            chunk.append(command)
            # HAProxy 3.0 applies an address change after the command has been read: the
            # next command of the same window still sees the old address (`addr port+1`
            # then `addr port` answered "nothing changed" and left port+1). Its answer is
            # awaited before anything else is sent.
            if len(chunk) == window or i == len(commands) - 1 or _ADDR_CHANGE.match(command):
                self._send("\n".join(chunk))
                answers += self._read_answers(chunk)
                chunk = []
        return answers

    def _read_answers(self, sent: Sequence[str]) -> list[str]:
        """The answers to `sent`, each up to its prompt; the timeout runs per answer."""
        answers: list[str] = []
        data = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(answers) < len(sent):
            end = _ANSWER_END.search(data)
            if end is not None:
                answers.append(data[:end.start()].decode(errors="replace").rstrip("\n"))
                del data[:end.end()]
                deadline = time.monotonic() + self.timeout
                continue
            chunk = self._recv(deadline)
            if not chunk:
                raise RuntimeAPIError(f"HAProxy at {self.address.text} closed the connection "
                                      f"during '{sent[len(answers)]}'")
            data += chunk
        return answers

    def command_with_payload(self, command: str, payload: str) -> str:
        """`command <<`, then `payload` and the empty line that ends it (HAProxy 2.2+).

        The payload must hold no empty line (the first one would end it, and the rest
        would be read as commands): ValueError, nothing sent."""
        problem = command_problem(command)
        lines = payload.replace("\r\n", "\n").strip("\n").split("\n")
        if problem is None and any(not line.strip() for line in lines):
            problem = "an empty line inside a payload would end it early"
        if problem is None and any(ord(ch) < 0x20 and ch != "\t" for ch in "".join(lines)):
            problem = "control character in a payload"
        if problem:
            raise ValueError(f"refusing to send to HAProxy: {problem}")
        self._send(f"{command} <<\n" + "\n".join(lines) + "\n")
        answer, closed = self.read_answer()
        if closed:
            raise RuntimeAPIError(
                f"HAProxy at {self.address.text} closed the connection during '{command} <<'"
            )
        return answer

    def send_last(self, command: str) -> str:
        """Send a command after which HAProxy may close the connection (master `reload`)."""
        self._send(command)
        return self.read_answer()[0]

    def _send(self, command: str) -> None:
        try:
            self._sock.sendall(command.encode() + b"\n")
        except OSError as exc:
            raise RuntimeAPIError(
                f"cannot send to HAProxy at {self.address.text}: {_reason(exc)}"
            ) from None

    def read_answer(self) -> tuple[str, bool]:
        """Read up to the next prompt; (answer, closed) where closed means EOF came first."""
        deadline = time.monotonic() + self.timeout
        data = bytearray()
        while True:
            chunk = self._recv(deadline)
            if not chunk:
                return data.decode(errors="replace").rstrip("\n"), True
            data += chunk
            line_start = data.rfind(b"\n") + 1
            if _PROMPT_LINE.fullmatch(data, line_start):
                return data[:line_start].decode(errors="replace").rstrip("\n"), False

    def _recv(self, deadline: float) -> bytes:
        """What HAProxy sent next (b"" at EOF); RuntimeAPIError past the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeAPIError(
                    f"HAProxy at {self.address.text} did not answer within {self.timeout:g}s"
                )
            self._sock.settimeout(remaining)
            try:
                return self._sock.recv(_CHUNK)
            except TimeoutError:
                continue  # the deadline check above raises
            except OSError as exc:
                raise RuntimeAPIError(
                    f"lost the connection to HAProxy at {self.address.text}: {_reason(exc)}"
                ) from None


def _connect(address: Address, timeout: float) -> socket.socket:
    sock: socket.socket | None = None
    try:
        if address.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address.path)
            return sock
        assert address.host is not None and address.port is not None
        return socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise RuntimeAPIError(
            f"cannot connect to HAProxy at {address.text}: {_reason(exc)}"
        ) from None


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such socket (is HAProxy running with this 'stats socket'?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is HAProxy running?)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------


class RuntimeAPI:
    """A worker's Runtime API at a unix socket path or HOST:PORT (level admin)."""

    def __init__(self, address: str, timeout: float = 5.0):
        self.address = parse_address(address)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"RuntimeAPI({self.address.text!r})"

    def session(self) -> CLISession:
        return CLISession(self.address, self.timeout)

    def execute(self, commands: list[str]) -> list[str]:
        """Send all commands over one connection; their answers, in order.

        Nothing is sent when any command is unsafe (ValueError). HAProxy's refusals come
        back as answers; see `response_error` or use `run`.
        """
        for command in commands:
            problem = command_problem(command)
            if problem:
                raise ValueError(f"refusing to send to HAProxy: {problem}")
        if not commands:
            return []
        with self.session() as session:
            return session.commands(commands)

    def run(self, commands: list[str]) -> list[str]:
        """`execute`, then raise CommandFailed naming every command HAProxy refused."""
        answers = self.execute(commands)
        failures = [
            (command, error)
            for command, answer in zip(commands, answers, strict=True)
            if (error := response_error(command, answer)) is not None
        ]
        if failures:
            raise CommandFailed(self.address.text, failures, answers)
        return answers

    def servers_state(self, backend: str) -> list[ServerState]:
        """The servers of `backend`, with current sessions from `show stat`, in one session."""
        if not backend or any(ch.isspace() for ch in backend):
            raise ValueError(f"backend name {backend!r} is empty or has whitespace")
        commands = [f"show servers state {backend}", f"show stat {backend} 4 -1"]
        state_text, stat_text = self.run(commands)
        try:
            states = parse_servers_state(state_text)
            sessions = parse_stat_sessions(stat_text, backend)
        except ValueError as exc:
            raise RuntimeAPIError(
                f"unexpected answer from HAProxy at {self.address.text}: {exc}"
            ) from None
        return [replace(state, sessions=sessions.get(state.name, 0)) for state in states]

    def version(self) -> tuple[int, int, int]:
        (info,) = self.run(["show info"])
        try:
            return parse_version(info)
        except ValueError as exc:
            raise RuntimeAPIError(
                f"unexpected 'show info' from HAProxy at {self.address.text}: {exc}"
            ) from None
