"""Client for the Serf agent's RPC protocol (`serf agent -rpc-addr`): msgpack over TCP.

The PyPI Serf clients are unmaintained, and the protocol is small: every request is a
msgpack header `{"Command", "Seq"}` plus an optional body map, every response a header
`{"Seq", "Error"}` plus a body for the commands that have one. Stream records reuse the
Seq of the `stream` (or `monitor`) request. See hashicorp/serf cmd/serf/command/agent/ipc.go.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from lbsync.model import EventKind, LbsyncError, Member, MemberEvent, MemberStatus

log = logging.getLogger(__name__)

MEMBER_EVENT_TYPES = ",".join(kind.value for kind in EventKind)

# The agent answers these with a bare header, even to commands whose reply has a body;
# reading a body after them would swallow the next response.
_BODYLESS_ERRORS = frozenset(
    {"Handshake required", "Authentication required", "Unsupported command"}
)
_AUTH_REQUIRED = "Authentication required"
_AUTH_INVALID = "Invalid authentication token"


class Clock(Protocol):
    """The time SerfRPC and the follower see; unit tests pass a fake that skips the waits."""

    def now(self) -> float: ...
    def wait(self, event: threading.Event, seconds: float) -> bool:
        """`event.wait(seconds)`: True when the event was set, False when the time ran out."""
        ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


REAL_CLOCK = RealClock()

# The longest any reply is waited for while the agent keeps talking (SerfRPC._wait_reply).
PATIENCE = 60.0
_EPSILON = 1e-6  # a wait that ran out counts as a full one, whatever the float rounding


class SerfError(LbsyncError):
    """The Serf agent could not be reached, refused us, or failed a command."""


class SerfAuthError(SerfError):
    """The agent wants an RPC auth key, or refused ours: a setting to fix, not to retry."""


# --- pure helpers ---------------------------------------------------------------------


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def decode_addr(raw: bytes | str | None) -> str:
    """Serf's `Addr` (Go net.IP: 4 or 16 raw bytes) as text; "" when the agent sent none."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        # Agents built with an older msgpack codec send byte strings as msgpack raw; the
        # unpacker decoded them with surrogateescape, which this undoes byte for byte.
        raw = raw.encode("utf-8", "surrogateescape")
    # socket's C conversions, not ipaddress: the follower decodes every member ten times
    # a second, and ipaddress's parsing was a fifth of the daemon's time in a join storm.
    if len(raw) == 0:
        return ""
    if len(raw) == 4:
        return socket.inet_ntoa(raw)
    if len(raw) == 16:
        # Go keeps IPv4 addresses in 16-byte form more often than not.
        if raw[:12] == _V4_MAPPED:
            return socket.inet_ntoa(raw[12:])
        return str(ipaddress.IPv6Address(raw))  # its compressed form, as before
    raise ValueError(f"member address has {len(raw)} bytes; expected 4 or 16")


def decode_status(raw: object) -> MemberStatus:
    try:
        return MemberStatus(str(raw))
    except ValueError:
        return MemberStatus.NONE


def decode_member(raw: Mapping[str, Any], last_event: str = "", now: float = 0.0) -> Member:
    """One entry of a `members` reply or a stream record. Names are not validated here."""
    tags = raw.get("Tags") or {}
    return Member(
        name=str(raw.get("Name", "")),
        addr=decode_addr(raw.get("Addr")),
        tags={str(k): str(v) for k, v in tags.items()},
        status=decode_status(raw.get("Status")),
        last_event=last_event,
        time=now,
    )


def decode_member_event(record: Mapping[str, Any], now: float) -> MemberEvent | None:
    """A stream record as a MemberEvent; None for records that are not member events."""
    try:
        kind = EventKind(str(record.get("Event", "")))
    except ValueError:
        return None
    members = tuple(decode_member(m, kind.value, now) for m in record.get("Members") or ())
    return MemberEvent(kind, members)


# --- the connection -------------------------------------------------------------------


