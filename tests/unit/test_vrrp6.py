"""VRRPv3 over IPv6 (sidecar.core.vrrp6) against a packet laid out by hand from RFC 5798 §5.1
and RFC 8200 §8.1, and against scapy's IPv6/VRRPv3 layers as an independent encoder/decoder."""

from __future__ import annotations

import contextlib
import dataclasses
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRPv3

from sidecar.core.actions import Params, SendAdvert
from sidecar.core.outputs import Accepted, Dropped
from sidecar.core.protocol import AdvertError, DropReason, Expect, internet_checksum
from sidecar.core.screen import screen
from sidecar.core.vrrp6 import (
    VRRP6_GROUP,
    advert_for,
    build_vrrp6,
    ip6_packet,
    multicast_mac,
    parse_packet6,
    vrrp6_frame,
)

SRC = IPv6Address("fe80::1")
PEER = IPv6Address("fe80::2")
VIP = IPv6Address("fe80::100")
VIP2 = IPv6Address("2001:db8::100")
V6 = Expect(vhid=5, key=b"", vip=IPv4Address(0), protocol="vrrp3",
            vips=(VIP, VIP2), advert_int_cs=100, ipv6=True)


def packet(priority: int = 100, src: IPv6Address = SRC, dst: IPv6Address = VRRP6_GROUP,
           vips: tuple[IPv6Address, ...] = (VIP, VIP2), hops: int = 255) -> bytes:
    return ip6_packet(build_vrrp6(5, priority, 100, vips, src=src, dst=dst), src, dst, hops)


def test_built_as_the_rfcs_lay_it_out() -> None:
    p = packet()
    assert p[0] == 0x6C and p[1] == 0x00  # version 6, traffic class 0xc0 (keepalived's)
    assert int.from_bytes(p[4:6], "big") == 8 + 32 and p[6] == 112 and p[7] == 255
    assert p[8:24] == SRC.packed and p[24:40] == VRRP6_GROUP.packed
    vrrp = p[40:]
    assert vrrp[:4] == bytes((0x31, 5, 100, 2)) and vrrp[4:6] == b"\x00\x64"
    assert vrrp[8:24] == VIP.packed and vrrp[24:40] == VIP2.packed  # configuration order
    # RFC 8200 §8.1: src, dst, 32-bit upper-layer length, 3 zero bytes, next header
    pseudo = SRC.packed + VRRP6_GROUP.packed + (40).to_bytes(4, "big") + b"\0\0\0\x70"
    assert internet_checksum(pseudo + vrrp) == 0
    assert multicast_mac(VRRP6_GROUP) == bytes.fromhex("333300000012")


def test_scapy_decodes_ours() -> None:
    frame = vrrp6_frame(packet(), src_mac=bytes.fromhex("020000000001"))
    e = Ether(frame)
    assert e.dst == "33:33:00:00:00:12" and e[IPv6].nh == 112 and e[IPv6].hlim == 255
    v = e[VRRPv3]
    assert (v.version, v.vrid, v.priority, v.ipcount, v.adv) == (3, 5, 100, 2, 100)
    assert [str(a) for a in v.addrlist] == [str(VIP), str(VIP2)]
    sent = v.chksum
    rebuilt = IPv6(bytes(e[IPv6]))
    del rebuilt[VRRPv3].chksum  # scapy recomputes it over its own IPv6 pseudo-header
    assert IPv6(bytes(rebuilt))[VRRPv3].chksum == sent


def test_scapy_s_parse_here_including_padding() -> None:
    theirs = bytes(IPv6(src=str(PEER), dst=str(VRRP6_GROUP), hlim=255)
                   / VRRPv3(vrid=5, priority=200, adv=50, addrlist=[str(VIP), str(VIP2)]))
    got = parse_packet6(theirs + bytes(6), V6)
    assert (got.src, got.priority, got.interval_cs, got.ttl) == (PEER, 200, 50, 255)


def test_handover_is_priority_zero_and_the_destination_is_summed() -> None:
    params = Params(protocol="vrrp3", priority=150, advert_int_cs=30)
    bow = advert_for(params, SendAdvert(advbase=1, advskew=0, counter=0, handover=True),
                     vrid=5, vips=[VIP, VIP2], src=SRC)
    assert bow[42] == 0 and parse_packet6(bow, V6).advert.advbase == 255
    peer = IPv6Address("2001:db8::2")
    uni = advert_for(params, SendAdvert(advbase=1, advskew=0, counter=0), vrid=5,
                     vips=[VIP, VIP2], src=SRC, dst=peer)
    assert parse_packet6(uni, dataclasses.replace(V6, own=peer, peers=frozenset({SRC}))
                         ).priority == 150


