"""VRRPv3 adverts over IPv6 (RFC 5798 §5.1.2), as keepalived 2.2.7 writes and checks them.
Pure: no sockets, no clock.

Layout: a 40-byte IPv6 header (traffic class 0xc0 as keepalived's IPV6_TCLASS, next header 112,
hop limit 255, no extension headers), to ff02::12 (Ethernet 33:33:00:00:00:12) from the
interface's link-local address, or to a unicast peer from the configured source; then::

    ver|type  vrid  priority  count | rsvd(4)+max_adver_int(12, cs)  checksum | count x IPv6

The checksum covers the IPv6 pseudo-header (RFC 8200 §8.1: src, dst, 32-bit length, 3 zero
bytes, next header 112) and the VRRP bytes. The address list is the instance's IPv6 VIPs in
configuration order; keepalived only logs (strict mode: refuses) a first address that is not
link-local (vrrp.c, vrrp_complete_instance), so any order is sent and accepted.

An IPv6 instance's Expect has ``protocol="vrrp3"``, ``vips`` its IPv6 VIPs, ``peers``/``own``
IPv6 addresses (unicast); its ``group`` (IPv4) is unused: the group is :data:`VRRP6_GROUP`.
Receive checks follow sidecar.core.vrrp's order; the hop limit must be 255 unless the advert
is unicast (keepalived checks it for multicast only). With CARP_PEERS any non-multicast
destination is unicast, as keepalived tells them apart: the peer may address any of our
addresses (the kernel delivered it to us). keepalived lets the kernel verify
the checksum (IPV6_CHECKSUM); a bad one is dropped here, counted as ``bad_checksum``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from ipaddress import IPv6Address

from sidecar.core.actions import Params, SendAdvert
from sidecar.core.protocol import (
    CARP_PROTO,
    TTL,
    AdvertError,
    DropReason,
    Expect,
    Received,
    carp_view,
    internet_checksum,
)
from sidecar.core.vrrp import HEADER_LEN, TOS_INTERNETCONTROL, VRRP_ADVERTISEMENT, expected_vips

VRRP6_GROUP = IPv6Address("ff02::12")
IP6_HEADER_LEN = 40
ETH_P_IPV6 = b"\x86\xdd"
_IP6_HEADER = struct.Struct("!IHBB16s16s")


def multicast_mac(group: IPv6Address) -> bytes:
    """Ethernet address of an IPv6 multicast group: 33:33 + its low 32 bits (RFC 2464 §7)."""
    return b"\x33\x33" + group.packed[12:]


def pseudo_header(src: IPv6Address, dst: IPv6Address, length: int) -> bytes:
    return src.packed + dst.packed + length.to_bytes(4, "big") + bytes((0, 0, 0, CARP_PROTO))


def build_vrrp6(vrid: int, priority: int, interval_cs: int, vips: Sequence[IPv6Address], *,
                src: IPv6Address, dst: IPv6Address) -> bytes:
    """The VRRPv3 bytes (no IP header), checksummed over the IPv6 pseudo-header."""
    if not (0 <= vrid <= 255 and 0 <= priority <= 255 and len(vips) <= 255):
        raise ValueError("vrid, priority and the address count are 8-bit fields")
    if not 0 <= interval_cs <= 0x0FFF:
        raise ValueError("VRRPv3's interval is 12 bits of centiseconds")
    head = bytes((0x31, vrid, priority, len(vips))) + interval_cs.to_bytes(2, "big")
    body = b"".join(v.packed for v in vips)
    checksum = internet_checksum(pseudo_header(src, dst, HEADER_LEN + len(body))
                                 + head + b"\0\0" + body)
    return head + checksum.to_bytes(2, "big") + body


def ip6_packet(payload: bytes, src: IPv6Address, dst: IPv6Address, hop_limit: int = TTL) -> bytes:
    """IPv6 header (traffic class 0xc0, flow label 0, next header 112) + ``payload``."""
    first = (6 << 28) | (TOS_INTERNETCONTROL << 20)
    return _IP6_HEADER.pack(first, len(payload), CARP_PROTO, hop_limit, src.packed,
                            dst.packed) + payload


def advert_for(params: Params, send: SendAdvert, *, vrid: int, vips: Sequence[IPv6Address],
               src: IPv6Address, dst: IPv6Address = VRRP6_GROUP) -> bytes:
    """The IPv6 packet the send port sends for ``send``: priority 0 for a handover (resign);
    one call per destination (the checksum covers it)."""
    priority = 0 if send.handover else params.priority
    return ip6_packet(build_vrrp6(vrid, priority, params.advert_int_cs, vips, src=src, dst=dst),
                      src, dst)


def vrrp6_frame(packet: bytes, *, src_mac: bytes, group: IPv6Address = VRRP6_GROUP) -> bytes:
    """The Ethernet frame of a multicast advert, to the group's MAC from ``src_mac`` (chosen
    by the send port)."""
    return multicast_mac(group) + src_mac + ETH_P_IPV6 + packet


def parse_packet6(packet: bytes, expect: Expect) -> Received:
    """Validate an IPv6 packet as a VRRPv3 advert for ``expect``; trailing bytes (Ethernet
    padding) are ignored; anything wrong raises AdvertError."""
    if len(packet) < IP6_HEADER_LEN:
        raise AdvertError(DropReason.SHORT, f"{len(packet)} bytes")
    first, length, next_header, hops, raw_src, raw_dst = _IP6_HEADER.unpack_from(packet)
    if first >> 28 != 6 or IP6_HEADER_LEN + length > len(packet):
        raise AdvertError(DropReason.BAD_IP_HEADER, f"version {first >> 28}, length {length}")
    if next_header != CARP_PROTO:  # keepalived's raw socket sees no extension headers either
        raise AdvertError(DropReason.NOT_CARP, f"next header {next_header}")
    if length < HEADER_LEN:
        raise AdvertError(DropReason.SHORT, f"{length} VRRP bytes")
    src, dst = IPv6Address(raw_src), IPv6Address(raw_dst)
    message = packet[IP6_HEADER_LEN:IP6_HEADER_LEN + length]
    version, vrid = message[0] >> 4, message[1]
    if version != 3:
        raise AdvertError(DropReason.BAD_VERSION, f"version {version}")
    if vrid != expect.vhid:
        raise AdvertError(DropReason.OTHER_VHID, f"VRID {vrid}")
    count = message[3]
    if len(message) != HEADER_LEN + 16 * count:
        raise AdvertError(DropReason.SHORT, f"{len(message)} VRRP bytes, {count} addresses"
                          f" need {HEADER_LEN + 16 * count}")
    # keepalived tells unicast from multicast by the destination alone: a peer may address
    # our global address while we send from the link-local one (no CARP_SRCIP)
    unicast = expect.peers is not None and not dst.is_multicast
    if expect.peers is not None and src not in expect.peers:
        raise AdvertError(DropReason.NOT_A_PEER, f"source {src}")
    if hops != TTL and not (unicast and hops > 0):
        raise AdvertError(DropReason.BAD_TTL, f"hop limit {hops}")
    if message[0] & 0x0F != VRRP_ADVERTISEMENT:
        raise AdvertError(DropReason.BAD_TYPE, f"type {message[0] & 0x0F}")
    if internet_checksum(pseudo_header(src, dst, len(message)) + message):
        raise AdvertError(DropReason.BAD_CHECKSUM)
    if not unicast and (dst != VRRP6_GROUP or not expect.multicast):
        raise AdvertError(DropReason.WRONG_GROUP, f"destination {dst}")
    ours = expected_vips(expect)
    theirs = {IPv6Address(message[i:i + 16]) for i in range(HEADER_LEN, len(message), 16)}
    if count != len(ours) or theirs != set(ours):
        raise AdvertError(DropReason.ADDRESSES, f"{count} addresses, not our {len(ours)}"
                          " (check virtual_ipaddress on the other node)")
    priority = message[2]
    interval_cs = int.from_bytes(message[4:6], "big") & 0x0FFF
    return Received(src=src, dst=dst, ttl=hops, advert=carp_view(vrid, priority, interval_cs),
                    priority=priority, interval_cs=interval_cs)
