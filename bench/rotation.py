"""Part 9 of bench/run.py: certificate rotation side by side, under WAMP over wss:// and
HTTPS load, through a devstack whose HAProxy serves a certificate of a local CA
(lbsync.cluster.tls; clients verify it) in front of two real Crossbar nodes.

The same K rotations (a new certificate of the same CA, another serial, written atomically
over the --tls-cert file, one every EVERY_S seconds), in three modes, one after the other:
- "runtime-api": lbsync's agent sees the file change and pushes it with `set ssl cert` +
  `commit ssl cert` (lbsync.certwatch): no reload;
- "reload": the agent is stopped once the members are UP (so it pushes nothing), and each
  rotation is the usual way: save the server state, `reload` on the master CLI;
- "reload-hard-stop": the same, with `hard-stop-after HARD_STOP_S` in haproxy.cfg's
  global section (added, and loaded by one reload, before the load starts).

The fair setting: lbsync's template has no hard-stop-after, and neither has part 4's
reload baseline (bench/baseline_handler.sh, `haproxy -sf`): after a reload the old
worker keeps its established connections (WebSocket tunnels: `timeout tunnel 1h`) and
only stops taking new ones. So in "reload" the WAMP sessions survive, and what a reload
costs is one more old worker per rotation, alive as long as its sessions are (counted:
HAProxy processes, their RSS). "reload-hard-stop" is what one does to bound that: the
old worker is ended HARD_STOP_S after the reload, and its sessions with it (counted:
WAMP sessions dropped, reconnects).

After each rotation a fresh TLS connection is made until it is served the new serial;
the time from the file written (and, in the reload modes, the reload asked) to then is
reported. wrk sends HTTPS (it does not verify the certificate), a new connection per
request; bench/wampload.py verifies with the CA (--cafile).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cryptography import x509

from bench.common import Sampler, Wrk, haproxy_usage
from bench.edges import CrossbarMembers, WampLoad
from lbsync.cluster import tls as local_tls
from lbsync.cluster.addresses import TLS_PORT
from lbsync.files import atomic_write
from tests.rig.certs import served_cert
from tests.rig.devstack import DevStack
from tests.rig.procs import wait_for

MODES = ("runtime-api", "reload", "reload-hard-stop")
ROTATIONS = 5
EVERY_S = 3.0
HARD_STOP_S = 2
MEMBERS = (1, 2)
SETTLE_S = 3.0  # load before the first rotation and after the last
RATE = 200  # HTTPS req/s, each a new connection and TLS handshake (2 vCPU shared with wrk)


def _serial_served(stack: DevStack) -> int:
    return served_cert(stack.lb_ip, TLS_PORT, stack.lb_ip).serial_number


def _reload(stack: DevStack) -> None:
    """The usual way: weights, drains and maintenance saved to the state file, then the
    master's reload (it returns once the new worker runs)."""
    answer = stack.runtime().execute(["show servers state"])[0]
    config = stack.paths["config"]
    atomic_write(config.with_name(config.stem + ".state"), answer.rstrip("\n") + "\n")
    stack.master().reload()


def add_hard_stop_after(config: str, seconds: int) -> str:
    """haproxy.cfg with `hard-stop-after SECONDSs` as the first line of its global
    section."""
    lines = config.splitlines(keepends=True)
    try:
        i = next(n for n, line in enumerate(lines) if line.strip() == "global")
    except StopIteration:
        raise ValueError("no global section in the config") from None
    return "".join([*lines[:i + 1], f"    hard-stop-after {seconds}s\n", *lines[i + 1:]])


def drop_reasons(drops: list[dict[str, Any]]) -> dict[str, int]:
    """How many drops had each reason, autobahn's session ids left out."""
    return dict(Counter(re.sub(r"session \d+", "session N", d["reason"]) for d in drops))


