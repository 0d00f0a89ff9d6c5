#!/usr/bin/env bash
# Set up, then run every check: ruff, mypy, unit tests and the integration tests that
# start real haproxy (2.6 and 3.0), serf, supervisord and Crossbar processes on loopback,
# and the end-to-end tests of the Docker Compose stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The integration tests run against the system's HAProxy (2.6 on Debian 12: dynamic cookies)
# and against HAProxy 3.0 (node-name cookies), which Debian 12 lacks: scripts/haproxy30.sh
# takes it from Debian 13's packages (cached in .cache/haproxy30) and prints its path.
# LBSYNC_HAPROXY30=PATH picks another 3.0 binary, LBSYNC_HAPROXY30= (empty) none. When
# there is none, the 3.0 runs are skipped with the reason, or fail the run with
# LBSYNC_REQUIRE_HAPROXY30=1.
if [[ -z ${LBSYNC_HAPROXY30+set} ]]; then
    mkdir -p .cache
    if LBSYNC_HAPROXY30=$(bash scripts/haproxy30.sh 2> >(tee .cache/haproxy30.err >&2)); then
        echo "test: HAProxy 3.0 for the integration tests: $LBSYNC_HAPROXY30"
    else
        sleep 0.1  # let tee finish
        LBSYNC_HAPROXY30=
        reason=$(grep -o 'not available: .*' .cache/haproxy30.err | tail -1 | cut -d' ' -f3-)
        export LBSYNC_HAPROXY30_REASON=${reason:-scripts/haproxy30.sh failed}
        if [[ ${LBSYNC_REQUIRE_HAPROXY30:-} == 1 ]]; then
            echo "test: HAProxy 3.0 not available: $LBSYNC_HAPROXY30_REASON (LBSYNC_REQUIRE_HAPROXY30=1)" >&2
            exit 1
        fi
        printf '%s\n' "test: WARNING: HAProxy 3.0 not available: $LBSYNC_HAPROXY30_REASON" \
            "test: WARNING: the integration tests run against HAProxy 2.6 only; their 3.0 runs are skipped" >&2
    fi
fi
export LBSYNC_HAPROXY30
.venv/bin/ruff check lbsync tests bench
.venv/bin/mypy
# Everything runs by default, the Docker end-to-end tests (marker e2e) included: they
# install docker.io, start dockerd and build the images offline (scripts/docker-prepare.sh).
# LBSYNC_TEST_MARKERS="not e2e" leaves them out; LBSYNC_TEST_MARKERS=e2e runs only them.
export LBSYNC_E2E=${LBSYNC_E2E:-1}  # tests/e2e/conftest.py skips them unless asked
exec .venv/bin/pytest -p no:cacheprovider ${LBSYNC_TEST_MARKERS:+-m "$LBSYNC_TEST_MARKERS"} "$@"
