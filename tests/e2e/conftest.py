"""The Docker end-to-end tests build images and start the compose stack (minutes), so a
plain `pytest` skips them: select them with `pytest -m e2e tests/e2e` (or LBSYNC_E2E=1).
Once selected, they fail when Docker cannot be prepared (e2e_docker.prepared_engine)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("LBSYNC_E2E") == "1" or "e2e" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="Docker end-to-end test: run `pytest -m e2e tests/e2e` "
                                   "(or LBSYNC_E2E=1); it builds images and starts containers")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)
