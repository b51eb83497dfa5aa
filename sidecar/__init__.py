"""carp-sidecar: a ucarp-compatible CARP agent that keeps a virtual IP alive across hosts."""

# The one place the version is written: the package metadata (pyproject.toml reads it), the
# CLI, /metrics (carp_build_info) and the image's labels (.ci/build-image.sh) all take it here.
__version__ = "0.2.0"
