#!/usr/bin/env bash
# Build the carp-sidecar image with Podman on a Docker-less Debian machine (as root).
# Machine quirks handled here: hybrid cgroups (crun refuses, use runc), no CAP_SYS_RESOURCE
# (explicit ulimits), HTTPS through an intercepting proxy (host CA bundle as a build secret),
# no registry access (a local debootstrap bookworm base passed as BASE).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/carp-sidecar}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/build/containers.conf}

missing=$(for p in podman runc debootstrap; do dpkg -s $p >/dev/null 2>&1 || echo $p; done)
if [ -n "$missing" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq $missing >/dev/null
fi
mkdir -p build
cat > "$CONTAINERS_CONF" <<EOC
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOC

if ! podman image exists "$BASE_IMAGE"; then
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
           || awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
  ROOT=$(mktemp -d)
  trap 'rm -rf "$ROOT"' EXIT
  debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >/dev/null
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
  tar --numeric-owner -C "$ROOT" -c . | podman import - "$BASE_IMAGE" >/dev/null
fi

secret=()
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  secret=(--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt)
fi
# Labels: the version from its one place, the commit, the build time (SOURCE_DATE_EPOCH when a
# reproducible build sets it). SOURCE overrides the project URL.
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' sidecar/__init__.py)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
CREATED=$(date -u ${SOURCE_DATE_EPOCH:+-d @$SOURCE_DATE_EPOCH} +%Y-%m-%dT%H:%M:%SZ)
labels=(--build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION"
        --build-arg CREATED="$CREATED")
if [ -n "${SOURCE:-}" ]; then labels+=(--build-arg SOURCE="$SOURCE"); fi
# The same values as --label too: buildah's layer cache does not key the Dockerfile's LABEL step
# on build-arg values, so a rebuild from another commit would otherwise keep the old revision
# and build time (seen here). --label applies to the final image whatever the cache holds.
labels+=(--label org.opencontainers.image.version="$VERSION"
         --label org.opencontainers.image.revision="$REVISION"
         --label org.opencontainers.image.created="$CREATED")
if [ -n "${SOURCE:-}" ]; then
  labels+=(--label org.opencontainers.image.source="$SOURCE"
           --label org.opencontainers.image.documentation="$SOURCE#readme")
fi

# Multi-arch (PLATFORMS=linux/amd64,linux/arm64) needs user-mode emulation of the foreign
# architectures and a BASE_IMAGE that exists for each platform (a registry's multi-arch image such
# as docker.io/library/python:3.11-slim-bookworm; the local debootstrap base is this machine's only).
# Emulation:
# architectures (qemu-user-static registered with binfmt_misc) and a base image per platform.
PLATFORMS=${PLATFORMS:-}
if [ -n "$PLATFORMS" ]; then
  podman manifest rm "$IMAGE" >/dev/null 2>&1 || true
  podman build --format docker --network=host --build-arg BASE="$BASE_IMAGE" "${secret[@]}" \
    "${labels[@]}" --platform "$PLATFORMS" --manifest "$IMAGE" .
else
  podman build --format docker --network=host --build-arg BASE="$BASE_IMAGE" "${secret[@]}" \
    "${labels[@]}" -t "$IMAGE" .
fi
# Only what our builds leave untagged: the build stage's image and a previous build of ours.
# (`podman image prune` alone would delete every dangling image on the host, anyone's.)
for label in io.carp-sidecar.stage=build org.opencontainers.image.title=carp-sidecar; do
  podman image prune -f --filter "label=$label" >/dev/null
done
podman image inspect --format 'image {{.RepoTags}}: {{.Size}} bytes' "$IMAGE" 2>/dev/null \
  || podman manifest inspect "$IMAGE" >/dev/null
