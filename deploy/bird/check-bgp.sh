#!/bin/sh
# carp-sidecar health check: exit 0 while BIRD's BGP session to the upstream is Established.
# CARP_HEALTH_CMD="/etc/carp-sidecar/check-bgp.sh upstream" demotes this node while it is not,
# so a node whose routes cannot reach the router never holds (or takes) the VIP.
# $1: the BGP protocol's name in bird.conf (upstream), $2: BIRD's control socket.
birdc -s "${2:-/run/bird/bird.ctl}" show protocols "${1:-upstream}" | grep -q Established
