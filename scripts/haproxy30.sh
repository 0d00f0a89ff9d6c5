#!/usr/bin/env bash
# Make HAProxy 3.0 runnable on this machine without Docker, and print the path of its
# wrapper, .cache/haproxy30/bin/haproxy (absolute). The integration tests run against it
# (LBSYNC_HAPROXY30) as well as against the system's haproxy (2.6 on Debian 12, which has
# no 3.x package, not in backports either).
#
# How: Debian 13 (trixie) packages HAProxy 3.0. The trixie root filesystem that
# scripts/docker-prepare.sh imports as debian:trixie-slim (scripts/trixie-rootfs.sh, a
# cached tarball) is unpacked into .cache/haproxy30/rootfs, and `apt-get install haproxy`
# runs in a chroot of it. The wrapper then runs trixie's haproxy with trixie's dynamic
# loader and libraries, outside any chroot, so the host's files, sockets and ports are
# the ones HAProxy sees:
#   ROOTFS/usr/lib64/ld-linux-x86-64.so.2 --argv0 WRAPPER --library-path ROOTFS/... haproxy
# `--argv0 WRAPPER` matters: the master of `haproxy -W` re-executes its argv[0] (at start
# and on every reload), which must come back through the trixie loader.
#
# Quick and idempotent: with the wrapper in place and answering 3.0, it only prints the
# path. When it cannot (not root, no network, apt fails), it prints one line
# "haproxy30: HAProxy 3.0 not available: REASON" on stderr and exits 1.
# Variables: CACHE (default .cache), DEBIAN_MIRROR; HAPROXY30_REBUILD=1 starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CACHE:-.cache}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)  # the wrapper holds absolute paths
DIR=$CACHE/haproxy30
ROOTFS=$DIR/rootfs
WRAPPER=$DIR/bin/haproxy
LOG=$DIR/install.log

say() { printf 'haproxy30: %s\n' "$*" >&2; }
fail() { say "HAProxy 3.0 not available: $*"; exit 1; }
is_30() {  # the wrapper runs and says 3.0.x
    local v
    v=$("$WRAPPER" -v 2>/dev/null) && [[ $v =~ ^HA-?Proxy\ version\ 3\.0\. ]]
}
stamp() { printf 'wrapper=%s rootfs=%s\n' "$WRAPPER" "$ROOTFS"; }

ready() { [[ "$(cat "$DIR/.complete" 2>/dev/null)" == "$(stamp)" ]] && is_30; }

if [[ ${HAPROXY30_REBUILD:-} != 1 ]] && ready; then
    echo "$WRAPPER"
    exit 0
fi
mkdir -p "$DIR"
exec 9>"$DIR.lock"
flock 9
if [[ ${HAPROXY30_REBUILD:-} != 1 ]] && ready; then  # made while this run waited
    echo "$WRAPPER"
    exit 0
fi
rm -f "$DIR/.complete"
started=$SECONDS
[[ $(id -u) -eq 0 ]] || fail "needs root (chroot and apt-get in the trixie root filesystem)"
command -v chroot >/dev/null || fail "no chroot binary"

if ! tar_path=$(CACHE=$CACHE bash scripts/trixie-rootfs.sh 2> >(tee "$DIR/rootfs.err" >&2)); then
    sleep 0.1  # let tee finish
    reason=$(grep -E '^E: ' "$DIR/rootfs.err" | tail -1)
    fail "no trixie root filesystem: ${reason:-$(tail -1 "$DIR/rootfs.err")}"
fi
rm -f "$DIR/rootfs.err"
say "unpacking $tar_path into $ROOTFS.tmp, then apt-get install haproxy in a chroot (log: $LOG)"
rm -rf "$ROOTFS.tmp" "$DIR/bin"
mkdir -p "$ROOTFS.tmp"
tar --numeric-owner -xf "$tar_path" -C "$ROOTFS.tmp" || fail "cannot unpack $tar_path"
# apt needs a resolver; the package's postinst must not start an haproxy service.
cp -L /etc/resolv.conf "$ROOTFS.tmp/etc/resolv.conf" 2>/dev/null || true
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS.tmp/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS.tmp/usr/sbin/policy-rc.d"
if ! chroot "$ROOTFS.tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        DEBIAN_FRONTEND=noninteractive sh -c \
        'apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy && apt-get clean' \
        >"$LOG" 2>&1; then
    reason=$(grep -E '^(E|W): ' "$LOG" | head -1)
    rm -rf "$ROOTFS.tmp"
    fail "apt-get install haproxy in the trixie chroot failed: ${reason:-see $LOG}"
fi
rm -rf "$ROOTFS.tmp"/var/lib/apt/lists/*
rm -rf "$ROOTFS"
mv "$ROOTFS.tmp" "$ROOTFS"

mkdir -p "$DIR/bin"
cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# HAProxy 3.0 from Debian 13, run with its own loader and libraries (scripts/haproxy30.sh).
exec "$ROOTFS/usr/lib64/ld-linux-x86-64.so.2" --argv0 "$WRAPPER" \\
    --library-path "$ROOTFS/usr/lib/x86_64-linux-gnu" "$ROOTFS/usr/sbin/haproxy" "\$@"
EOF
chmod 755 "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"
is_30 || fail "$WRAPPER -v does not say 3.0: $("$WRAPPER" -v 2>&1 | head -1)"
# A config check, with a dynamic server's explicit cookie (what 2.6 refuses at runtime).
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
cat >"$check/haproxy.cfg" <<EOF
global
    stats socket $check/admin.sock level admin
defaults
    mode http
    timeout connect 1s
    timeout client 1s
    timeout server 1s
backend nodes
    cookie SERVERID insert indirect nocache
    server n1 127.0.0.1:1 cookie n1
EOF
out=$("$WRAPPER" -c -f "$check/haproxy.cfg" 2>&1) || fail "$WRAPPER -c failed: $out"
stamp >"$DIR/.complete"
say "$("$WRAPPER" -v | head -1 | cut -d' ' -f1-3) ready in $((SECONDS - started))s"
echo "$WRAPPER"
