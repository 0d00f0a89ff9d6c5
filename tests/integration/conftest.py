"""Fixtures for the integration tests (real processes on loopback)."""

from haproxy_fixtures import haproxy_bin, haproxy_rig, http_nodes  # noqa: F401
from serf_fixtures import serf_agents  # noqa: F401  (pytest finds fixtures by name here)
