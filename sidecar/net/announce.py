"""Announcing that a VIP now lives at our MAC: gratuitous ARP for IPv4, exactly as ucarp sends
it (docs/protocol.md §1), and an unsolicited neighbour advertisement for IPv6 (RFC 4861 §7.2.6).
Pure frame builders."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from sidecar.core.protocol import internet_checksum

BROADCAST = b"\xff" * 6
ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ICMPV6_NA = 136
NA_OVERRIDE = 0x20000000  # O flag: replace whatever link-layer address is cached
OPT_TARGET_LLADDR = 2


def build_garp(mac: bytes, vip: IPv4Address) -> bytes:
    """42-byte ARP *request* from our real MAC, sender = target = VIP, target MAC = our MAC."""
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    eth = BROADCAST + mac + b"\x08\x06"
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, vip.packed, mac, vip.packed)
    return eth + arp


def build_unsolicited_na(mac: bytes, vip: IPv6Address) -> bytes:
    """An NA to all nodes from the VIP itself, hop limit 255, Override set, with our MAC as
    the target link-layer address: neighbours that know the VIP move their entry to us."""
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    option = struct.pack("!BB6s", OPT_TARGET_LLADDR, 1, mac)
    body = struct.pack("!I16s", NA_OVERRIDE, vip.packed) + option
    length = 4 + len(body)
    pseudo = vip.packed + ALL_NODES.packed + struct.pack("!I3xB", length, 58)
    checksum = internet_checksum(pseudo + struct.pack("!BBH", ICMPV6_NA, 0, 0) + body)
    icmp = struct.pack("!BBH", ICMPV6_NA, 0, checksum) + body
    ipv6 = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 255, vip.packed, ALL_NODES.packed)
    return ALL_NODES_MAC + mac + b"\x86\xdd" + ipv6 + icmp



ICMPV6_NS = 135
ARP_REPLY = 2


def build_arp_probe(mac: bytes, vip: IPv4Address) -> bytes:
    """RFC 5227's ARP probe: "who has VIP?" from our MAC with sender address 0.0.0.0, so no
    neighbour learns anything from it; a host that still has the VIP answers it."""
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    eth = BROADCAST + mac + b"\x08\x06"
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, bytes(4), bytes(6), vip.packed)
    return eth + arp


def solicited_node(vip: IPv6Address) -> IPv6Address:
    return IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + vip.packed[13:])


def build_ns_probe(mac: bytes, vip: IPv6Address) -> bytes:
    """The IPv6 counterpart (RFC 4862 §5.4.2, duplicate address detection): an NS for the VIP
    from the unspecified address to its solicited-node group, without a source link-layer
    option; a host that has the VIP answers with an NA to all nodes."""
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    group = solicited_node(vip)
    body = struct.pack("!I16s", 0, vip.packed)
    pseudo = bytes(16) + group.packed + struct.pack("!I3xB", 4 + len(body), 58)
    checksum = internet_checksum(pseudo + struct.pack("!BBH", ICMPV6_NS, 0, 0) + body)
    icmp = struct.pack("!BBH", ICMPV6_NS, 0, checksum) + body
    ipv6 = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 255, bytes(16), group.packed)
    return b"\x33\x33" + group.packed[12:] + mac + b"\x86\xdd" + ipv6 + icmp
