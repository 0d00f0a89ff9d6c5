"""bench/rotation.py's config edit: hard-stop-after as the global section's first line."""

from __future__ import annotations

import pytest

from bench.rotation import add_hard_stop_after, drop_reasons


def test_hard_stop_after_goes_first_in_global() -> None:
    cfg = "# rendered\nglobal\n    master-worker\n\ndefaults\n    mode http\n"
    assert add_hard_stop_after(cfg, 2) == (
        "# rendered\nglobal\n    hard-stop-after 2s\n    master-worker\n\n"
        "defaults\n    mode http\n")


def test_a_config_without_global_is_an_error() -> None:
    with pytest.raises(ValueError, match="global"):
        add_hard_stop_after("defaults\n    mode http\n", 2)


def test_a_global_word_elsewhere_is_not_the_section() -> None:
    cfg = "# the global section follows\nglobal\n    maxconn 10\n"
    assert add_hard_stop_after(cfg, 5).splitlines()[2] == "    hard-stop-after 5s"


def test_drop_reasons_are_counted_without_session_ids() -> None:
    lost = "wamp.close.transport_lost WAMP transport was lost without closing the session {} before"
    drops = [{"reason": lost.format(123)}, {"reason": lost.format(98765)},
             {"reason": "connection lost"}]
    assert drop_reasons(drops) == {lost.format("N"): 2, "connection lost": 1}
