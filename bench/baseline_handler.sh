#!/usr/bin/env bash
# The baseline of bench/run.py: what the classroom lab does on every membership change.
# Serf runs this as its -event-handler: it records the event in the member registry
# (`lbsync handle`), re-renders haproxy.cfg from it (`lbsync render`), and reloads HAProxy
# the classic way, `haproxy -D -sf <old pids>`: a new process binds the listeners again and
# the old one finishes its connections (no master-worker, no socket transfer).
#   usage: baseline_handler.sh WORKDIR   (WORKDIR/baseline.env sets PYTHON and RENDER_FLAGS)
set -euo pipefail
work=$1
# shellcheck disable=SC1091
source "$work/baseline.env"
exec 2>>"$work/handler.log"
case "${SERF_EVENT:-}" in
    member-join|member-leave|member-failed|member-update|member-reap) ;;
    *) cat >/dev/null; exit 0 ;;
esac
exec 9>"$work/handler.lock"
flock 9
"$PYTHON" -m lbsync handle --registry-dir "$work/nodes"
# shellcheck disable=SC2086
"$PYTHON" -m lbsync render $RENDER_FLAGS --out "$work/rendered.cfg" >/dev/null
# (9>&- below: the daemon must not inherit the lock.)
# The lab runs HAProxy as a plain daemon: drop lbsync's master-worker wiring.
grep -v -e '^ *master-worker' -e '^ *log stdout' "$work/rendered.cfg" \
    | sed 's/ expose-fd listeners//' >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -p "$work/haproxy.pid" -D -sf $(cat "$work/haproxy.pid") 9>&-
echo "$(date +%s.%N) $SERF_EVENT" >>"$work/reloads.log"
