"""CARP advertisement codec, byte-compatible with ucarp 1.5.2. Pure: no sockets, no clock.

Layout and checks follow docs/protocol.md (§1-§4): a 36-byte CARP header carried in
IPv4 protocol 112, Internet checksum over the CARP bytes, and ucarp's HMAC-SHA1 over
``02 01 vhid VIP counter`` keyed with the raw password. ``parse_packet`` runs ucarp's receive
checks in ucarp's order and raises only :class:`AdvertError`, whose ``reason`` is the label the
agent counts drops under.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address

from sidecar.core.actions import Address
from sidecar.core.auth import DEFAULT_GROUP

CARP_PROTO = 112
CARP_VERSION = 2
CARP_ADVERTISEMENT = 1
CARP_AUTHLEN = 7  # counter + HMAC, in 32-bit words
ADVERT_LEN = 36
IP_HEADER_LEN = 20
ETH_HEADER_LEN = 14
TTL = 255
TOS_LOWDELAY = 0x10
BOW_OUT = 255  # advbase == advskew == 255: BSD's "I am leaving" advert; backups take over at once

_HEADER = struct.Struct("!BBBBBBH8s20s")
_IP_HEADER = struct.Struct("!BBHHHBBH4s4s")


class DropReason(StrEnum):
    """Why a received packet was dropped; one Prometheus label value each."""

    SHORT = "short"
    BAD_IP_HEADER = "bad_ip_header"
    NOT_CARP = "not_carp"
    BAD_TTL = "bad_ttl"
    BAD_VERSION = "bad_version"
    BAD_TYPE = "bad_type"
    OTHER_VHID = "other_vhid"
    NOT_A_PEER = "not_a_peer"  # unicast mode: the source is not one of CARP_PEERS
    WRONG_GROUP = "wrong_group"
    BAD_CHECKSUM = "bad_checksum"
    BAD_HMAC = "bad_hmac"
    REPLAY = "replay"  # strict mode: a counter that does not increase (decided by the instance)
    VRRP = "vrrp"  # a VRRPv2/v3 advert (keepalived...) using our VHID as its VRID: same proto/group
    # VRRP instances (sidecar.core.vrrp):
    BAD_AUTH = "bad_auth"  # VRRPv2: another auth type or password
    ADDRESSES = "addresses"  # another configuration of the VRID: its address list (or v2 interval)
    CARP = "carp"  # a CARP advert using our VRID as its VHID


class AdvertError(ValueError):
    """A packet that is not an acceptable advertisement for us. ``reason`` says why."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}{': ' + detail if detail else ''}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Advert:
    """The fields of a CARP advertisement header (HMAC and checksum are derived, not stored)."""

    vhid: int
    advbase: int
    advskew: int
    counter: int
    demote: int = 0
    version: int = CARP_VERSION
    type: int = CARP_ADVERTISEMENT
    authlen: int = CARP_AUTHLEN

    def __post_init__(self) -> None:
        for name in ("vhid", "advbase", "advskew", "demote", "authlen"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise ValueError(f"{name} out of range 0..255: {value}")
        if not 0 <= self.version <= 15 or not 0 <= self.type <= 15:
            raise ValueError("version and type are 4-bit fields")
        if not 0 <= self.counter < 1 << 64:
            raise ValueError("counter is a 64-bit field")


@dataclass(frozen=True, slots=True)
class Received:
    """An authenticated advertisement with the IP fields the state machine needs."""

    src: Address
    dst: Address
    ttl: int  # IPv6: the hop limit
    advert: Advert
    by_next_key: bool = False  # authenticated by Expect.next_key (a rotation under way)
    # VRRP (sidecar.core.vrrp): the advert's fields; ``advert`` is then a view (carp_view)
    priority: int | None = None
    interval_cs: int | None = None


@dataclass(frozen=True, slots=True)
class Expect:
    """What this node accepts: its vhid, group address, and the HMAC inputs (key and VIP)."""

    vhid: int
    key: bytes = field(repr=False)
    vip: IPv4Address
    group: IPv4Address = DEFAULT_GROUP
    # Unicast mode (CARP_PEERS): only these sources; adverts to ``own`` are accepted too, and
    # their TTL may have been decremented by routers (FreeBSD's rule for unicast peers).
    peers: frozenset[Address] | None = None
    own: Address | None = None
    multicast: bool = True  # adverts to the group are accepted (not in unicast-only mode)
    strict: bool = False  # the HMAC covers the whole header and the source (strict_hmac)
    # CARP_PASS_NEXT: a second key accepted (never sent with) while a password is rotated
    next_key: bytes | None = field(default=None, repr=False)
    # VRRP (sidecar.core.vrrp): "vrrp2"/"vrrp3"; ``key`` is then VRRPv2's raw password (b"":
    # none), ``vips`` the IPv4 address list adverts carry (empty: ``vip`` alone), and a v2
    # advert with another interval than ``advert_int_cs`` is dropped (keepalived's check)
    protocol: str = "carp"
    vips: tuple[Address, ...] = ()  # an IPv6 instance's: its IPv6 VIPs
    advert_int_cs: int = 100
    # a VRRPv3 instance over IPv6 (sidecar.core.vrrp6): the instance, never the packet's
    # version nibble, picks the parser (an IPv4 frame saying 6 stays bad_ip_header for CARP)
    ipv6: bool = False


def carp_view(vrid: int, priority: int, interval_cs: int) -> Advert:
    """A VRRP advert as the CARP fields the peer table keeps: its interval as advbase +
    advskew/256, and priority 0 (resign) as the bow-out (255, 255) it means."""
    if priority == 0:
        return Advert(vhid=vrid, advbase=BOW_OUT, advskew=BOW_OUT, counter=0)
    advbase = min(interval_cs // 100, 255)
    return Advert(vhid=vrid, advbase=advbase, advskew=(interval_cs % 100) * 256 // 100, counter=0)


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum; 0 when computed over data that includes a valid checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def compute_hmac(key: bytes, vhid: int, vip: IPv4Address, counter_bytes: bytes) -> bytes:
    """ucarp's digest: HMAC-SHA1(key, 02 01 vhid VIP counter). advbase/advskew are not covered."""
    msg = bytes((CARP_VERSION, CARP_ADVERTISEMENT, vhid & 0xFF)) + vip.packed + counter_bytes
    return hmac.new(key, msg, hashlib.sha1).digest()


STRICT_TAG = b"carp-sidecar strict v1"


def strict_hmac(key: bytes, header: bytes, counter_bytes: bytes, vip: IPv4Address,
                src: IPv4Address) -> bytes:
    """Strict mode's digest (groups of carp-sidecar nodes only): HMAC-SHA1 over every header
    field (version, type, vhid, advskew, authlen, demote, advbase — the 6 bytes before the
    checksum), the counter, the VIP and the sender's address. ucarp's digest leaves advbase,
    advskew and the source out, so a replay from anywhere with any skew still authenticates."""
    return hmac.new(key, STRICT_TAG + header + counter_bytes + vip.packed + src.packed,
                    hashlib.sha1).digest()


def build_advert(advert: Advert, key: bytes, vip: IPv4Address,
                 strict_src: IPv4Address | None = None) -> bytes:
    """The 36 CARP bytes of ``advert``, with its HMAC (strict mode's when ``strict_src`` is the
    sender's address) and checksum."""
    counter = advert.counter.to_bytes(8, "big")
    first = (advert.version << 4) | advert.type
    fields = (first, advert.vhid, advert.advskew, advert.authlen, advert.demote, advert.advbase)
    if strict_src is None:
        md = compute_hmac(key, advert.vhid, vip, counter)
    else:
        md = strict_hmac(key, bytes(fields), counter, vip, strict_src)
    unsummed = _HEADER.pack(*fields, 0, counter, md)
    return _HEADER.pack(*fields, internet_checksum(unsummed), counter, md)


def decode_advert(payload: bytes) -> Advert:
    """Header fields of 36+ CARP bytes, without checking checksum or HMAC."""
    if len(payload) < ADVERT_LEN:
        raise AdvertError(DropReason.SHORT, f"{len(payload)} CARP bytes")
    first, vhid, advskew, authlen, demote, advbase, _ck, counter, _md = _HEADER.unpack_from(payload)
    return Advert(
        vhid=vhid,
        advbase=advbase,
        advskew=advskew,
        counter=int.from_bytes(counter, "big"),
        demote=demote,
        version=first >> 4,
        type=first & 0x0F,
        authlen=authlen,
    )


def build_ip_packet(
    advert: Advert, *, key: bytes, vip: IPv4Address, src: IPv4Address,
    dst: IPv4Address = DEFAULT_GROUP, ident: int = 0, ttl: int = TTL, strict: bool = False,
) -> bytes:
    """IPv4 header (TOS 0x10, DF, TTL 255, proto 112) + advert, as ucarp writes it."""
    payload = build_advert(advert, key, vip, strict_src=src if strict else None)
    header = _IP_HEADER.pack(
        0x45, TOS_LOWDELAY, IP_HEADER_LEN + len(payload), ident & 0xFFFF, 0x4000,
        ttl, CARP_PROTO, 0, src.packed, dst.packed,
    )
    checksum = internet_checksum(header)
    return header[:10] + checksum.to_bytes(2, "big") + header[12:] + payload


def group_mac(group: IPv4Address) -> bytes:
    """Ethernet multicast address of an IPv4 group: 01:00:5e + low 23 bits."""
    low = int(group) & 0x7FFFFF
    return b"\x01\x00\x5e" + low.to_bytes(3, "big")


def advert_source_mac(vhid: int) -> bytes:
    """ucarp's fixed advert source MAC 00:00:5e:00:00:<vhid> (not the VRRP/BSD 00:00:5e:00:01:xx)."""
    return bytes((0, 0, 0x5E, 0, 0, vhid & 0xFF))


def build_frame(ip_packet: bytes, *, vhid: int, group: IPv4Address, broadcast: bool) -> bytes:
    """Ethernet frame around an advert: to the group MAC (or broadcast with nomcast)."""
    dst = b"\xff" * 6 if broadcast else group_mac(group)
    return dst + advert_source_mac(vhid) + b"\x08\x00" + ip_packet


VRRP_AUTH_LEN = 8  # VRRPv2's authentication data after the addresses (RFC 3768)


def vrrp_version(packet: bytes, ihl: int) -> int | None:
    """2 or 3 if the protocol-112 packet is a VRRP advert for IPv4 (RFC 3768 / RFC 5798), else
    None. CARP is version 2 as well: what tells them apart is the length, which in VRRP follows
    from the address count (byte 3, where CARP has its authlen 7: a VRRPv2 length of 44, never
    CARP's 36), and VRRPv3's checksum, which covers a pseudo-header that CARP's does not."""
    total = int.from_bytes(packet[2:4], "big")  # the IP length: Ethernet padding excluded
    if total > len(packet) or total < ihl + 8:
        return None
    first, count = packet[ihl], packet[ihl + 3]
    version, kind = first >> 4, first & 0x0F
    if kind != 1 or version not in (2, 3):
        return None
    expected = 8 + 4 * count + (VRRP_AUTH_LEN if version == 2 else 0)
    if total - ihl != expected:
        return None
    message = packet[ihl:total]
    if version == 3:  # RFC 5798 §5.2.8: the checksum covers an IPv4 pseudo-header too
        message = packet[12:20] + bytes((0, CARP_PROTO)) + len(message).to_bytes(2, "big") + message
    if internet_checksum(message):
        return None
    return version


def parse_packet(packet: bytes, expect: Expect) -> Received:
    """Validate an IPv4 packet as an advert for us, in ucarp's order (docs/protocol.md §4).

    Trailing bytes (Ethernet padding) are ignored; anything wrong raises AdvertError.
    """
    if len(packet) < IP_HEADER_LEN:
        raise AdvertError(DropReason.SHORT, f"{len(packet)} bytes")
    vihl, _tos, _tlen, _id, _frag, ttl, proto, _ck, src, dst = _IP_HEADER.unpack_from(packet)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < IP_HEADER_LEN:
        raise AdvertError(DropReason.BAD_IP_HEADER, f"version/IHL byte {vihl:#04x}")
    if proto != CARP_PROTO:
        raise AdvertError(DropReason.NOT_CARP, f"IP protocol {proto}")
    source, destination = IPv4Address(src), IPv4Address(dst)
    vrrp = vrrp_version(packet, ihl) if len(packet) >= ihl + 8 else None
    if vrrp is not None:
        vrid = packet[ihl + 1]
        if vrid != expect.vhid:
            raise AdvertError(DropReason.OTHER_VHID, f"VRRP VRID {vrid}")
        raise AdvertError(DropReason.VRRP, f"VRRPv{vrrp} router {source}, VRID {vrid}")
    if len(packet) < ihl + ADVERT_LEN:
        raise AdvertError(DropReason.SHORT, f"{len(packet)} bytes, need {ihl + ADVERT_LEN}")
    unicast = expect.own is not None and destination == expect.own
    if expect.peers is not None and source not in expect.peers:
        raise AdvertError(DropReason.NOT_A_PEER, f"source {source}")
    if ttl != TTL and not (unicast and ttl > 0):
        raise AdvertError(DropReason.BAD_TTL, f"TTL {ttl}")
    payload = packet[ihl : ihl + ADVERT_LEN]
    advert = decode_advert(payload)
    if advert.version != CARP_VERSION:
        raise AdvertError(DropReason.BAD_VERSION, f"version {advert.version}")
    if advert.vhid != expect.vhid:
        raise AdvertError(DropReason.OTHER_VHID, f"vhid {advert.vhid}")
    if not unicast and (destination != expect.group or not expect.multicast):
        raise AdvertError(DropReason.WRONG_GROUP, f"destination {destination}")
    if internet_checksum(packet[:ihl]) or internet_checksum(payload):
        raise AdvertError(DropReason.BAD_CHECKSUM)
    if advert.type != CARP_ADVERTISEMENT:
        raise AdvertError(DropReason.BAD_TYPE, f"type {advert.type}")
    by_next = False
    if not _authentic(expect.key, expect, payload, source):
        by_next = expect.next_key is not None and _authentic(expect.next_key, expect, payload,
                                                              source)
        if not by_next:
            # Never include digests: they are derived from the secret.
            raise AdvertError(DropReason.BAD_HMAC, "check vhid, password and virtual IP address")
    return Received(src=source, dst=destination, ttl=ttl, advert=advert, by_next_key=by_next)


def _authentic(key: bytes, expect: Expect, payload: bytes, source: IPv4Address) -> bool:
    if expect.strict:
        expected = strict_hmac(key, payload[:6], payload[8:16], expect.vip, source)
    else:
        expected = compute_hmac(key, payload[1], expect.vip, payload[8:16])
    return hmac.compare_digest(expected, payload[16:36])
