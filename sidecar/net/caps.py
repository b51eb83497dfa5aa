"""What the host must give the agent, checked the same way by the agent's start and by
`check-config`: the capabilities (read from /proc, no library: NET_RAW for the packet socket,
NET_ADMIN for the VIP by netlink), a source address on the interface, and what
CARP_VIP_INTERFACE must be."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
IFF_LOOPBACK, IFF_NOARP = 0x8, 0x80


def effective() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capability(netlink_managed: bool) -> str:
    """What to add, or "" when this process has what the agent needs."""
    caps = effective()
    if not caps >> CAP_NET_RAW & 1:
        return ("missing capability NET_RAW: CARP adverts need a packet socket "
                "(docker run --cap-add=NET_RAW, or run as root)")
    if netlink_managed and not caps >> CAP_NET_ADMIN & 1:
        return ("missing capability NET_ADMIN: the agent adds and removes the VIP "
                "by netlink (docker run --cap-add=NET_ADMIN)")
    return ""


def source_address(configured: IPv4Address | IPv6Address | None, interface: str,
                   addresses: Sequence[IPv4Address | IPv6Address],
                   vips: Sequence[IPv4Address | IPv6Address]
                   ) -> tuple[IPv4Address | IPv6Address | None, str]:
    """The advert source (CARP_SRCIP, else the interface's first own IPv4 address: a VIP
    is never one), or None and the problem naming CARP_SRCIP."""
    own = [a for a in addresses if a not in vips]
    if configured is None:
        if not own:
            return None, f"CARP_SRCIP: not set and {interface} has no IPv4 address"
        return own[0], ""
    if configured not in own:
        return None, (f"CARP_SRCIP: {configured} is not an address of {interface} "
                      f"(it has {', '.join(map(str, own)) or 'none'})")
    return configured, ""


def vip_interface_problem(name: str, flags: int,
                          vips: Sequence[IPv4Interface | IPv6Interface]) -> str:
    """Why the VIPs cannot go on interface ``name`` (its link ``flags``) as routes a routing
    daemon announces, or "". Only a loopback or NOARP interface: nothing is announced there,
    so an ARP interface would answer for the VIP unannounced (GARP on it is not built)."""
    if not flags & (IFF_LOOPBACK | IFF_NOARP):
        return (f"CARP_VIP_INTERFACE: {name} does ARP; routed VIPs go on a loopback or NOARP "
                "interface (lo), or leave it unset to put them on the CARP interface")
    wide = [str(v) for v in vips if v.network.prefixlen != v.max_prefixlen]
    if flags & IFF_LOOPBACK and wide:
        return (f"CARP_ADDR: {', '.join(wide)} on loopback {name} must be a host route "
                "(/32, /128)")
    return ""
