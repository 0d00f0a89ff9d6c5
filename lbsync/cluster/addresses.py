"""The one loopback address plan: `lbsync up`'s local cluster and the test rig's stack.

The load balancer of net N is 127.N.0.1 (frontend :8080, with TLS :8443, stats :1936 with HAProxy's
/metrics, runtime API :9999, Serf :7946/:7373, lbsync agent's /metrics :9180); member
(edge node) i is 127.N.0.(10+i) (HTTP or Crossbar :8080, the sidecar's agent-check :8081,
Serf :7946/:7373, its router's links to the other nodes :8082). Each net is its own
/24 of 127/8, so stacks with different N run side by side; members past the 240th go on
to 127.N.1.x, 127.N.2.x... (a benchmark's storm of 500), the same .11-.250 in each.
"""

from __future__ import annotations

from ..edge.links import DEFAULT_LINK_PORT
from ..model import LbsyncError
from ..serf.rejoin import GOSSIP_PORT

SERF_PORT = GOSSIP_PORT  # Serf's gossip (DefaultBindPort)
SERF_RPC_PORT = 7373  # Serf's RPC (`-rpc-addr`)
HTTP_PORT = 8080  # HAProxy's frontend on the load balancer; a member's HTTP / Crossbar
TLS_PORT = 8443  # the frontend's https:// and wss:// (`lbsync up --tls`)
STATS_PORT = 1936  # HAProxy's stats page and /metrics
RUNTIME_PORT = 9999  # HAProxy's Runtime API over TCP
AGENT_PORT = 8081  # an edge node's agent-check (lbsync.edge.agentcheck)
LINK_PORT = DEFAULT_LINK_PORT  # an edge node's router links (lbsync.edge.links)
# lbsync agent's /metrics on the load balancer (9100, node_exporter's, would clash with one
# running on the host).
METRICS_PORT = 9180

MEMBER_BASE = 10  # member i is .(10+i): .2-.10 stay free for the load balancer's side
PER_BLOCK = 240  # members .11-.250 of each 127.N.K.x block
MAX_MEMBER = 4 * PER_BLOCK


def lb_ip(net: int) -> str:
    """The load balancer of net N."""
    return f"127.{net}.0.1"


def member_ip(net: int, index: int) -> str:
    """Member (edge node) `index` of net N, 1-960: 127.N.0.11 to 127.N.3.250."""
    if not 1 <= index <= MAX_MEMBER:
        raise LbsyncError(f"member index {index} is outside 1-{MAX_MEMBER}")
    block, offset = divmod(index - 1, PER_BLOCK)
    return f"127.{net}.{block}.{MEMBER_BASE + 1 + offset}"
