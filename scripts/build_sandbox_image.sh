#!/usr/bin/env bash
# Build the sandbox image of the docker / podman backend (sandbox/image/Dockerfile) and check its
# toolchains. Linux only. Needs a running engine (docker or podman) and, for --debootstrap, root.
#
#   bash scripts/build_sandbox_image.sh [--engine docker|podman] [--tag NAME] [--debootstrap]
#
# Where debian:bookworm-slim can be pulled this is plain `docker build -t terminus-base:latest
# sandbox/image`. Where no image can be pulled (the project's machines reach only Debian's, PyPI's
# and npm's package registries), the base is made from Debian's packages instead: `debootstrap
# --variant=minbase bookworm` into a temporary directory, imported as terminus-debian:bookworm
# (about 200 MB). That happens with --debootstrap, or when the pull fails.
# The build's `apt-get install` needs Debian's mirror: the build runs with the host's network
# (--network host); the sandboxes themselves always run with --network none.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=""
TAG=terminus-base:latest
MODE=auto
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PULL_BASE=debian:bookworm-slim
LOCAL_BASE=terminus-debian:bookworm
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) ENGINE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --debootstrap) MODE=debootstrap; shift ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "build_sandbox_image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "[sandbox-image] $*"; }

if [ -z "$ENGINE" ]; then
  for e in docker podman; do command -v "$e" >/dev/null 2>&1 && { ENGINE=$e; break; }; done
fi
if [ -z "$ENGINE" ]; then
  echo "build_sandbox_image: neither docker nor podman is installed (e.g. 'apt-get install docker.io'," \
       "then start dockerd: docs/sandbox.md)" >&2
  exit 1
fi
if ! "$ENGINE" info >/dev/null 2>&1; then
  echo "build_sandbox_image: '$ENGINE info' fails: start the engine first (dockerd: docs/sandbox.md)" >&2
  exit 1
fi

BASE=$PULL_BASE
if [ "$MODE" = auto ] && ! "$ENGINE" image inspect "$PULL_BASE" >/dev/null 2>&1; then
  say "pulling $PULL_BASE"
  "$ENGINE" pull -q "$PULL_BASE" >/dev/null 2>&1 || { say "no pull possible: the base comes from Debian's packages"; MODE=debootstrap; }
fi
if [ "$MODE" = debootstrap ]; then
  BASE=$LOCAL_BASE
  if ! "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
    if ! command -v debootstrap >/dev/null 2>&1; then
      [ "$(id -u)" = 0 ] || { echo "build_sandbox_image: debootstrap is missing: 'sudo apt-get install debootstrap'" >&2; exit 1; }
      say "installing debootstrap"
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    ROOTFS=$(mktemp -d /tmp/terminus-rootfs.XXXXXX)
    trap 'rm -rf "$ROOTFS"' EXIT
    say "debootstrap --variant=minbase bookworm ($MIRROR), then $ENGINE import as $BASE"
    debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
    tar -C "$ROOTFS" -c . | "$ENGINE" import - "$BASE" >/dev/null
  fi
fi

say "building $TAG from $BASE (sandbox/image/Dockerfile)"
"$ENGINE" build --network host --build-arg "BASE=$BASE" -t "$TAG" sandbox/image
say "checking the toolchains in $TAG"
"$ENGINE" run --rm --network none "$TAG" bash -c '
  set -e
  python3 -m pytest --version
  python3 -m pyflakes --version
  node --version; npm --version
  gcc --version | head -1; g++ --version | head -1; make --version | head -1
  cmake --version | head -1; autoreconf --version | head -1; libtoolize --version | head -1
  javac -version; java -version 2>&1 | head -1
  ls /usr/share/java/junit-platform-console-standalone.jar'
say "done: $TAG (rollout.sandbox.backend: $ENGINE, rollout.sandbox.image: $TAG)"
