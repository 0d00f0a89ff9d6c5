"""The oracle of the fault suite (bench/faults.py): what `lbsync status --check` must say,
judged from Serf, the registry, HAProxy and haproxy.cfg. The suite's "truthful" figure is
only as good as this judgement."""

from __future__ import annotations

import pytest

from bench.faults import BY_NAME, SCENARIOS, Views

ALL = {"node1", "node2", "node3"}


def v(serf: dict[str, str], haproxy: dict[str, str], config: set[str] | None = None) -> Views:
    alive = {n for n, s in serf.items() if s == "alive"}
    return Views(serf, frozenset(alive), haproxy,
                 frozenset(haproxy if config is None else config))


def test_healed_views_agree_and_have_no_drift() -> None:
    healed = v(dict.fromkeys(ALL, "alive"), dict.fromkeys(ALL, "UP"))
    assert healed.agree(ALL)
    assert not healed.drift()


def test_a_down_server_of_an_alive_member_is_not_drift_but_not_healed() -> None:
    views = v(dict.fromkeys(ALL, "alive"), {"node1": "DOWN", "node2": "UP", "node3": "UP"})
    assert not views.drift()
    assert not views.agree(ALL)


@pytest.mark.parametrize(("serf", "haproxy", "config"), [
    # haproxy.cfg lags HAProxy (its folder read-only)
    ({"node1": "alive", "node2": "alive"}, {"node1": "UP", "node2": "UP"},
     {"node1", "node2", "node3"}),
    # an alive member HAProxy lacks
    ({"node1": "alive", "node2": "alive"}, {"node1": "UP"}, {"node1"}),
    # an alive member left in maintenance
    ({"node1": "alive", "node2": "alive"}, {"node1": "UP", "node2": "MAINT"}, None),
    # a failed member still in rotation
    ({"node1": "alive", "node2": "failed"}, {"node1": "UP", "node2": "UP"}, None),
    # every server kept, but Serf knows none of them (its agent restarted)
    ({}, {"node1": "UP", "node2": "UP"}, None),
])
def test_drift(serf: dict[str, str], haproxy: dict[str, str], config: set[str] | None) -> None:
    assert v(serf, haproxy, config).drift()


@pytest.mark.parametrize(("serf", "haproxy"), [
    # a leaving member's server draining or in maintenance while its sessions finish
    ({"node1": "alive", "node2": "leaving"}, {"node1": "UP", "node2": "MAINT"}),
    ({"node1": "alive"}, {"node1": "UP", "node2": "DRAIN"}),
    # every member failed: the last servers are kept while Serf still knows them
    ({"node1": "failed", "node2": "failed"}, {"node1": "DOWN", "node2": "DOWN"}),
])
def test_no_drift(serf: dict[str, str], haproxy: dict[str, str]) -> None:
    assert not v(serf, haproxy).drift()


def test_scenarios_have_unique_names_and_a_description() -> None:
    assert len(BY_NAME) == len(SCENARIOS)
    assert all(s.what and s.hold > 0 for s in SCENARIOS)


def test_a_drained_server_with_no_session_left_is_drift() -> None:
    """What status calls "drained but not removed": lbsync should have deleted it."""
    views = Views({"node1": "alive", "node3": "left"}, frozenset({"node1"}),
                  {"node1": "UP", "node3": "MAINT"}, frozenset({"node1", "node3"}),
                  frozenset({"node3"}))
    assert views.drift()
