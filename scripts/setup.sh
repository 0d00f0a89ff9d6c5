#!/usr/bin/env bash
# Set up a fresh Debian (12 or 13) machine, as root, for lbsync: the system packages it
# drives (haproxy, serf) and a virtualenv in .venv with lbsync and its dev tools.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# wrk: the load generator of bench.run. chromium: the lab's stats page screenshots
# (lbsync lab collect). prometheus: the server tests/integration/test_metrics_prometheus.py starts on
# loopback to scrape lbsync's and HAProxy's /metrics.
APT_PACKAGES=(haproxy serf python3 python3-venv python3-pip curl netcat-openbsd procps wrk iproute2 iptables
              chromium prometheus)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d-less machines would start the packaged haproxy on :80 and prometheus on
    # :9090; lbsync and its tests run their own.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    for service in haproxy prometheus; do
        if systemctl is-active --quiet "$service" 2>/dev/null; then
            systemctl stop "$service" || true
        fi
    done
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
# Editable, so tests run the tree; tests/integration/test_packaging.py proves the wheel alone
# works. The edge extra (Crossbar, autobahn, supervisor) is large (~400 MB) but the local
# cluster and its tests need it.
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev,edge,bench]"
# bjdata (crossbar -> autobahn[serialization]) builds its C extension against NumPy 1.x, which prints a traceback in every import under NumPy 2: use its pure-Python build.
if .venv/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("_bjdata") is None)' \
        && ! .venv/bin/python -c 'import _bjdata' >/dev/null 2>&1; then
    bjdata=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("bjdata"))')
    echo "setup: reinstalling bjdata $bjdata without its C extension"
    PYBJDATA_NO_EXTENSION=1 .venv/bin/pip install -q --disable-pip-version-check \
        --no-binary bjdata --no-cache-dir --force-reinstall --no-deps "bjdata==$bjdata"
fi
echo "setup: ready ($(haproxy -v | head -1 | cut -d' ' -f1-3); serf $(serf version | head -1 | cut -d' ' -f2))"
