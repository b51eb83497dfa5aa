# carp-sidecar image: `docker run --net=host --cap-add=NET_ADMIN --cap-add=NET_RAW -e CARP_... carp-sidecar`
# BASE defaults to the public Debian slim Python image; CI builds from a local debootstrap
# bookworm (which has no Python: the apt step below adds Debian's python3 in that case).
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
SHELL ["/bin/sh", "-eu", "-c"]
# Marks this stage's image, which the build leaves untagged, so .ci/build-image.sh removes it
# and nothing else.
LABEL io.carp-sidecar.stage="build"
# Only for a Python-less base (CI's debootstrap image): Debian's python3 of that release is the
# point, so versions follow the release instead of being pinned (pins break with every update).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && \
      apt-get install -y --no-install-recommends python3 python3-venv ca-certificates && \
      rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY sidecar ./sidecar
# The CA secret exists only where HTTPS goes through an intercepting proxy (see
# container-ci notes in README); it is never written into a layer.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/carp-sidecar && \
    /opt/carp-sidecar/bin/pip install --no-cache-dir --disable-pip-version-check '.[watch,import]' && \
    rm -rf /opt/carp-sidecar/lib/python3*/site-packages/sidecar/lab && \
    /opt/carp-sidecar/bin/pip uninstall -y setuptools pip && \
    ln -s carp-sidecar /opt/carp-sidecar/bin/ucarp && \
    find /opt/carp-sidecar -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
SHELL ["/bin/sh", "-eu", "-c"]
# Same interpreter as the build stage (the venv links to it); no compilers, no pip. iproute2
# and net-tools let the classic ucarp up/down scripts (ip / ifconfig) run unchanged inside;
# rsync moves the replicated paths (CARP_SYNC_PATHS: the agent runs its daemon and its client).
# hadolint ignore=DL3008
RUN apt-get update && \
    apt-get install -y --no-install-recommends iproute2 net-tools rsync && \
    if ! command -v python3 >/dev/null; then \
      apt-get install -y --no-install-recommends python3; \
    fi && \
    apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /opt/carp-sidecar /opt/carp-sidecar
ENV PATH=/opt/carp-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Set by .ci/build-image.sh (version from sidecar/__init__.py, the git commit, the build time);
# a release overrides SOURCE if the project lives elsewhere.
ARG VERSION=0+unknown
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
ARG SOURCE=https://github.com/carp-sidecar/carp-sidecar
LABEL org.opencontainers.image.title="carp-sidecar" \
      org.opencontainers.image.description="ucarp-compatible CARP virtual IP failover agent with Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="ISC" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.documentation="${SOURCE}#readme"
# Runs as the container's root on purpose: Docker gives capabilities added with --cap-add
# (NET_ADMIN for netlink, NET_RAW for the packet socket) only to root processes, so a non-root
# user would need file capabilities, which turn a missing --cap-add into an opaque exec error
# instead of our one-line message. The container's root holds only the granted capabilities.
STOPSIGNAL SIGTERM
EXPOSE 9655
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["carp-sidecar", "healthcheck"]
ENTRYPOINT ["carp-sidecar"]
CMD ["run"]
