"""The capabilities the agent needs, read from /proc (no library): NET_RAW for the packet
socket, NET_ADMIN for the VIP by netlink. Shared by the agent's start and `check-config`."""

from __future__ import annotations

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


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
