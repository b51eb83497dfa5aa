"""Codec: ucarp's test vector, round trips, every drop reason, scapy as an independent decoder."""

from __future__ import annotations

import hashlib
import hmac
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.auth import carp_key
from sidecar.core.protocol import (
    Advert,
    AdvertError,
    DropReason,
    Expect,
    build_advert,
    build_frame,
    build_ip_packet,
    decode_advert,
    internet_checksum,
    parse_packet,
)

VIP = IPv4Address("172.16.0.1")
KEY = carp_key("geheim")
EXPECT = Expect(vhid=1, key=KEY, vip=VIP)
SRC = IPv4Address("172.16.0.11")

# docs/protocol.md §3 test vector, computed independently of this code
VECTOR = bytes.fromhex(
    "210100070001db9d0123456789abcdef16a18f3fa899d6d54de99ead5f2713b12129bf4a"
)
# the first advert of a live Debian ucarp 1.5.2 capture (IP ck recomputed)
UCARP_CARP_BYTES = bytes.fromhex(
    "210100070001" "2eac" "7a480974d2432818" "b0399449e4c73005b60cd5d28d30dab8a5243ff4"
)


def packet(advert: Advert, **kw: object) -> bytes:
    return build_ip_packet(advert, key=KEY, vip=VIP, src=SRC, **kw)  # type: ignore[arg-type]


def test_build_matches_ucarp_test_vector() -> None:
    advert = Advert(vhid=1, advbase=1, advskew=0, counter=0x0123456789ABCDEF)
    assert build_advert(advert, KEY, VIP) == VECTOR


def test_ucarp_captured_advert_verifies_and_decodes() -> None:
    ip = bytes.fromhex("45100038a1684000ff700000ac10000ae0000012")
    ck = internet_checksum(ip)
    ip = ip[:10] + ck.to_bytes(2, "big") + ip[12:]
    received = parse_packet(ip + UCARP_CARP_BYTES, EXPECT)
    assert received.advert == Advert(vhid=1, advbase=1, advskew=0, counter=0x7A480974D2432818)
    assert received.src == IPv4Address("172.16.0.10")


def test_ucarp_captured_advert_with_wrong_password_is_bad_hmac() -> None:
    ip = bytes.fromhex("45100038a1684000ff700000ac10000ae0000012")
    ip = ip[:10] + internet_checksum(ip).to_bytes(2, "big") + ip[12:]
    with pytest.raises(AdvertError) as e:
        parse_packet(ip + UCARP_CARP_BYTES, Expect(vhid=1, key=b"wrong", vip=VIP))
    assert e.value.reason is DropReason.BAD_HMAC


def test_hmac_is_ucarp_formula() -> None:
    counter = (1234567890123).to_bytes(8, "big")
    advert = Advert(vhid=7, advbase=2, advskew=9, counter=1234567890123)
    md = hmac.new(b"geheim", bytes([2, 1, 7]) + VIP.packed + counter, hashlib.sha1).digest()
    assert build_advert(advert, KEY, VIP)[16:] == md


def test_ip_header_is_ucarps() -> None:
    raw = packet(Advert(vhid=3, advbase=1, advskew=0, counter=5), ident=0xA168)
    assert raw[:10] == bytes.fromhex("45100038a1684000ff70")
    assert internet_checksum(raw[:20]) == 0 and len(raw) == 56


def test_frame_uses_ucarp_macs() -> None:
    ip = packet(Advert(vhid=9, advbase=1, advskew=0, counter=5))
    frame = build_frame(ip, vhid=9, group=IPv4Address("224.0.0.18"), broadcast=False)
    assert frame[:14] == bytes.fromhex("01005e000012" "00005e000009" "0800") and len(frame) == 70
    frame = build_frame(ip, vhid=9, group=IPv4Address("224.0.0.18"), broadcast=True)
    assert frame[:6] == b"\xff" * 6


def test_password_longer_than_19_bytes_is_refused() -> None:
    assert carp_key("x" * 19) == b"x" * 19
    with pytest.raises(ValueError):
        carp_key("x" * 20)


