"""A scripted stand-in for a Serf agent's RPC listener, for unit tests of the framing.

It speaks just enough of the protocol (handshake, auth, members, stream, monitor, stop,
tags, join) and lets a test push stream records, hold replies back, or drop the connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import msgpack

AGENT_MEMBERS: list[dict[str, Any]] = [
    {"Name": "a1", "Addr": bytes([127, 0, 0, 41]), "Port": 7946,
     "Tags": {"role": "edge", "port": "8080"}, "Status": "alive"},
    {"Name": "a2", "Addr": bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 2]), "Port": 7946,
     "Tags": None, "Status": "weird"},
]


_WITH_BODY = ("handshake", "auth", "stream", "monitor", "stop", "tags", "join")


class FakeAgent:
    """Listens on 127.0.0.1; serves one client connection at a time."""

    def __init__(self, auth_key: str | None = None, port: int = 0) -> None:
        self.auth_key = auth_key
        self.members: list[dict[str, Any]] = list(AGENT_MEMBERS)
        self.silent: set[str] = set()  # commands to leave unanswered
        self.requests: list[tuple[str, Any]] = []
        self.seqs: dict[str, int] = {}  # command -> the Seq of its last request
        self.streams: dict[int, str] = {}
        self.monitors: dict[int, str] = {}  # seq -> log level
        self.refuse_monitor = False  # answer `monitor` with an error, as for a bad level
        # join: address -> the member the agent lists once it joined it (others fail)
        self.joinable: dict[str, dict[str, Any]] = {}
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen()
        self.port: int = self._listener.getsockname()[1]
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self.connected = threading.Event()
        self.accepted = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped = True
        self.drop()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(2)

    def drop(self) -> None:
        """Cut the current client off, as an agent that dies would."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def push(self, seq: int, record: Mapping[str, Any]) -> None:
        self._send({"Seq": seq, "Error": ""}, record)

    def log(self, line: str) -> None:
        """One line on every log stream (`monitor`) of the current client."""
        for seq in list(self.monitors):
            self.push(seq, {"Log": line})

    def push_raw(self, data: bytes) -> None:
        assert self._conn is not None
        with self._send_lock:
            self._conn.sendall(data)

    def _send(self, header: Mapping[str, Any], body: Any = None) -> None:
        data = msgpack.packb(header)
        if body is not None:
            data += msgpack.packb(body)
        self.push_raw(data)

    def _serve(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conn = conn
            self.accepted += 1
            self.connected.set()
            try:
                self._client(conn)
            except (OSError, EOFError):
                pass
            finally:
                conn.close()
                self._conn = None
                self.connected.clear()

    def _client(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)

        def read() -> Any:
            while True:
                with contextlib.suppress(StopIteration):
                    return next(unpacker)
                data = conn.recv(4096)
                if not data:
                    raise EOFError
                unpacker.feed(data)

        authed = self.auth_key is None
        while True:
            header = read()
            command, seq = header["Command"], header["Seq"]
            body: Any = read() if command in _WITH_BODY else None
            self.requests.append((command, body))
            self.seqs[command] = seq
            if command in self.silent:
                continue
            if command == "handshake":
                self._send({"Seq": seq, "Error": ""})
            elif command == "auth":
                authed = body["AuthKey"] == self.auth_key
                error = "" if authed else "Invalid authentication token"
                self._send({"Seq": seq, "Error": error})
            elif not authed:
                self._send({"Seq": seq, "Error": "Authentication required"})
            elif command == "members":
                self._send({"Seq": seq, "Error": ""}, {"Members": self.members})
            elif command == "stream":
                self.streams[seq] = body["Type"]
                self._send({"Seq": seq, "Error": ""})
            elif command == "monitor":
                if self.refuse_monitor:
                    self._send({"Seq": seq, "Error": f"Unknown log level: {body['LogLevel']}"})
                else:
                    self.monitors[seq] = body["LogLevel"]
                    self._send({"Seq": seq, "Error": ""})
            elif command in ("stop", "tags"):
                self._send({"Seq": seq, "Error": ""})
            elif command == "join":
                found = [self.joinable[a] for a in body["Existing"] if a in self.joinable]
                self.members.extend(found)
                error = "" if found else "1 error occurred: no one to join"
                self._send({"Seq": seq, "Error": error}, {"Num": len(found)})
            else:
                self._send({"Seq": seq, "Error": "Unsupported command"})
                return


class FakeClock:
    """A Clock (lbsync.serf.rpc) whose waits take no time unless a test lets them.

    A wait ends when its event is set (a reply came, stop() was called), or when the test
    lets it time out (`expire(n)`: the next n waits time out at once, counted as their full
    timeout). `now()` is the real monotonic clock plus the time the expired waits skipped,
    so what the code measures across a wait is the wait's timeout, not the machine's speed.
    A wait that neither happens within `STUCK` real seconds ends False and is recorded stuck.
    """

    STUCK = 20.0

    def __init__(self) -> None:
        self.waits: list[float] = []  # the timeout of each wait, in the order they began
        self.ended: list[str] = []  # how each one ended: "event", "expired" or "stuck"
        self._skipped = 0.0
        self._expiring = 0
        self._cond = threading.Condition()

    def now(self) -> float:
        with self._cond:
            return time.monotonic() + self._skipped

    def expire(self, n: int = 1) -> None:
        with self._cond:
            self._expiring += n
            self._cond.notify_all()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        start = time.monotonic()
        with self._cond:
            self.waits.append(seconds)
            while True:
                if event.is_set():
                    how = "event"
                elif self._expiring > 0:
                    self._expiring -= 1
                    self._skipped += seconds - (time.monotonic() - start)
                    how = "expired"
                elif time.monotonic() - start > self.STUCK:
                    how = "stuck"
                else:
                    self._cond.wait(0.005)  # the event is not ours to be notified of
                    continue
                self.ended.append(how)
                return how == "event"
