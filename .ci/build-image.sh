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
podman build --format docker --network=host --build-arg BASE="$BASE_IMAGE" "${secret[@]}" \
  -t "$IMAGE" .
podman image prune -f >/dev/null  # the previous build's now untagged layers
podman image inspect --format 'image {{.RepoTags}}: {{.Size}} bytes' "$IMAGE"
