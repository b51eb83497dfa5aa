"""Gratuitous ARP exactly as ucarp sends it (docs/protocol.md §1). Pure frame builder."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

BROADCAST = b"\xff" * 6


def build_garp(mac: bytes, vip: IPv4Address) -> bytes:
    """42-byte ARP *request* from our real MAC, sender = target = VIP, target MAC = our MAC."""
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    eth = BROADCAST + mac + b"\x08\x06"
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, vip.packed, mac, vip.packed)
    return eth + arp