@pytest.mark.parametrize(("data", "reason"), [
    (packet()[:30], DropReason.SHORT),
    (b"\x45" + packet()[1:], DropReason.BAD_IP_HEADER),
    (packet()[:6] + b"\x3a" + packet()[7:], DropReason.NOT_CARP),
    (packet(hops=64), DropReason.BAD_TTL),
    (packet()[:40] + b"\x21" + packet()[41:], DropReason.BAD_VERSION),
    (packet()[:41] + b"\x06" + packet()[42:], DropReason.OTHER_VHID),
    (packet()[:-1] + b"\x01", DropReason.BAD_CHECKSUM),
    (packet(dst=IPv6Address("ff02::1")), DropReason.WRONG_GROUP),
    (packet(vips=(VIP,)), DropReason.ADDRESSES),
    (packet(vips=(VIP, IPv6Address("2001:db8::1"))), DropReason.ADDRESSES),
    (packet()[:40] + b"\x32" + packet()[41:], DropReason.BAD_TYPE),
])
def test_drops_name_their_reason(data: bytes, reason: DropReason) -> None:
    with pytest.raises(AdvertError) as e:
        parse_packet6(data, V6)
    assert e.value.reason is reason


def test_address_order_does_not_matter_and_unicast_ignores_the_hop_limit() -> None:
    assert parse_packet6(packet(vips=(VIP2, VIP)), V6).priority == 100
    own = IPv6Address("2001:db8::1")
    uni = dataclasses.replace(V6, own=own, peers=frozenset({SRC}), multicast=False)
    assert parse_packet6(packet(dst=own, hops=60), uni).ttl == 60
    with pytest.raises(AdvertError) as e:
        parse_packet6(packet(src=PEER, dst=own), uni)
    assert e.value.reason is DropReason.NOT_A_PEER
    with pytest.raises(AdvertError) as e:
        parse_packet6(packet(), uni)
    assert e.value.reason is DropReason.WRONG_GROUP


def test_screen_accepts_and_drops_with_the_ipv6_source() -> None:
    out = screen(packet(priority=120, src=PEER), V6, None, 0.0)
    assert out.received is not None
    accepted = out.outputs[-1]
    assert isinstance(accepted, Accepted) and accepted.peer == PEER
    assert (accepted.priority, accepted.interval) == (120, 1.0)
    bad = screen(packet(src=PEER, hops=1), V6, None, 0.0)
    drop = bad.outputs[0]
    assert isinstance(drop, Dropped) and drop.src == PEER.packed


@settings(max_examples=300)
@given(st.binary(max_size=140))
def test_random_bytes_only_raise_advert_error(data: bytes) -> None:
    for candidate in (data, b"\x60" + data):
        with contextlib.suppress(AdvertError):
            parse_packet6(candidate, V6)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 79), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 80))
