"""carp-sidecar: a ucarp-compatible CARP agent that keeps a virtual IP alive across hosts."""