def _mode(tmp: Path, mode: str, net: int, rotations: int, every_s: float, rate: int,
          wamp_clients: tuple[int, int]) -> dict[str, Any]:
    stack = DevStack(tmp / mode, net=net)
    names = [stack.lb_ip, "localhost"]
    tls_dir = tmp / mode / "tls"
    tls = local_tls.ensure(tls_dir, names)
    stack.flags = ["--tls-cert", str(tls.site_pem), "--tls-bind", f"{stack.lb_ip}:{TLS_PORT}"]
    edges = CrossbarMembers(stack)
    wrk = Wrk(f"https://{stack.lb_ip}:{TLS_PORT}/mydata", tmp / f"rotation-{mode}.json",
              rate=rate, connections=32)
    wamp = WampLoad(f"wss://{stack.lb_ip}:{TLS_PORT}/ws", tmp / f"rotation-wamp-{mode}.json",
                    held=wamp_clients[0], rotating=wamp_clients[1], cafile=tls.ca_cert)
    try:
        for i in MEMBERS:
            edges.start(i)
        stack.start()
        edges.wait(list(MEMBERS))
        for i in MEMBERS:
            stack.add_member(i, http=False)
        want = {f"node{i}" for i in MEMBERS}
        wait_for(lambda: stack.up_servers() == want, 90, "the members UP")
        wait_for(lambda: "start version=" in stack.log("agent"), 30, "the agent's start")
        if mode != "runtime-api":
            stack.terminate("agent", timeout=10)
        if mode == "reload-hard-stop":
            config = stack.paths["config"]
            config.write_text(add_hard_stop_after(config.read_text(), HARD_STOP_S))
            _reload(stack)
            wait_for(lambda: not stack.master().status().old_workers, 30,
                     "no old worker before the load")
        reloads_before = stack.master().status().reloads
        worker_before = stack.master().status().workers
        rounds: list[dict[str, Any]] = []
        with Sampler(lambda: haproxy_usage(stack.paths["config"]), interval=0.5) as hap:
            wamp.start()
            wrk.start()
            time.sleep(SETTLE_S)
            for k in range(rotations):
                slot = time.monotonic()
                local_tls.ensure(tls_dir, [*names, f"rotation{k}.example"])  # atomic write
                written = time.monotonic()
                new = x509.load_pem_x509_certificate(tls.site_pem.read_bytes()).serial_number
                if mode != "runtime-api":
                    _reload(stack)
                seen = written + wait_for(lambda n=new: _serial_served(stack) == n, 30,
                                          f"rotation {k + 1}'s serial served", interval=0.02)
                rounds.append({"serial": f"{new:X}", "served_after_s": round(seen - written, 3)})
                time.sleep(max(0.0, every_s - (time.monotonic() - slot)))
            time.sleep(SETTLE_S)
            load = wrk.stop()
            sessions = wamp.stop()
        status = stack.master().status()
    except BaseException:
        wrk.kill()
        wamp.kill()
        raise
    finally:
        stack.stop()
    n = [v for _, v in hap.samples if isinstance(v, dict)]
    calls = sessions["calls"]
    result: dict[str, Any] = {
        "mode": mode, "rotations": rotations, "every_s": every_s,
        "hard_stop_after_s": HARD_STOP_S if mode == "reload-hard-stop" else None,
        "reloads": status.reloads - reloads_before,
        "worker_changed": status.workers != worker_before,
        "old_workers_at_end": len(status.old_workers),
        "haproxy_processes_max": max((v["n"] for v in n), default=None),
        "haproxy_rss_mb_max": max((v["rss_mb"] for v in n), default=None),
        "rounds": rounds,
        "wamp": {"sessions_opened": sessions["sessions_opened"],
                 "dropped": len(sessions["drops"]), "dropped_held": sessions["drops_held"],
                 "reconnects": sessions["reconnect_s"]["n"],
                 "reconnect_s": sessions["reconnect_s"],
                 "connect_failures": len(sessions["connect_failures"]),
                 "calls_ok": calls["ok"], "calls_failed": calls["failed"],
                 "call_latency_ms": calls["latency_ms"],
                 "drop_reasons": drop_reasons(sessions["drops"])},
        "http": {"requests": load["requests"], "failed": load["failed"],
                 "rate_req_s": load["rate_req_s"], "latency_ms": load["latency_ms"],
                 "wrk_errors": load["wrk_errors"]},
    }
    print(f"  {mode}: reloads {result['reloads']}, WAMP {sessions['sessions_opened']} sessions "
          f"opened, {result['wamp']['dropped']} dropped "
          f"({result['wamp']['dropped_held']} held), {result['wamp']['reconnects']} reconnects, "
          f"calls failed {calls['failed']}/{calls['ok'] + calls['failed']}; HTTPS failed "
          f"{load['failed']}/{load['requests']}; new serial served after "
          f"{', '.join(str(r['served_after_s']) for r in rounds)} s; HAProxy processes max "
          f"{result['haproxy_processes_max']}", flush=True)
    return result


def rotation(tmp: Path, net: int, wamp_clients: tuple[int, int],
             rotations: int = ROTATIONS, every_s: float = EVERY_S,
             rate: int = RATE) -> dict[str, Any]:
    """Each mode on its own devstack net (NET, NET+1, NET+2), one after the other."""
    return {"modes": {mode: _mode(tmp, mode, net + i, rotations, every_s, rate, wamp_clients)
                      for i, mode in enumerate(MODES)},
            "members": len(MEMBERS), "wamp_held": wamp_clients[0],
            "wamp_rotating": wamp_clients[1], "https_rate_req_s": rate,
            "setting": "no hard-stop-after in lbsync's template nor in part 4's reload "
                       "baseline: old workers keep their WebSocket tunnels (timeout tunnel "
                       f"1h); reload-hard-stop adds hard-stop-after {HARD_STOP_S}s"}
