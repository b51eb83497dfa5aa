#!/bin/sh
# carp-sidecar health check: exit 0 while FRR's BGP session to the neighbour is Established.
# CARP_HEALTH_CMD="/etc/carp-sidecar/check-bgp.sh 10.1.0.1" demotes this node while it is not,
# so a node whose routes cannot reach the router never holds (or takes) the VIP.
# $1: the neighbour's address, $2: vtysh's socket directory (default: FRR's own).
vtysh ${2:+--vty_socket "$2"} -c "show bgp neighbors ${1:?neighbour address}" 2>/dev/null \
    | grep -q "BGP state = Established"
