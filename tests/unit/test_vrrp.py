"""The VRRPv2/v3 codec (sidecar.core.vrrp) against packets laid out by hand from RFC 3768 §5 /
RFC 5798 §5 and against scapy's VRRP/VRRPv3 layers as an independent encoder and decoder."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.vrrp import VRRP, VRRPv3

from sidecar.core.actions import Params, SendAdvert
from sidecar.core.auth import carp_key
from sidecar.core.outputs import Accepted, Dropped
from sidecar.core.protocol import (
    Advert,
    AdvertError,
    DropReason,
    Expect,
    build_ip_packet,
    internet_checksum,
)
from sidecar.core.protocol import parse_packet as parse_carp
from sidecar.core.screen import screen
from sidecar.core.vrrp import (
    VRRP_GROUP,
    advert_for,
    build_vrrp,
    ip_packet,
    parse_packet,
    vrrp_frame,
)

SRC = IPv4Address("10.0.0.1")
OWN = IPv4Address("10.0.0.2")
VIP = IPv4Address("10.0.0.100")
VIP2 = IPv4Address("10.0.0.101")
V2 = Expect(vhid=5, key=b"", vip=VIP, protocol="vrrp2", vips=(VIP,), advert_int_cs=100)
V3 = dataclasses.replace(V2, protocol="vrrp3")

# RFC 3768 §5.1: vers|type, VRID, priority, count | auth type, adver int, checksum | IPv4... |
# 8 bytes auth data. VRID 5, priority 100, 1 address, auth 0, 1 s, 10.0.0.100. The checksum
# by hand: 0x2105 + 0x6401 + 0x0001 + 0x0a00 + 0x0064 = 0x8f6b, complemented 0x7094.
HAND_V2 = bytes.fromhex("21056401" "00017094" "0a000064" "0000000000000000")
# RFC 5798 §5.1: vers|type, VRID, priority, count | rsvd + max adver int (cs), checksum | IPv4.
# Pseudo-header 10.0.0.1 -> 224.0.0.18, 0, 112, length 12: 0x0a00 + 0x0001 + 0xe000 + 0x0012
# + 0x0070 + 0x000c + 0x3105 + 0x6401 + 0x0064 + 0x0a00 + 0x0064 = 0x18a5d -> 0x8a5e -> 0x75a1.
HAND_V3 = bytes.fromhex("31056401" "006475a1" "0a000064")


def packet_of(payload: bytes, src: IPv4Address = SRC, dst: IPv4Address = VRRP_GROUP,
              ttl: int = 255) -> bytes:
    return ip_packet(payload, src, dst, ttl=ttl)


def v3_params(**kw: object) -> Params:
    return Params(protocol="vrrp3", priority=100, advert_int_cs=100, **kw)  # type: ignore[arg-type]


# ---- against the RFC layouts ----
def test_v2_built_as_the_rfc_lays_it_out() -> None:
    assert build_vrrp(2, 5, 100, 100, [VIP]) == HAND_V2
    assert internet_checksum(HAND_V2) == 0


def test_v3_built_as_the_rfc_lays_it_out_with_the_pseudo_header() -> None:
    assert build_vrrp(3, 5, 100, 100, [VIP], src=SRC, dst=VRRP_GROUP) == HAND_V3


def test_hand_made_packets_parse() -> None:
    r2 = parse_packet(packet_of(HAND_V2), V2)
    assert (r2.src, r2.priority, r2.interval_cs, r2.ttl) == (SRC, 100, 100, 255)
    r3 = parse_packet(packet_of(HAND_V3), V3)
    assert (r3.priority, r3.interval_cs) == (100, 100)


def test_v2_simple_password_is_nul_padded_in_the_auth_data() -> None:
    payload = build_vrrp(2, 5, 100, 100, [VIP], password=b"secret")
    assert payload[4] == 1 and payload[-8:] == b"secret\0\0"
    assert internet_checksum(payload) == 0
    with pytest.raises(ValueError):
        build_vrrp(2, 5, 100, 100, [VIP], password=b"ninechars")
    with pytest.raises(ValueError):
        build_vrrp(3, 5, 100, 100, [VIP], password=b"x", src=SRC, dst=VRRP_GROUP)


# ---- against scapy ----
@pytest.fixture
def scapy_vrrp() -> Iterator[None]:
    """scapy.contrib.carp (loaded by `watch`'s tests in the same worker) unbinds VRRP from IP
    protocol 112: bound again for these tests, CARP's binding left as it was afterwards."""
    from scapy.packet import bind_layers, split_layers

    carp = "scapy.contrib.carp" in sys.modules
    if carp:
        from scapy.contrib.carp import CARP

        split_layers(IP, CARP, proto=112, dst="224.0.0.18")
    bind_layers(IP, VRRP, proto=112)
    bind_layers(IP, VRRPv3, proto=112)
    yield
    if carp:
        split_layers(IP, VRRP, proto=112)
        split_layers(IP, VRRPv3, proto=112)
        bind_layers(IP, CARP, proto=112, dst="224.0.0.18")


@pytest.mark.usefixtures("scapy_vrrp")
def test_scapy_v2_parses_here() -> None:
    for auth, pw, key in ((0, b"\0" * 8, b""), (1, b"pass\0\0\0\0", b"pass")):
        pkt = bytes(IP(src=str(SRC), dst="224.0.0.18", ttl=255, id=7)
                    / VRRP(vrid=5, priority=150, ipcount=2, addrlist=[str(VIP), str(VIP2)],
                           adv=3, authtype=auth, auth1=int.from_bytes(pw[:4], "big"),
                           auth2=int.from_bytes(pw[4:], "big")))
        expect = dataclasses.replace(V2, key=key, vips=(VIP2, VIP), advert_int_cs=300)
        r = parse_packet(pkt, expect)
        assert (r.priority, r.interval_cs, r.advert.vhid) == (150, 300, 5)


@pytest.mark.usefixtures("scapy_vrrp")
def test_scapy_v3_parses_here_including_padding() -> None:
    pkt = bytes(IP(src=str(SRC), dst="224.0.0.18", ttl=255)
                / VRRPv3(vrid=5, priority=0, ipcount=1, addrlist=[str(VIP)], adv=25))
    r = parse_packet(pkt + b"\0" * 14, V3)  # Ethernet padding to 60 bytes
    assert (r.priority, r.interval_cs) == (0, 25)
    assert (r.advert.advbase, r.advert.advskew) == (255, 255)  # the peer table's bow-out


@pytest.mark.usefixtures("scapy_vrrp")
def test_ours_decoded_by_scapy() -> None:
    for protocol, cls in (("vrrp2", VRRP), ("vrrp3", VRRPv3)):
        params = Params(protocol=protocol, priority=200, advert_int_cs=200)
        raw = advert_for(params, SendAdvert(1, 0, 7), vrid=9, vips=[VIP, VIP2],
                         password=b"pw" if protocol == "vrrp2" else b"", src=SRC)
        ip = IP(raw)
        layer = ip[cls]
        assert (layer.version, layer.vrid, layer.priority, layer.ipcount) == (
            int(protocol[-1]), 9, 200, 2)
        assert layer.addrlist == [str(VIP), str(VIP2)]
        assert layer.adv == (2 if protocol == "vrrp2" else 200)
        assert (ip.ttl, ip.proto, ip.dst) == (255, 112, "224.0.0.18")
        again = IP(raw)
        del again.chksum
        del again[cls].chksum
        assert bytes(again) == raw  # scapy computes the same checksums (v3: pseudo-header)
        if protocol == "vrrp2":
            assert (layer.authtype, layer.auth1.to_bytes(4, "big")) == (1, b"pw\0\0")


def test_handover_is_priority_zero_and_the_destination_is_summed() -> None:
    params = v3_params()
    bye = advert_for(params, SendAdvert(255, 255, 1, handover=True), vrid=5, vips=[VIP],
                     password=b"", src=SRC)
    assert parse_packet(bye, V3).priority == 0
    peer = IPv4Address("10.0.0.2")
    uni = advert_for(params, SendAdvert(1, 0, 1), vrid=5, vips=[VIP], password=b"", src=SRC,
                     dst=peer)
    r = parse_packet(uni, dataclasses.replace(V3, peers=frozenset({SRC}), own=peer,
                                              multicast=False))
    assert r.dst == peer and uni[20:] != bye[20:]
    frame = vrrp_frame(bye, src_mac=b"\x02\0\0\0\0\1")
    assert frame[:12] == bytes.fromhex("01005e000012" "020000000001") and frame[14:] == bye


# ---- what is dropped, and why ----
def _reason(packet: bytes, expect: Expect) -> DropReason:
    with pytest.raises(AdvertError) as e:
        parse_packet(packet, expect)
    return e.value.reason


def test_drops_name_their_reason() -> None:
    good = packet_of(HAND_V2)
    assert _reason(good, dataclasses.replace(V2, key=b"pw")) is DropReason.BAD_AUTH
    pw = packet_of(build_vrrp(2, 5, 100, 100, [VIP], password=b"pw"))
    assert _reason(pw, dataclasses.replace(V2, key=b"other")) is DropReason.BAD_AUTH
    assert _reason(pw, V2) is DropReason.BAD_AUTH  # a password where we expect none
    assert _reason(good, dataclasses.replace(V2, vips=(VIP2,))) is DropReason.ADDRESSES
    assert _reason(good, dataclasses.replace(V2, vips=(VIP, VIP2))) is DropReason.ADDRESSES
    assert _reason(good, dataclasses.replace(V2, advert_int_cs=200)) is DropReason.ADDRESSES
    assert _reason(good, V3) is DropReason.BAD_VERSION
    assert _reason(good, dataclasses.replace(V2, vhid=6)) is DropReason.OTHER_VHID
    assert _reason(packet_of(HAND_V2, ttl=64), V2) is DropReason.BAD_TTL
    assert _reason(packet_of(HAND_V2, dst=IPv4Address("224.0.0.19")), V2) \
        is DropReason.WRONG_GROUP
    broken = bytearray(good)
    broken[20 + 2] = 99  # the priority, under the checksum
    assert _reason(bytes(broken), V2) is DropReason.BAD_CHECKSUM
    assert _reason(good[:30], V2) is DropReason.BAD_IP_HEADER  # its length says 40
    assert _reason(good, dataclasses.replace(V2, peers=frozenset({OWN}))) is DropReason.NOT_A_PEER
    carp = build_ip_packet(Advert(vhid=5, advbase=1, advskew=0, counter=1), key=carp_key("x"),
                           vip=VIP, src=SRC)
    assert _reason(carp, V2) is DropReason.CARP
    assert _reason(carp, dataclasses.replace(V2, vhid=6)) is DropReason.OTHER_VHID


def test_a_carp_instance_still_drops_vrrp() -> None:
    carp = Expect(vhid=5, key=carp_key("x"), vip=VIP)
    for payload in (HAND_V2, HAND_V3):
        with pytest.raises(AdvertError) as e:
            parse_carp(packet_of(payload), carp)
        assert e.value.reason is DropReason.VRRP


def test_unicast_ttl_and_keepalived_s_old_unicast_checksum() -> None:
    unicast = dataclasses.replace(V3, peers=frozenset({SRC}), own=OWN, multicast=False)
    # keepalived < 2.0 summed unicast v3 adverts as if sent to the group; 2.2.7 accepts both
    old_style = build_vrrp(3, 5, 100, 100, [VIP], src=SRC, dst=VRRP_GROUP)
    r = parse_packet(packet_of(old_style, dst=OWN, ttl=61), unicast)
    assert r.ttl == 61
    assert _reason(packet_of(HAND_V3), unicast) is DropReason.WRONG_GROUP


def test_screen_reports_priority_and_interval() -> None:
    v = screen(packet_of(build_vrrp(3, 5, 0, 50, [VIP], src=SRC, dst=VRRP_GROUP)), V3, None, 0.0)
    (accepted,) = v.outputs
    assert isinstance(accepted, Accepted)
    assert (accepted.priority, accepted.interval, accepted.handover) == (0, 0.5, True)
    bad = screen(packet_of(HAND_V2), dataclasses.replace(V2, key=b"pw"), None, 0.0)
    assert isinstance(bad.outputs[0], Dropped) and bad.received is None


# ---- fuzzing: nothing but AdvertError ----
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_only_raise_advert_error(data: bytes) -> None:
    for expect in (V2, V3):
        with contextlib.suppress(AdvertError):
            parse_packet(data, expect)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([HAND_V2, HAND_V3]), st.lists(st.tuples(st.integers(0, 39),
                                                               st.integers(0, 255)), max_size=4),
       st.integers(0, 12))
