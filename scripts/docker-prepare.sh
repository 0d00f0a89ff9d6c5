#!/usr/bin/env bash
# Prepare this machine for the Docker stack, then build lbsync-base, lbsync-lb and
# lbsync-node. Made for a machine that reaches Debian's and PyPI's package registries but
# no image registry; on a machine with internet it does the same, faster.
#
#   1. apt-get install docker.io / docker-compose / debootstrap when missing (root);
#   2. start dockerd in the background when no engine answers (`docker info`); its pid goes
#      to $CACHE/dockerd.pid so whoever asked for it can stop it;
#   3. create debian:trixie-slim when the engine does not have it: debootstrap a minbase
#      trixie, trim it like Debian's slim images (scripts/trixie-rootfs.sh), `docker import`
#      it. The tarball is cached in $CACHE, so the next time is a plain import;
#   4. fill wheelhouse/ with Crossbar.io and its dependencies for the image's Python (3.13),
#      since containers cannot reach PyPI: binary wheels from PyPI, plus wheels built here
#      from the few pure-Python dependencies that only publish sdists;
#   5. docker build the three images (layer cache: a code change rebuilds the last layers).
#
# Safe to run again; every step is skipped when its result is there. Times each step and
# prints the image sizes. Variables: CACHE (default .cache), PYTHON_VERSION (3.13),
# CROSSBAR_VERSION (26.10.1), DEBIAN_MIRROR, NO_BUILD=1 (stop before the builds).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CACHE:-.cache}
WHEELHOUSE=wheelhouse
PYTHON_VERSION=${PYTHON_VERSION:-3.13}
CROSSBAR_VERSION=${CROSSBAR_VERSION:-26.10.1}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=debian:trixie-slim
ROOTFS_TAR=$CACHE/debian-trixie-slim.tar

say() { printf 'docker-prepare: %s\n' "$*" >&2; }
started=$SECONDS
step_start=$SECONDS
step() { step_start=$SECONDS; say "$*"; }
done_() { say "  done in $((SECONDS - step_start))s"; }
mkdir -p "$CACHE"

# --- 1. tools -----------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    missing+=(docker-compose)
fi
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    step "apt-get install ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then say "need root to install: ${missing[*]}"; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    done_
fi

# --- 2. engine ----------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    step "no Docker engine answers: starting dockerd (log: $CACHE/dockerd.log)"
    # setsid: not in this shell's process group, so it outlives a Ctrl-C of this script.
    setsid dockerd >"$CACHE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$CACHE/dockerd.pid"
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { say "dockerd did not answer in 30s:"; tail -20 "$CACHE/dockerd.log" >&2; exit 1; }
    done_
fi

# --- 3. debian:trixie-slim ----------------------------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [[ ! -s $ROOTFS_TAR ]]; then
        step "$BASE_IMAGE cannot be pulled here: debootstrap trixie (minbase) from $DEBIAN_MIRROR"
        # The same tarball scripts/haproxy30.sh unpacks for HAProxy 3.0 (made once for both).
        CACHE=$CACHE DEBIAN_MIRROR=$DEBIAN_MIRROR bash scripts/trixie-rootfs.sh >/dev/null
        done_
    fi
    step "docker import $ROOTFS_TAR as $BASE_IMAGE"
    docker import --change 'CMD ["bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
    done_
fi

# --- 4. wheelhouse ------------------------------------------------------------------------
stamp="crossbar==$CROSSBAR_VERSION autobahn python$PYTHON_VERSION"
if [[ "$(cat "$WHEELHOUSE/.complete" 2>/dev/null)" != "$stamp" ]]; then
    step "filling $WHEELHOUSE/ with $stamp (PyPI is not reachable from containers)"
    # Any pip that can reach PyPI will do; .venv's (scripts/setup.sh) when it is there.
    pip=(.venv/bin/python -m pip)
    if ! "${pip[@]}" --version >/dev/null 2>&1; then
        [[ -x $CACHE/pip-venv/bin/python ]] || python3 -m venv "$CACHE/pip-venv"
        pip=("$CACHE/pip-venv/bin/python" -m pip)
    fi
    rm -rf "$WHEELHOUSE.tmp" && mkdir -p "$WHEELHOUSE.tmp/sdist"
    # Some pure-Python dependencies publish no wheel. Resolve for this machine's Python
    # without restrictions: whatever arrives as an sdist is built into a wheel here (they
    # are version-independent; the two with optional C speedups are built without them).
    "${pip[@]}" download -q -d "$WHEELHOUSE.tmp/sdist" "crossbar==$CROSSBAR_VERSION" autobahn \
        2> >(grep -v 'is ignored: it is neither' >&2)
    sdists=()
    for f in "$WHEELHOUSE.tmp"/sdist/*; do [[ $f == *.whl ]] || sdists+=("$f"); done
    if ((${#sdists[@]})); then  # .tar.gz or .zip
        PYUBJSON_NO_EXTENSION=1 PYBJDATA_NO_EXTENSION=1 "${pip[@]}" wheel -q --no-deps \
            -w "$WHEELHOUSE.tmp" "${sdists[@]}" 2> >(grep -v 'is ignored: it is neither' >&2)
    fi
    rm -rf "$WHEELHOUSE.tmp/sdist"
    # Then the image's Python: binary wheels only (the pure ones built above included).
    "${pip[@]}" download -q -d "$WHEELHOUSE.tmp" --find-links "$WHEELHOUSE.tmp" \
        --python-version "$PYTHON_VERSION" --implementation cp \
        --abi "cp${PYTHON_VERSION/./}" --abi abi3 --abi none --only-binary=:all: \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 --platform any \
        "crossbar==$CROSSBAR_VERSION" autobahn \
        2> >(grep -v 'is ignored: it is neither' >&2)
    rm -rf "$WHEELHOUSE"/*.whl
    mkdir -p "$WHEELHOUSE"
    mv "$WHEELHOUSE.tmp"/*.whl "$WHEELHOUSE/"
    rm -rf "$WHEELHOUSE.tmp"
    echo "$stamp" >"$WHEELHOUSE/.complete"
    say "  $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
    done_
fi

# --- 5. images ----------------------------------------------------------------------------
if [[ ${NO_BUILD:-} == 1 ]]; then exit 0; fi
build() {  # tag, dockerfile, context
    step "docker build -t $1"
    local out
    if ! out=$(docker build -t "$1" -f "$2" "$3" 2>&1); then
        printf '%s\n' "$out" | tail -40 >&2
        say "docker build -t $1 failed"
        exit 1
    fi
    done_
}
# The base needs no file from the tree: an empty context costs nothing to send.
step "docker build -t lbsync-base"
if ! out=$(docker build -t lbsync-base - <images/base/Dockerfile 2>&1); then
    printf '%s\n' "$out" | tail -40 >&2; say "docker build -t lbsync-base failed"; exit 1
fi
done_
build lbsync-lb images/lb/Dockerfile .
build lbsync-node images/node/Dockerfile .

say "ready in $((SECONDS - started))s:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
    | grep -E '^(lbsync-(base|lb|node)|debian):' | sed 's/^/  /' >&2
