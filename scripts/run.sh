#!/usr/bin/env bash
# Set up, then run the main job: HAProxy + Serf + lbsync agent with N members on loopback
# (127.0.0.1 is the load balancer, members are 127.0.0.11, .12, ...). Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m lbsync.cluster.devstack --nodes "${NODES:-3}" --dir run/devstack "$@"