adverts = st.builds(
    Advert,
    vhid=st.integers(0, 255), advbase=st.integers(0, 255), advskew=st.integers(0, 255),
    counter=st.integers(0, 2**64 - 1), demote=st.integers(0, 255),
    version=st.integers(0, 15), type=st.integers(0, 15), authlen=st.integers(0, 255),
)


@given(adverts)
def test_decode_build_roundtrip(advert: Advert) -> None:
    assert decode_advert(build_advert(advert, KEY, VIP)) == advert


@given(st.integers(1, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**64 - 1))
def test_parse_build_roundtrip_for_valid_adverts(vhid: int, base: int, skew: int, ctr: int) -> None:
    advert = Advert(vhid=vhid, advbase=base, advskew=skew, counter=ctr)
    got = parse_packet(packet(advert), Expect(vhid=vhid, key=KEY, vip=VIP))
    assert got.advert == advert and got.src == SRC and got.ttl == 255


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_advert_error(data: bytes) -> None:
    try:
        parse_packet(data, EXPECT)
    except AdvertError as e:
        assert isinstance(e.reason, DropReason)


@given(st.integers(0, 55), st.integers(1, 255))
def test_any_flipped_byte_is_dropped_or_harmless(index: int, xor: int) -> None:
    good = bytearray(packet(Advert(vhid=1, advbase=1, advskew=0, counter=42)))
    good[index] ^= xor
    try:
        got = parse_packet(bytes(good), EXPECT)
    except AdvertError:
        return
    # Every byte of the 56 is covered by a checksum, so no single-byte change may get through.
    pytest.fail(f"flipped byte {index} accepted: {got}")


def mutate(raw: bytes, index: int, value: int, fix_ip_checksum: bool = True) -> bytes:
    b = bytearray(raw)
    b[index] = value
    if fix_ip_checksum:
        b[10:12] = b"\0\0"
        b[10:12] = internet_checksum(bytes(b[:20])).to_bytes(2, "big")
    return bytes(b)


GOOD = packet(Advert(vhid=1, advbase=1, advskew=0, counter=42))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (GOOD[:19], DropReason.SHORT),
        (GOOD[:55], DropReason.SHORT),
        (mutate(GOOD, 0, 0x65), DropReason.BAD_IP_HEADER),
        (mutate(GOOD, 9, 17), DropReason.NOT_CARP),
        (mutate(GOOD, 8, 254), DropReason.BAD_TTL),
        (mutate(GOOD, 20, 0x31), DropReason.BAD_VERSION),
        (mutate(GOOD, 21, 2), DropReason.OTHER_VHID),
        (mutate(GOOD, 19, 19), DropReason.WRONG_GROUP),
        (mutate(GOOD, 10, 0, fix_ip_checksum=False), DropReason.BAD_CHECKSUM),
        (mutate(GOOD, 35, 0x2B), DropReason.BAD_CHECKSUM),
        (mutate(GOOD, 20, 0x22), DropReason.BAD_CHECKSUM),
    ],
)
def test_each_check_has_its_reason(raw: bytes, reason: DropReason) -> None:
    with pytest.raises(AdvertError) as e:
        parse_packet(raw, EXPECT)
    assert e.value.reason is reason


def test_wrong_type_with_valid_checksum_is_bad_type() -> None:
    raw = packet(Advert(vhid=1, advbase=1, advskew=0, counter=42, type=2))
    with pytest.raises(AdvertError) as e:
        parse_packet(raw, EXPECT)
    assert e.value.reason is DropReason.BAD_TYPE


def test_wrong_password_is_bad_hmac_and_says_nothing_of_the_secret() -> None:
    raw = build_ip_packet(Advert(1, 1, 0, 42), key=b"geheim2", vip=VIP, src=SRC)
    with pytest.raises(AdvertError) as e:
        parse_packet(raw, EXPECT)
    assert e.value.reason is DropReason.BAD_HMAC
    assert "geheim" not in str(e.value)


