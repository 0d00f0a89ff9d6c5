#!/usr/bin/env bash
# Make a Debian 13 (trixie) minbase root filesystem, trimmed like Debian's slim images, as
# the tarball $CACHE/debian-trixie-slim.tar, and print its path. Nothing is done when the
# tarball is there already. Needs root (debootstrap); installs debootstrap when missing.
#
# Two users: scripts/docker-prepare.sh imports it as the image debian:trixie-slim (no image
# registry here), and scripts/haproxy30.sh unpacks it to get HAProxy 3.0 from trixie's
# packages. Variables: CACHE (default .cache), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CACHE:-.cache}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_TAR=$CACHE/debian-trixie-slim.tar

say() { printf 'trixie-rootfs: %s\n' "$*" >&2; }
mkdir -p "$CACHE"
# One debootstrap at a time, whoever asks.
exec 9>"$CACHE/trixie-rootfs.lock"
flock 9
if [[ -s $ROOTFS_TAR ]]; then
    echo "$ROOTFS_TAR"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then say "need root to debootstrap $ROOTFS_TAR"; exit 1; fi
if ! command -v debootstrap >/dev/null; then
    say "apt-get install debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } \
        || { say "cannot install debootstrap"; exit 1; }
fi
started=$SECONDS
say "debootstrap trixie (minbase) from $DEBIAN_MIRROR (log: $CACHE/debootstrap.log)"
rootfs=$CACHE/rootfs.tmp
rm -rf "$rootfs"
debootstrap --variant=minbase trixie "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { say "debootstrap failed:"; tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
# What Debian's slim images do: no docs, man pages or translations from dpkg, no apt
# caches kept, and nothing downloaded that the image does not need.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
printf 'APT::AutoRemove::SuggestsImportant "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
: >"$rootfs/etc/hostname"
tar --numeric-owner -C "$rootfs" -cf "$ROOTFS_TAR.tmp" .
mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
rm -rf "$rootfs"
say "done in $((SECONDS - started))s"
echo "$ROOTFS_TAR"
