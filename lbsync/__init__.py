"""lbsync: keep HAProxy in step with a Serf gossip cluster, without reloads."""

__version__ = "0.1.0"