def test_trailing_ethernet_padding_is_ignored() -> None:
    assert parse_packet(GOOD + b"\0" * 10, EXPECT).advert.counter == 42


def test_scapy_decodes_our_advert_field_by_field() -> None:
    from scapy.contrib.carp import CARP
    from scapy.layers.inet import IP

    advert = Advert(vhid=5, advbase=2, advskew=17, counter=0x1122334455667788, demote=3)
    pkt = IP(build_ip_packet(advert, key=KEY, vip=VIP, src=SRC))
    carp = pkt[CARP]
    assert (pkt.ttl, pkt.proto, pkt.tos, pkt.flags.DF, pkt.dst) == (255, 112, 0x10, True, "224.0.0.18")
    assert (carp.version, carp.type, carp.vhid, carp.advskew, carp.authlen) == (2, 1, 5, 17, 7)
    assert (carp.demotion, carp.advbase) == (3, 2)
    assert (carp.counter1 << 32) | carp.counter2 == 0x1122334455667788
    raw = bytes(carp)[:36]
    assert internet_checksum(raw) == 0


def test_committed_real_ucarp_capture_verifies_with_our_hmac() -> None:
    from pathlib import Path

    import scapy.layers.l2  # noqa: F401 - registers Ethernet for rdpcap
    from scapy.utils import rdpcap

    frames = rdpcap(str(Path(__file__).parents[1] / "data/ucarp-1.5.2-adverts.pcap"))
    assert len(frames) == 3
    for frame in frames:
        raw = bytes(frame)
        assert raw[6:12] == bytes.fromhex("00005e000001")  # ucarp's fixed source MAC
        got = parse_packet(raw[14:], EXPECT)
        assert (got.advert.advbase, got.advert.advskew) == (1, 10)
        with pytest.raises(AdvertError) as e:
            parse_packet(raw[14:], Expect(vhid=1, key=b"geheim!", vip=VIP))
        assert e.value.reason is DropReason.BAD_HMAC


# ---- VRRP neighbours (keepalived) on protocol 112 and 224.0.0.18 ----
def _vrrp(version: int, vrid: int) -> bytes:
    """A VRRP advert built by scapy (an independent encoder), as keepalived sends it."""
    from scapy.layers.inet import IP
    from scapy.layers.vrrp import VRRP, VRRPv3

    layer = (VRRP(vrid=vrid, priority=100, addrlist=["172.16.0.7"]) if version == 2
             else VRRPv3(vrid=vrid, priority=100, addrlist=["172.16.0.7"]))
    return bytes(IP(src="172.16.0.13", dst="224.0.0.18", ttl=255, proto=112) / layer)


@pytest.mark.parametrize("version", [2, 3])
def test_vrrp_advert_for_our_vhid_is_counted_as_vrrp_with_router_and_vrid(version: int) -> None:
    raw = _vrrp(version, vrid=1)
    with pytest.raises(AdvertError) as e:
        parse_packet(raw + b"\0" * 6, EXPECT)  # Ethernet padding does not hide it
    assert e.value.reason is DropReason.VRRP
    assert f"VRRPv{version} router 172.16.0.13, VRID 1" in str(e.value)


@pytest.mark.parametrize("version", [2, 3])
def test_vrrp_advert_for_another_vrid_is_another_group(version: int) -> None:
    with pytest.raises(AdvertError) as e:
        parse_packet(_vrrp(version, vrid=9), EXPECT)
    assert e.value.reason is DropReason.OTHER_VHID


def test_carp_is_never_taken_for_vrrp() -> None:
    from sidecar.core.protocol import vrrp_version

    assert vrrp_version(GOOD, 20) is None
    # version 3 with CARP's authlen 7 has VRRPv3's length for 7 addresses: its checksum decides
    assert vrrp_version(mutate(GOOD, 20, 0x31), 20) is None
    with pytest.raises(AdvertError) as e:
        parse_packet(_vrrp(2, 1)[:30], EXPECT)  # a cut VRRP packet is short, nothing more
    assert e.value.reason is DropReason.SHORT
