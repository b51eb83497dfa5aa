"""keepalived's IPv6 vrrp_instances for `carp-sidecar import` (sidecar.tools.keepalived_import).
keepalived takes an instance's family from the first of ``native_ipv6``, ``unicast_src_ip``/
``mcast_src_ip``, ``unicast_peer``'s first peer or ``virtual_ipaddress``'s first address, in
the order written, and ignores addresses of the other family ("address family must match VRRP
instance - ignoring", keepalived 2.2.7 vrrp_data.c/vrrp_parser.c); the import does the same,
with a WARNING for each address left out. An IPv6 instance is VRRPv3 (vrrp.c,
vrrp_complete_instance) unless ``version 2`` came before its family was known and neither
``native_ipv6`` nor strict mode overrides it: keepalived then runs VRRPv2 over IPv6, which
carp-sidecar does not (WARNING; skipped). A ``version 2`` after it is ignored, as keepalived
does. It becomes a vrrp3 ``[[vhid]]`` whose adverts go from the link-local address to
ff02::12, or from ``unicast_src_ip`` to its IPv6 ``unicast_peer``s (else the link-local
address: only link-local peers then, as carp-sidecar's config requires). Its link-local
VIPs (RFC 5798's first address, keepalived's ``fe80::1/64`` first) are carried, in their
order: our adverts list the same addresses, so the group stays one."""

from __future__ import annotations

from ipaddress import ip_interface
from typing import Any

VERSION_GIVEN = "_version_given"  # set by the import's `version` handler
NATIVE = "_native_ipv6"


def native_ipv6(d: Any, table: dict[str, Any], state: Any) -> None:
    table[NATIVE] = True


def family(where: str, table: dict[str, Any], notes: list[str], node: Any = None,
           strict: bool = False) -> None:
    """Make ``table`` an IPv6 instance's if keepalived runs it as one; note what it drops."""
    for marker in (NATIVE, VERSION_GIVEN):  # the directives' order decides (keepalived_family)
        table.pop(marker, None)
    if node is None or not as_keepalived(where, table, notes, node, strict):
        return  # IPv4, or VRRPv2 over IPv6 (the import's VRRPv2 rule names the addresses)
    routed = [p for p in table.get("peers", []) if not ip_interface(p).ip.is_link_local]
    if routed and "srcip" not in table:  # carried: check-config names CARP_SRCIP
        notes.append(f"{where}: WARNING: unicast_peer {', '.join(routed)} without "
                     "unicast_src_ip: keepalived sends from the link-local address, which no "
                     "peer that checks sources lists; set srcip to this node's address (refused "
                     "without it) and list that in the other nodes' unicast_peer")
    if "mcast" in table:
        notes.append(f"{where}: vrrp_mcast_group4 {table.pop('mcast')}: not for an IPv6 "
                     "instance: its adverts go to ff02::12")


def _family_of(d: Any) -> int | None:
    """The family a directive gives an instance that has none yet (None: no say)."""
    if d.name in ("unicast_src_ip", "mcast_src_ip") and d.args:
        first = d.args[0]
    elif d.name in ("unicast_peer", "virtual_ipaddress") and d.children():
        first = d.children()[0].name
    else:
        return None
    return 6 if ":" in first else 4


def keepalived_family(node: Any) -> tuple[int, int | None]:
    """(family, version given) as keepalived's parser settles them, directive by directive."""
    fam: int | None = None
    version: int | None = None
    for d in node.children():
        if d.name == "native_ipv6" and fam != 4:  # with IPv4 keepalived refuses it
            fam, version = 6, 3
        elif d.name == "version" and d.args in (["2"], ["3"]):
            wanted = int(d.args[0])  # a conflicting one, or 2 once IPv6, is ignored
            if version in (None, wanted) and not (wanted == 2 and fam == 6):
                version = wanted
        elif fam is None:
            fam = _family_of(d)
    return fam or 4, version


def as_keepalived(where: str, table: dict[str, Any], notes: list[str], node: Any,
                  strict: bool) -> bool:
    """Drop what keepalived ignores (the other family's addresses); True: an IPv6 VRRPv3
    instance."""
    fam, version = keepalived_family(node)
    six = fam == 6

    def other(a: str) -> bool:
        return (":" in a) != six
    for key, what in (("addr", "virtual_ipaddress"), ("peers", "unicast_peer"),
                      ("srcip", "unicast_src_ip")):
        given = table.get(key)
        values = [given] if isinstance(given, str) else list(given or [])
        dropped = [a for a in values if other(a)]
        if not dropped:
            continue
        notes.append(f"{where}: WARNING: {what} {', '.join(dropped)}: not carried: keepalived "
                     f"ignores it (an IPv{fam} instance: its first address, native_ipv6, "
                     "unicast_src_ip or unicast_peer, whichever comes first, decides)")
        kept = [a for a in values if not other(a)]
        if kept and not isinstance(given, str):
            table[key] = kept
        else:
            del table[key]
    if not six:
        return False
    if version == 2 and not (strict or table.get("strict_mode")):
        notes.append(f"{where}: WARNING: version 2 before the instance's first IPv6 address: "
                     "keepalived runs VRRPv2 over IPv6 here (no strict mode), which RFC 5798 "
                     "does not define and carp-sidecar refuses; use version 3 on every node")
        table["protocol"] = "vrrp2"
        return False
    table["protocol"] = "vrrp3"
    return True
