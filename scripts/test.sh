#!/usr/bin/env bash
# Set up, then run every check: ruff, mypy, unit tests and the integration tests that
# start real haproxy, serf, supervisord and Crossbar processes on loopback, and the
# end-to-end tests of the Docker Compose stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check lbsync tests bench
.venv/bin/mypy
# Everything runs by default, the Docker end-to-end tests (marker e2e) included: they
# install docker.io, start dockerd and build the images offline (scripts/docker-prepare.sh).
# LBSYNC_TEST_MARKERS="not e2e" leaves them out; LBSYNC_TEST_MARKERS=e2e runs only them.
export LBSYNC_E2E=${LBSYNC_E2E:-1}  # tests/e2e/conftest.py skips them unless asked
exec .venv/bin/pytest -p no:cacheprovider ${LBSYNC_TEST_MARKERS:+-m "$LBSYNC_TEST_MARKERS"} "$@"