def test_mutated_adverts_only_raise_advert_error(payload: bytes,
                                                 edits: list[tuple[int, int]], cut: int) -> None:
    packet = bytearray(packet_of(payload))
    for at, value in edits:
        if at < len(packet):
            packet[at] = value
    for expect in (V2, V3):
        try:
            r = parse_packet(bytes(packet[:len(packet) - cut]), expect)
        except AdvertError:
            continue
        assert r.priority is not None and r.interval_cs is not None


def test_params_are_checked() -> None:
    Params(protocol="vrrp2", priority=255, advert_int_cs=25500)
    for bad in ({"protocol": "vrrp4"}, {"protocol": "vrrp2", "priority": 0},
                {"protocol": "vrrp2", "advert_int_cs": 150},
                {"protocol": "vrrp3", "advert_int_cs": 4096}):
        with pytest.raises(ValueError):
            Params(**bad)


# ---- real keepalived 2.2.7 (Debian) adverts, captured from a netns pair: a v2 instance (VRID
# 51, priority 150, advert_int 1, auth PASS "secret12", VIPs 10.77.0.100-101) to the group and
# a v3 one (VRID 52, priority 120, advert_int 0.1, unicast 10.77.0.1 -> 10.77.0.2), each also
# as its priority 0 advert on stop ----
KA_SRC, KA_PEER = IPv4Address("10.77.0.1"), IPv4Address("10.77.0.2")
KA_V2 = bytes.fromhex("45c0002c00010000ff70d0400a4d0001e0000012213396020101c4e70a4d0064"
                      "0a4d00657365637265743132")
