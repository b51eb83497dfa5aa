"""VRRPv2 (RFC 3768) and VRRPv3 (RFC 5798) adverts over IPv4, as keepalived 2.2.7 writes and
checks them. Pure: no sockets, no clock.

Layout (after a 20-byte IPv4 header, protocol 112, TTL 255, to 224.0.0.18 or a unicast peer)::

    v2: ver|type  vrid  priority  count | auth_type  adver_int(s)  checksum | count x IPv4 | 8 auth
    v3: ver|type  vrid  priority  count | rsvd(4)+max_adver_int(12, cs)  checksum | count x IPv4

v2's checksum covers the VRRP bytes only; v3's also an IPv4 pseudo-header (src, dst, 0, 112,
length). v2's auth type 0 carries 8 zero bytes, type 1 (RFC 2338's simple text password) the
password padded with NULs to 8 bytes; type 2 (IPsec AH) is not supported (nor carried by the
importer).

The interface the runtime uses (VRUN):

- ``Params(protocol="vrrp2"|"vrrp3", priority=1..255, advert_int_cs=...)`` (v2: a multiple of
  100, at most 25500; v3: 1..4095); advbase/advskew stay at their defaults (unused). The
  machine and session are driven exactly as for CARP; their timers read these.
- ``Expect(vhid=VRID, key=<VRRPv2 raw password, b"" for none or v3>, vip=<first IPv4 VIP>,
  group=..., peers/own/multicast as for CARP, protocol=<as Params>, vips=<every IPv4 VIP, in
  configuration order>, advert_int_cs=<as Params>)``; strict/next_key stay off.
  ``Session.receive`` then parses VRRP and yields ``Accepted(..., priority=, interval=<s>)``
  (``handover`` for priority 0) or ``Dropped`` with the reasons below.
- ``parse_packet(packet: bytes, expect: protocol.Expect) -> protocol.Received`` for an Expect
  with ``protocol`` "vrrp2"/"vrrp3" (``sidecar.core.screen.screen`` calls it): raises only
  ``AdvertError``. The Received's ``priority`` and ``interval_cs`` are set; its ``advert`` is a
  CARP-shaped view for the peer table (see :func:`carp_view`), its counter 0.
- ``advert_for(params, send, *, vrid, vips, password, src, dst, ident=0) -> bytes``: the IPv4
  packet (header included) of a :class:`~sidecar.core.actions.SendAdvert` for a VRRP instance;
  ``send.handover`` -> priority 0 (resign). One call per destination (the group, each peer):
  v3's checksum covers the destination.
- ``vrrp_frame(packet, *, src_mac, group=VRRP_GROUP) -> bytes``: the Ethernet frame around it,
  from the interface's own MAC (keepalived's default; no virtual MAC), to the group's MAC.

Receive checks, in keepalived's order (vrrp_check_packet) where it matters for the reason
counted: IP header, protocol, a CARP advert on our VRID (``carp``: 36 bytes, version 2, authlen
7 where VRRP has its count), version as configured (``bad_version``), VRID, length (exactly as
the count says; Ethernet padding ignored), the source among listed peers, TTL 255 (any TTL on
a unicast advert: keepalived checks it for multicast only), v2's auth type and password
(``bad_auth``), v2's interval equal to ours, type, checksum, destination (the group, or our
own address from a listed peer), then the address list. keepalived drops a v2 advert whose
interval differs from its own ("to prevent concurrent VRID running") and one whose address
list is not exactly its own (in any order); both are adverts of another configuration of the
VRID, counted under ``addresses``.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address

from sidecar.core.actions import Address, Params, SendAdvert
from sidecar.core.protocol import (
    ADVERT_LEN,
    CARP_AUTHLEN,
    CARP_PROTO,
    CARP_VERSION,
    IP_HEADER_LEN,
    TTL,
    AdvertError,
    DropReason,
    Expect,
    Received,
    carp_view,
    group_mac,
    internet_checksum,
)

VRRP_GROUP = IPv4Address("224.0.0.18")
VRRP_ADVERTISEMENT = 1
AUTH_NONE, AUTH_PASS = 0, 1
AUTH_LEN = 8  # v2's authentication data
PASSWORD_MAX = 8
HEADER_LEN = 8
TOS_INTERNETCONTROL = 0xC0  # what keepalived sets on its adverts
VERSIONS = {"vrrp2": 2, "vrrp3": 3}
# keepalived drops a v2 advert whose interval differs from its own: another configuration
INTERVAL_MISMATCH = DropReason.ADDRESSES

_IP_HEADER = struct.Struct("!BBHHHBBH4s4s")


def password_bytes(password: bytes) -> bytes:
    """v2's auth data for ``password``: at most 8 bytes, NUL-padded (keepalived's)."""
    if len(password) > PASSWORD_MAX:
        raise ValueError(f"VRRPv2 password longer than {PASSWORD_MAX} bytes")
    return password.ljust(AUTH_LEN, b"\0")


def pseudo_header(src: IPv4Address, dst: IPv4Address, length: int) -> bytes:
    return src.packed + dst.packed + bytes((0, CARP_PROTO)) + length.to_bytes(2, "big")


def build_vrrp(version: int, vrid: int, priority: int, interval_cs: int,
               vips: Sequence[IPv4Address], *, password: bytes = b"",
               src: IPv4Address | None = None, dst: IPv4Address | None = None) -> bytes:
    """The VRRP bytes (no IP header). v2: ``interval_cs`` a multiple of 100 (whole seconds),
    auth type 1 if ``password``; v3: ``src``/``dst`` are needed for the checksum."""
    if not (0 <= vrid <= 255 and 0 <= priority <= 255 and len(vips) <= 255):
        raise ValueError("vrid, priority and the address count are 8-bit fields")
    addresses = b"".join(v.packed for v in vips)
    if version == 2:
        if interval_cs % 100 or not 0 <= interval_cs // 100 <= 255:
            raise ValueError("VRRPv2's interval is whole seconds 0..255")
        auth = AUTH_PASS if password else AUTH_NONE
        head = bytes((0x21, vrid, priority, len(vips), auth, interval_cs // 100))
        body = addresses + password_bytes(password)
        pseudo = b""
    elif version == 3:
        if password:
            raise ValueError("VRRPv3 has no authentication (RFC 5798)")
        if not 0 <= interval_cs <= 0x0FFF:
            raise ValueError("VRRPv3's interval is 12 bits of centiseconds")
        if src is None or dst is None:
            raise ValueError("VRRPv3's checksum covers the source and destination")
        head = bytes((0x31, vrid, priority, len(vips))) + interval_cs.to_bytes(2, "big")
        body = addresses
        pseudo = pseudo_header(src, dst, HEADER_LEN + len(body))
    else:
        raise ValueError(f"VRRP version {version}")
    checksum = internet_checksum(pseudo + head + b"\0\0" + body)
    return head + checksum.to_bytes(2, "big") + body


def ip_packet(payload: bytes, src: IPv4Address, dst: IPv4Address, ident: int = 0,
              ttl: int = TTL) -> bytes:
    """IPv4 header (TOS 0xc0, no options, TTL 255, protocol 112) + ``payload``."""
    header = _IP_HEADER.pack(0x45, TOS_INTERNETCONTROL, IP_HEADER_LEN + len(payload),
                             ident & 0xFFFF, 0, ttl, CARP_PROTO, 0, src.packed, dst.packed)
    checksum = internet_checksum(header)
    return header[:10] + checksum.to_bytes(2, "big") + header[12:] + payload


def advert_for(params: Params, send: SendAdvert, *, vrid: int, vips: Sequence[IPv4Address],
               password: bytes, src: IPv4Address, dst: IPv4Address = VRRP_GROUP,
               ident: int = 0) -> bytes:
    """The IPv4 packet the send port sends for ``send`` on a VRRP instance: our priority and
    interval (``params``), priority 0 for a handover (the resign of a graceful stop, a
    step-down or a demotion), ``vips`` the instance's IPv4 VIPs in configuration order (IPv6
    VIPs are not carried: keepalived puts them in a separate IPv6 instance), ``password``
    VRRPv2's raw password (b"": auth type 0). ``send``'s advbase/advskew/counter are CARP's
    and ignored."""
    version = VERSIONS[params.protocol]
    priority = 0 if send.handover else params.priority
    payload = build_vrrp(version, vrid, priority, params.advert_int_cs, vips,
                         password=password, src=src, dst=dst)
    return ip_packet(payload, src, dst, ident)


def vrrp_frame(packet: bytes, *, src_mac: bytes, group: IPv4Address = VRRP_GROUP) -> bytes:
    """The Ethernet frame of a multicast advert: from ``src_mac`` (the interface's), to the
    group's MAC (01:00:5e:00:00:12 for 224.0.0.18)."""
    return group_mac(group) + src_mac + b"\x08\x00" + packet


def parse_packet(packet: bytes, expect: Expect) -> Received:
    """Validate an IPv4 packet as a VRRP advert for ``expect`` (``protocol`` vrrp2/vrrp3);
    trailing bytes (Ethernet padding) are ignored; anything wrong raises AdvertError."""
    if len(packet) < IP_HEADER_LEN:
        raise AdvertError(DropReason.SHORT, f"{len(packet)} bytes")
    vihl, _tos, total, _id, _frag, ttl, proto, _ck, raw_src, raw_dst = \
        _IP_HEADER.unpack_from(packet)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < IP_HEADER_LEN or total < ihl or total > len(packet):
        raise AdvertError(DropReason.BAD_IP_HEADER, f"version/IHL {vihl:#04x}, length {total}")
    if proto != CARP_PROTO:
        raise AdvertError(DropReason.NOT_CARP, f"IP protocol {proto}")
    if total < ihl + HEADER_LEN:
        raise AdvertError(DropReason.SHORT, f"{total - ihl} VRRP bytes")
    src, dst = IPv4Address(raw_src), IPv4Address(raw_dst)
    message = packet[ihl:total]
    version, vrid = message[0] >> 4, message[1]
    if version == CARP_VERSION and message[3] == CARP_AUTHLEN and len(message) == ADVERT_LEN:
        # CARP's 36 bytes: as VRRPv2 a count of 7 would need 44
        if vrid != expect.vhid:
            raise AdvertError(DropReason.OTHER_VHID, f"CARP vhid {vrid}")
        raise AdvertError(DropReason.CARP, f"CARP advert from {src} on our VRID")
    if version != VERSIONS[expect.protocol]:
        raise AdvertError(DropReason.BAD_VERSION, f"version {version}")
    if vrid != expect.vhid:
        raise AdvertError(DropReason.OTHER_VHID, f"VRID {vrid}")
    _check_fields(message, version, expect, src, dst, ttl)
    return _received(message, version, src, dst, ttl)


def _check_fields(message: bytes, version: int, expect: Expect, src: IPv4Address,
                  dst: IPv4Address, ttl: int) -> None:
    count = message[3]
    length = HEADER_LEN + 4 * count + (AUTH_LEN if version == 2 else 0)
    if len(message) != length:
        raise AdvertError(DropReason.SHORT, f"{len(message)} VRRP bytes, {count} addresses"
                          f" need {length}")
    unicast = expect.own is not None and dst == expect.own
    if expect.peers is not None and src not in expect.peers:
        raise AdvertError(DropReason.NOT_A_PEER, f"source {src}")
    if ttl != TTL and not (unicast and ttl > 0):
        raise AdvertError(DropReason.BAD_TTL, f"TTL {ttl}")
    if version == 2:
        _check_v2(message, expect)
    if message[0] & 0x0F != VRRP_ADVERTISEMENT:
        raise AdvertError(DropReason.BAD_TYPE, f"type {message[0] & 0x0F}")
    if not _checksum_ok(message, version, src, dst, unicast):
        raise AdvertError(DropReason.BAD_CHECKSUM)
    if not unicast and (dst != expect.group or not expect.multicast):
        raise AdvertError(DropReason.WRONG_GROUP, f"destination {dst}")
    ours = expected_vips(expect)
    theirs = {IPv4Address(message[i:i + 4]) for i in range(HEADER_LEN, HEADER_LEN + 4 * count, 4)}
    if count != len(ours) or theirs != set(ours):
        raise AdvertError(DropReason.ADDRESSES, f"{count} addresses, not our {len(ours)}"
                          " (check virtual_ipaddress on the other node)")


def _check_v2(message: bytes, expect: Expect) -> None:
    auth, interval = message[4], message[5]
    if auth != (AUTH_PASS if expect.key else AUTH_NONE):
        raise AdvertError(DropReason.BAD_AUTH, f"auth type {auth}")
    # a longer key never reaches here (config refuses it); keepalived would use its first 8
    if expect.key and not hmac.compare_digest(message[-AUTH_LEN:],
                                              password_bytes(expect.key[:PASSWORD_MAX])):
        raise AdvertError(DropReason.BAD_AUTH, "wrong password")  # never the password itself
    if interval * 100 != expect.advert_int_cs:
        raise AdvertError(INTERVAL_MISMATCH, f"advert_int {interval} s, ours "
                          f"{expect.advert_int_cs / 100:g} s")


def _checksum_ok(message: bytes, version: int, src: IPv4Address, dst: IPv4Address,
                 unicast: bool) -> bool:
    if version == 2:
        return internet_checksum(message) == 0
    if internet_checksum(pseudo_header(src, dst, len(message)) + message) == 0:
        return True
    # keepalived before 2.0.x summed unicast v3 adverts with the group as destination; 2.2.7
    # accepts that too (unicast_chksum_compat "auto"), and so do we
    return unicast and internet_checksum(pseudo_header(src, VRRP_GROUP, len(message))
                                         + message) == 0


def expected_vips(expect: Expect) -> tuple[Address, ...]:
    """The address list our adverts carry and peers' must: Expect.vips, else its one ``vip``."""
    return expect.vips or ((expect.vip,) if int(expect.vip) else ())


def _received(message: bytes, version: int, src: IPv4Address, dst: IPv4Address,
              ttl: int) -> Received:
    priority = message[2]
    interval_cs = message[5] * 100 if version == 2 else int.from_bytes(message[4:6], "big") & 0x0FFF
    return Received(src=src, dst=dst, ttl=ttl, advert=carp_view(message[1], priority, interval_cs),
                    priority=priority, interval_cs=interval_cs)