def test_mutated_adverts_only_raise_advert_error(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(packet())
    for at, value in flips:
        data[at] = value
    with contextlib.suppress(AdvertError):
        parse_packet6(bytes(data[:len(data) - cut]), V6)


def test_watch_decodes_vrrp3_over_ipv6() -> None:
    from sidecar.tools.watch import Watch, _is_carp

    frame = vrrp6_frame(packet(priority=0, src=PEER), src_mac=bytes.fromhex("020000000002"))
    assert _is_carp(Ether(frame))
    advert = Watch({}).frame(1.0, frame)
    assert advert is not None
    line = Watch.line(advert)
    assert f"{PEER} " in line and "VRRPv3 vrid 5" in line and "(resign)" in line


def test_a_reload_into_or_out_of_ipv6_replaces_the_instance() -> None:
    from ipaddress import ip_interface
    from pathlib import Path

    from sidecar.config.runconfig import RunConfig, Vhid
    from sidecar.config.values import auth
    from sidecar.runtime.reload import plan

    def config(*vips: str) -> RunConfig:
        ifs = tuple(ip_interface(v) for v in vips)
        v = Vhid(vhid=5, vips=ifs, auth=auth(b"", ifs), interface="eth0",  # type: ignore[arg-type]
                 protocol="vrrp3")
        return RunConfig(instances=(v,), checks={}, metrics_listen="off",
                         control_socket=Path("/run/c.sock"), log_format="text", source="x")

    six, mixed = config("2001:db8::1/64"), config("10.0.0.1/24", "2001:db8::1/64")
    assert six.instances[0].ipv6 and not mixed.instances[0].ipv6
    assert len(plan(mixed, six).replaced) == 1 and len(plan(six, mixed).replaced) == 1
    assert plan(six, config("2001:db8::1/64", "2001:db8::2/64")).updated  # VIPs: in place


def test_ipv6_source_and_peers_reach_the_agent_s_process() -> None:
    """The hand-over to the agent (RunConfig JSON) revives IPv6 CARP_SRCIP/CARP_PEERS."""
    from sidecar.config.runconfig import RunConfig
    from sidecar.config.settings import load

    config = load({"CARP_INTERFACE": "eth0", "CARP_VHID": "5", "CARP_PROTOCOL": "vrrp3",
                   "CARP_ADDR": "2001:db8::1/64", "CARP_SRCIP": "2001:db8::11",
                   "CARP_PEERS": "2001:db8::12,fe80::12"}).runtime()
    (s,) = RunConfig.from_json(config.to_json()).instances
    assert s.ipv6 and s.srcip == IPv6Address("2001:db8::11")
    assert s.peers == (IPv6Address("2001:db8::12"), IPv6Address("fe80::12"))


@pytest.mark.parametrize("nd", [False, True])
@pytest.mark.parametrize("six", [False, True])
def test_the_filter_passes_ipv6_adverts_only_with_an_ipv6_instance(nd: bool, six: bool) -> None:
    from sidecar.net.announce import build_ns_probe, build_unsolicited_na
    from sidecar.net.packet import carp_and_arp_filter
    from tests.unit.test_faults3_pieces import carp_frame, run_bpf

    prog = carp_and_arp_filter([], neighbour_adverts=nd, vrrp6=six)
    mac = bytes.fromhex("020000000009")
    assert run_bpf(prog, vrrp6_frame(packet(), src_mac=mac)) == (0xFFFF if six else 0)
    assert run_bpf(prog, carp_frame()) == 0xFFFF
    assert run_bpf(prog, build_unsolicited_na(mac, VIP2)) == (0xFFFF if nd else 0)
    assert run_bpf(prog, build_ns_probe(mac, VIP2)) == 0
    udp6 = bytearray(vrrp6_frame(packet(), src_mac=mac))
    udp6[20] = 17
    assert run_bpf(prog, bytes(udp6)) == 0


def test_equal_priorities_the_higher_ipv6_source_wins_between_masters() -> None:
    """RFC 5798 §6.4.3: the 128-bit source in network order, as keepalived's
    vrrp_saddr_cmp; here the addresses differ in the high bytes, the low ones say otherwise."""
    from tests.unit.sim import Sim
    from tests.unit.test_vrrp_machine import vnode

    a = vnode("a", "fe80::2:0:0:1", 100, protocol="vrrp3")
    b = vnode("b", "fe80::1:0:0:ff", 100, protocol="vrrp3")
    sim = Sim(a, b)
    a.connected = b.connected = False
    sim.start()
    sim.run_until(5)
    assert sim.masters() == ["a", "b"]
    a.connected = b.connected = True
    sim.run_until(8)
    assert sim.masters() == ["a"]


def test_the_link_local_source_is_waited_for_then_refused_naming_the_interface(
        caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    from typing import Any

    from sidecar.config.settings import load
    from sidecar.runtime.linklocal import link_local_source
    from sidecar.runtime.startup import StartupError

    s = load({"CARP_INTERFACE": "eth0", "CARP_VHID": "5", "CARP_PROTOCOL": "vrrp3",
              "CARP_ADDR": "2001:db8::1/64"}).runtime().instances[0]
    answers = [(None, "only fe80::1, still tentative (DAD)"), (SRC, "")]

    class Nl:
        async def link_local(self, index: int, vips: object = ()
                             ) -> tuple[IPv6Address | None, str]:
            return answers.pop(0) if answers else (None, "no IPv6 link-local address")

    nl: Any = Nl()
    assert asyncio.run(link_local_source(nl, s, 2, tries=3, wait=0.01)) == SRC
    assert "still tentative (DAD)" in caplog.text and "retrying" in caplog.text
    with pytest.raises(StartupError) as e:
        asyncio.run(link_local_source(nl, s, 2, tries=2, wait=0.01))
    assert str(e.value).startswith("CARP_INTERFACE: eth0 has no IPv6 link-local address")


def test_check_config_does_not_ask_an_ipv6_instance_for_an_ipv4_source(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.config.settings import load
    from sidecar.net import rtmsg
    from sidecar.tools.checkconfig import host_problems

    monkeypatch.setattr(rtmsg, "interface", lambda name: (2, 0x1043))
    monkeypatch.setattr(rtmsg, "ipv4_addresses", lambda index: [])  # an IPv6-only host
    base = {"CARP_INTERFACE": "eth0", "CARP_VHID": "5", "CARP_PROTOCOL": "vrrp3"}
    six = host_problems(load({**base, "CARP_ADDR": "2001:db8::1/64"}))
    four = host_problems(load({**base, "CARP_ADDR": "10.0.0.1/24"}))
    assert not any("CARP_SRCIP" in p for p in six)
    assert any(p.startswith("CARP_SRCIP: not set and eth0 has no IPv4") for p in four)