KA_V2_STOP = bytes.fromhex("45c0002c00030000ff70d03e0a4d0001e00000122133000201015ae80a4d0064"
                           "0a4d00657365637265743132")
KA_V3 = bytes.fromhex("45c0002000010000ff70a6100a4d00010a4d000231347801000a36ec0a4d006e")
KA_V3_STOP = bytes.fromhex("45c00020002f0000ff70a5e20a4d00010a4d000231340001000aaeec0a4d006e")
KA_V2_EXPECT = Expect(vhid=51, key=b"secret12", vip=IPv4Address("10.77.0.100"),
                      protocol="vrrp2", advert_int_cs=100,
                      vips=(IPv4Address("10.77.0.100"), IPv4Address("10.77.0.101")))
KA_V3_EXPECT = Expect(vhid=52, key=b"", vip=IPv4Address("10.77.0.110"), protocol="vrrp3",
                      vips=(IPv4Address("10.77.0.110"),), advert_int_cs=10,
                      peers=frozenset({KA_SRC}), own=KA_PEER, multicast=False)


def test_keepalived_s_adverts_parse_here() -> None:
    for packet, expect, fields in ((KA_V2, KA_V2_EXPECT, (150, 100)),
                                   (KA_V2_STOP, KA_V2_EXPECT, (0, 100)),
                                   (KA_V3, KA_V3_EXPECT, (120, 10)),
                                   (KA_V3_STOP, KA_V3_EXPECT, (0, 10))):
        r = parse_packet(packet, expect)
        assert (r.priority, r.interval_cs, r.src) == (*fields, KA_SRC)


def test_ours_are_keepalived_s_byte_for_byte() -> None:
    v2 = Params(protocol="vrrp2", priority=150, advert_int_cs=100)
    vips = list(KA_V2_EXPECT.vips)
    assert advert_for(v2, SendAdvert(1, 0, 0), vrid=51, vips=vips, password=b"secret12",
                      src=KA_SRC, ident=1) == KA_V2
    assert advert_for(v2, SendAdvert(255, 255, 0, handover=True), vrid=51, vips=vips,
                      password=b"secret12", src=KA_SRC, ident=3) == KA_V2_STOP
    v3 = Params(protocol="vrrp3", priority=120, advert_int_cs=10)
    assert advert_for(v3, SendAdvert(1, 0, 0), vrid=52, vips=list(KA_V3_EXPECT.vips),
                      password=b"", src=KA_SRC, dst=KA_PEER, ident=1) == KA_V3
    assert advert_for(v3, SendAdvert(255, 255, 0, handover=True), vrid=52,
                      vips=list(KA_V3_EXPECT.vips), password=b"", src=KA_SRC, dst=KA_PEER,
                      ident=0x2F) == KA_V3_STOP
