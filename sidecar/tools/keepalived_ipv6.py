"""keepalived's IPv6 vrrp_instances for `carp-sidecar import` (sidecar.tools.keepalived_import):
an instance whose VIPs are all IPv6 is an IPv6 one, VRRPv3 unless it says ``version 2``
(keepalived 2.2.7 vrrp.c, vrrp_complete_instance; ``native_ipv6`` forces both, vrrp_parser.c),
and becomes a vrrp3 ``[[vhid]]`` whose adverts go from the link-local address to ff02::12, or
from ``unicast_src_ip`` to its IPv6 ``unicast_peer``s (else the link-local address: only
link-local peers then, as carp-sidecar's config requires). Its link-local VIPs (RFC 5798's
first address, keepalived's ``fe80::1/64`` first) are carried, in their order: our adverts
list the same addresses, so the group stays one."""

from __future__ import annotations

from typing import Any

VERSION_GIVEN = "_version_given"  # set by the import's `version` handler
NATIVE = "_native_ipv6"


def native_ipv6(d: Any, table: dict[str, Any], state: Any) -> None:
    table[NATIVE] = True


def family(where: str, table: dict[str, Any], notes: list[str]) -> None:
    """Make ``table`` an IPv6 instance's if keepalived runs it as one; note what it drops."""
    native, given = table.pop(NATIVE, False), table.pop(VERSION_GIVEN, False)
    addrs = table.get("addr", [])
    if not addrs or any(":" not in a for a in addrs):
        return
    if native or not given:
        table["protocol"] = "vrrp3"
    if table["protocol"] != "vrrp3":
        return  # version 2: the import's VRRPv2 rule names the addresses
    routed = [p for p in table.get("peers", []) if not ip_interface(p).ip.is_link_local]
    if routed and "srcip" not in table:  # carried: check-config names CARP_SRCIP
        notes.append(f"{where}: WARNING: unicast_peer {', '.join(routed)} without "
                     "unicast_src_ip: keepalived sends from the link-local address, which no "
                     "peer that checks sources lists; set srcip to this node's address (refused "
                     "without it) and list that in the other nodes' unicast_peer")
    if "mcast" in table:
        notes.append(f"{where}: mcast_dst_address {table.pop('mcast')}: not carried: IPv6 "
                     "adverts go to ff02::12")
