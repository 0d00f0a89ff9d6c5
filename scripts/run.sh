#!/usr/bin/env bash
# Set up, then run the main job: the local cluster under supervisord, HAProxy + Serf +
# lbsync agent on 127.0.0.1 and NODES (default 3) Crossbar edge nodes on 127.0.0.11, .12...
# It returns once every node is UP; `.venv/bin/lbsync down` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lbsync up --nodes "${NODES:-3}" "$@"
