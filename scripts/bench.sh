#!/usr/bin/env bash
# Set up, then run the benchmark suite (bench.run through `lbsync bench`); arguments go
# to it, e.g. `bash scripts/bench.sh --quick --out bench/results/quick.json` (about 5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lbsync bench "$@"
