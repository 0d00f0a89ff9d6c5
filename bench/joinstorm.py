"""The join storm's trigger, a child process of bench part 5 (bench/scale.py).

    python -m bench.joinstorm SEED RPC_ADDR...

Each RPC_ADDR is a member's Serf agent, started alone (no -join). The child connects to
every agent and does the RPC handshake, prints `ready N`, then waits for one line on its
stdin. At that line it asks every agent at once to join SEED (Serf's `join` RPC), so the
storm starts at one instant, whatever it cost to start the agents: part 5 measures the
storm, not the rate at which the harness can fork 500 processes.

A refused join is asked again 1 s later, as `serf agent -retry-join SEED -retry-interval
1s` would do (memberlist refuses a push/pull past 128 in progress: "Too many pending
push/pull requests", seen by the joiner as EOF). The child prints one JSON line at the end:

    {"ok": N, "first_try": N, "retries": N, "last_ok_s": S, "first_refusal": "..."}

One thread and plain sockets: with 500 agents, a thread per connection would compete with
the agents it measures.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

RETRY_S = 1.0
LIMIT_S = 120.0
CONNECT_TIMEOUT_S = 30.0


@dataclass
class Agent:
    where: str
    sock: socket.socket
    unpacker: Any = field(default_factory=lambda: msgpack.Unpacker(raw=False))
    seq: int = 0
    pending: str = ""  # the command waiting for its answer ("" when none)
    header: dict[str, Any] | None = None  # a join's header, its body still to come
    retry_at: float | None = None
    ok_at: float | None = None
    tries: int = 0

    def send(self, command: str, body: dict[str, Any] | None = None) -> None:
        data = msgpack.packb({"Command": command, "Seq": self.seq})
        if body is not None:
            data += msgpack.packb(body)
        self.seq += 1
        self.pending = command
        self.sock.sendall(data)


def connect(where: str) -> Agent:
    host, port = where.rsplit(":", 1)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            break
        except OSError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"joinstorm: serf agent at {where} does not answer: {e}") from None
            time.sleep(0.1)
    agent = Agent(where, sock)
    agent.send("handshake", {"Version": 1})
    header = read_one(agent)
    if header.get("Error"):
        raise SystemExit(f"joinstorm: serf agent at {where} refused the handshake: "
                         f"{header['Error']}")
    agent.pending = ""
    sock.setblocking(False)
    return agent


def read_one(agent: Agent) -> Any:
    """One msgpack object, blocking (the handshake, before the storm)."""
    while True:
        for obj in agent.unpacker:
            return obj
        data = agent.sock.recv(65536)
        if not data:
            raise SystemExit(f"joinstorm: serf agent at {agent.where} closed the connection")
        agent.unpacker.feed(data)


def storm(seed: str, agents: list[Agent]) -> dict[str, object]:
    sel = selectors.DefaultSelector()
    for a in agents:
        sel.register(a.sock, selectors.EVENT_READ, a)
    t0 = time.monotonic()
    for a in agents:
        a.tries = 1
        a.send("join", {"Existing": [seed], "Replay": False})
    first_refusal = ""
    retries = 0
    waiting = len(agents)
    while waiting and time.monotonic() - t0 < LIMIT_S:
        now = time.monotonic()
        for a in agents:
            if a.retry_at is not None and now >= a.retry_at:
                a.retry_at = None
                a.tries += 1
                retries += 1
                a.send("join", {"Existing": [seed], "Replay": False})
        due = [a.retry_at for a in agents if a.retry_at is not None]
        timeout = max(0.0, min(due) - now) if due else 0.5
        for key, _ in sel.select(min(timeout, 0.5)):
            a = key.data
            data = a.sock.recv(65536)
            if not data:
                raise SystemExit(f"joinstorm: serf agent at {a.where} closed its RPC "
                                 "connection")
            a.unpacker.feed(data)
            for obj in a.unpacker:
                if a.header is None:
                    a.header = obj  # the body ({"Num": n}) follows
                    continue
                header, a.header, a.pending = a.header, None, ""
                error = str(header.get("Error") or "")
                if error or not obj.get("Num"):
                    first_refusal = first_refusal or error or "joined 0 nodes"
                    a.retry_at = time.monotonic() + RETRY_S
                else:
                    a.ok_at = time.monotonic() - t0
                    waiting -= 1
    done = [a for a in agents if a.ok_at is not None]
    return {"ok": len(done), "first_try": sum(1 for a in done if a.tries == 1),
            "retries": retries,
            "last_ok_s": round(max((a.ok_at or 0.0) for a in done), 3) if done else None,
            "first_refusal": first_refusal[:300]}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    seed, addrs = argv[0], argv[1:]
    agents = [connect(where) for where in addrs]
    print(f"ready {len(agents)}", flush=True)
    if not sys.stdin.readline():
        return 1  # the parent went away before the storm
    print(json.dumps(storm(seed, agents)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
