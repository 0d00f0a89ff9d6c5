#!/usr/bin/env bash
# Set up, then run every check: ruff, mypy, unit tests and the integration tests that
# start real haproxy and serf processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check lbsync tests bench
.venv/bin/mypy
# The Docker end-to-end tests (marker e2e) run only when asked: LBSYNC_TEST_MARKERS=e2e.
exec .venv/bin/pytest -p no:cacheprovider -m "${LBSYNC_TEST_MARKERS:-not e2e}" "$@"