@dataclass
class _Call:
    command: str
    has_body: bool
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""  # the agent's Error field
    lost: str = ""  # set when the connection went away before the reply
    body: Any = None


@dataclass
class _Stream:
    on_record: Callable[[dict[str, Any]], None] | None  # None once stopped


class SerfRPC:
    """One RPC connection to a Serf agent, usable from several threads.

    A reader thread matches replies to requests by Seq and hands stream records to the
    stream's callback. Callbacks run on that reader thread, so they must be quick and
    must not call back into this connection (that would wait on the thread it blocks).
    """

    def __init__(
        self, host: str, port: int, auth_key: str | None = None, timeout: float = 5.0,
        *, patience: float = PATIENCE, clock: Clock = REAL_CLOCK,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.patience = patience
        self._clock = clock
        self._auth_key = auth_key
        self._where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        self._lock = threading.Lock()  # guards _seq, _pending, _streams, _close_reason
        self._send_lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, _Call] = {}
        # Stopped streams stay here: a record can still be in flight after `stop`, and
        # its body must be read (and dropped) to keep the byte stream in step.
        self._streams: dict[int, _Stream] = {}
        self._closing = False
        self._close_reason: str | None = None
        self._gone = threading.Event()
        self._last_heard = 0.0  # clock time of the last bytes the agent sent

    def __repr__(self) -> str:
        return f"SerfRPC({self._where}, closed={self.closed})"

    def __enter__(self) -> SerfRPC:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- lifecycle ---

    def connect(self) -> None:
        """Open the connection, handshake, and authenticate (or check none is needed)."""
        if self._sock is not None:
            raise RuntimeError("SerfRPC.connect() called twice; make a new SerfRPC instead")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except ConnectionRefusedError:
            raise SerfError(
                f"cannot reach serf agent at {self._where}: connection refused "
                "(is the agent running with this -rpc-addr?)"
            ) from None
        except TimeoutError:
            raise SerfError(
                f"cannot reach serf agent at {self._where}: "
                f"no answer within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise SerfError(
                f"cannot reach serf agent at {self._where}: {exc.strerror or exc}"
            ) from None
        # The reader blocks in recv; replies are timed out per request instead.
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sock = sock
            closing = self._closing
        if closing:  # close() raced with us
            sock.close()
            raise SerfError(f"connection to serf agent at {self._where} was closed")
        self._reader = threading.Thread(
            target=self._read_loop, name=f"serf-rpc-{self._where}", daemon=True
        )
        self._reader.start()
        try:
            self._request("handshake", {"Version": 1})
            if self._auth_key is not None:
                self._request("auth", {"AuthKey": self._auth_key})
            else:
                # A no-op that fails with "Authentication required" when the agent wants
                # a key, so a missing key shows up here rather than at the first command.
                self._request("stop", {"Stop": 0})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection; pending requests fail, streams end. Idempotent."""
        with self._lock:
            self._closing = True
            if self._close_reason is None:
                self._close_reason = "closed by lbsync"
            sock, reader = self._sock, self._reader
        if sock is None:
            self._gone.set()
            return
        # shutdown, not close, wakes a recv blocked in the reader thread.
        _shutdown(sock)
        if reader is None:
            sock.close()
            self._gone.set()
        elif reader is not threading.current_thread():
            reader.join(timeout=2.0)

    @property
    def closed(self) -> bool:
        """True before connect() and once the connection is gone, for whatever reason."""
        return self._sock is None or self._close_reason is not None

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the connection is gone; False if `timeout` passed first."""
        return self._gone.wait(timeout)

    # --- commands ---

    def members(self) -> list[Member]:
        body = self._request("members", has_body=True)
        now = time.time()
        try:
            return [decode_member(m, "", now) for m in body.get("Members") or ()]
        except (ValueError, AttributeError) as exc:
            raise SerfError(f"serf agent at {self._where} sent a bad member list: {exc}") from None

    def stream(self, types: str, on_event: Callable[[MemberEvent], None]) -> int:
        """Subscribe to events (`member-join,member-leave,...`); returns the stream's seq.

        Serf does not replay: only events after this call arrive. Records that are not
        member events (user, query) are dropped.
        """
        return int(self._request("stream", {"Type": types},
                                 stream=_Stream(functools.partial(self._dispatch, on_event))))

    def monitor(self, level: str, on_line: Callable[[str], None]) -> int:
        """Subscribe to the agent's log lines at `level` (DEBUG, INFO, WARN, ERR) and up,
        whatever the agent's own -log-level; returns the stream's seq.

        The agent first replays the lines it keeps (up to 512), then sends new ones as
        they are written. It drops lines rather than wait for a slow reader.
        """
        return int(self._request("monitor", {"LogLevel": level},
                                 stream=_Stream(functools.partial(self._dispatch_log, on_line))))

    def stop(self, seq: int) -> None:
        with self._lock:
            stream = self._streams.get(seq)
            if stream is not None:
                stream.on_record = None
        self._request("stop", {"Stop": seq})

    def tags(
        self, set: Mapping[str, str] | None = None, delete: Iterable[str] | None = None
    ) -> None:
        """Set and/or delete this agent's tags; Serf gossips the change as member-update."""
        body = {"Tags": dict(set or {}), "DeleteTags": list(delete or ())}
        self._request("tags", body)

    def join(self, addrs: Iterable[str], replay: bool = False) -> int:
        """Ask the agent to join these `host:port` gossip addresses; returns how many did."""
        body = self._request(
            "join", {"Existing": list(addrs), "Replay": replay}, has_body=True
        )
        return int(body.get("Num", 0))

    def leave(self, timeout: float = 30.0) -> None:
        """Gracefully leave the cluster; the agent then shuts down and drops us."""
        self._request("leave", timeout=timeout)

    # --- plumbing ---

    def _request(
        self,
        command: str,
        body: Mapping[str, Any] | None = None,
        *,
        has_body: bool = False,
        stream: _Stream | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and wait for its reply; returns the body (or the seq, for
        `stream`)."""
        if threading.current_thread() is self._reader:
            raise RuntimeError("SerfRPC used from its own stream callback would deadlock")
        call = _Call(command, has_body)
        with self._lock:
            # _close_reason, not _gone: it is set under this lock before pending calls
            # are failed, so no call can slip in after that and wait for nothing.
            if self._sock is None or self._close_reason is not None:
                raise SerfError(self._lost_message(command))
            seq = self._seq
            self._seq += 1
            self._pending[seq] = call
            if stream is not None:
                self._streams[seq] = stream
            sock = self._sock
        data = msgpack.packb({"Command": command, "Seq": seq})
        if body is not None:
            data += msgpack.packb(body)
        try:
            with self._send_lock:
                sock.sendall(data)
        except OSError as exc:
            self._fail(f"send failed: {exc.strerror or exc}")
            raise SerfError(self._lost_message(command)) from None
        self._wait_reply(call, command, self.timeout if timeout is None else timeout)
        if call.lost:
            raise SerfError(self._lost_message(command))
        if call.error:
            if stream is not None:
                with self._lock:
                    self._streams.pop(seq, None)
            error = SerfAuthError if call.error in (_AUTH_REQUIRED, _AUTH_INVALID) else SerfError
            raise error(self._explain(command, call.error))
        return seq if stream is not None else call.body

    def _wait_reply(self, call: _Call, command: str, silence: float) -> None:
        """Wait for `call`'s reply while the agent keeps talking on this connection.

        A busy agent answers late but goes on sending stream records and log lines; a hung
        one says nothing. So the reply may take up to `patience`, as long as the agent is
        never silent for `silence` seconds (the request's timeout) since it was sent. In a
        500-member join storm the load balancer's agent took 5-7 s to answer `members`
        while it logged all along, and a fixed 5 s timeout made the follower drop and
        rebuild its connection, blind for another 5-7 s each time.
        """
        sent = self._clock.now()
        give_up = sent + max(silence, self.patience)
        slice_ = silence
        while not self._clock.wait(call.done, slice_):
            now = self._clock.now()
            quiet = max(0.0, now - max(sent, self._last_heard))
            # The entry stays in _pending so a late reply (and its body) is still consumed.
            if quiet >= silence - _EPSILON:
                raise SerfError(f"serf agent at {self._where} did not answer {command!r} "
                                f"within {silence:g} s")
            if now >= give_up - _EPSILON:
                raise SerfError(f"serf agent at {self._where} did not answer {command!r} "
                                f"within {give_up - sent:g} s (busy: it kept sending other "
                                "messages)")
            slice_ = min(silence - quiet, give_up - now)

    def _explain(self, command: str, error: str) -> str:
        if error == _AUTH_REQUIRED:
            return (
                f"serf agent at {self._where} requires an RPC auth key "
                "(it has rpc_auth in its config)"
            )
        if error == _AUTH_INVALID:
            return f"serf agent at {self._where} refused the RPC auth key"
        return f"serf agent at {self._where}: {command} failed: {error}"

    def _lost_message(self, command: str) -> str:
        reason = self._close_reason or "not connected"
        return f"serf agent at {self._where}: {command} failed, connection lost ({reason})"

    def _read_loop(self) -> None:
        try:
            while True:
                self._read_one()
        except _Gone as exc:
            self._fail(str(exc))
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
        except Exception as exc:  # a decoding bug must not leave callers hanging
            log.exception("serf rpc reader for %s failed", self._where)
            self._fail(f"reader failed: {exc}")
        finally:
            assert self._sock is not None
            self._sock.close()
            self._gone.set()

    def _read_one(self) -> None:
        header = self._next()
        if not isinstance(header, dict) or not isinstance(header.get("Seq"), int):
            raise _Gone(f"protocol error: expected a response header, got {header!r:.80}")
        seq: int = header["Seq"]
        error = str(header.get("Error") or "")
        with self._lock:
            call = self._pending.pop(seq, None)
            stream = self._streams.get(seq) if call is None else None
        if call is not None:
            if call.has_body and error not in _BODYLESS_ERRORS:
                call.body = self._next()
            call.error = error
            call.done.set()
        elif stream is not None:
            record = self._next()
            callback = stream.on_record
            if callback is not None and isinstance(record, dict):
                callback(record)
        else:
            # Without knowing the command we cannot tell whether a body follows.
            raise _Gone(f"protocol error: reply for unknown request {seq}")

    def _dispatch(self, callback: Callable[[MemberEvent], None], record: dict[str, Any]) -> None:
        try:
            event = decode_member_event(record, time.time())
        except (ValueError, AttributeError, TypeError) as exc:
            log.error("serf agent at %s sent a bad event record: %s", self._where, exc)
            return
        if event is None:
            return
        try:
            callback(event)
        except Exception:
            log.exception("serf event callback failed on %s", event.kind.value)

    @staticmethod
    def _dispatch_log(callback: Callable[[str], None], record: dict[str, Any]) -> None:
        line = record.get("Log")
        if not isinstance(line, str):
            return
        try:
            callback(line)
        except Exception:
            log.exception("serf log callback failed")

    def _next(self) -> Any:
        assert self._sock is not None
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                pass
            data = self._sock.recv(65536)
            if not data:
                raise _Gone("closed by lbsync" if self._closing else "agent closed the connection")
            self._last_heard = self._clock.now()
            self._unpacker.feed(data)

    def _fail(self, reason: str) -> None:
        """Record why the connection ended and release every waiting caller."""
        with self._lock:
            if self._close_reason is None:
                self._close_reason = reason
            calls = list(self._pending.values())
            self._pending.clear()
        for call in calls:
            call.lost = self._close_reason or reason
            call.done.set()
        if self._sock is not None:
            _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already shut down, or never connected
        sock.shutdown(socket.SHUT_RDWR)


class _Gone(Exception):
    """The connection ended (EOF, or a reply we cannot make sense of)."""
