"""The reviewer's findings on VRRPv3 over IPv6, each pinned by a test that failed before."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from sidecar.config.runconfig import Vhid
from sidecar.config.settings import ConfigError, load
from sidecar.core.protocol import AdvertError, DropReason, Expect
from sidecar.core.vrrp6 import build_vrrp6, ip6_packet, parse_packet6

LOCAL = IPv6Address("fe80::a")
PEER = IPv6Address("2001:db8::12")
VIP = IPv6Address("2001:db8::100")
V6 = Expect(vhid=5, key=b"", vip=IPv4Address(0), protocol="vrrp3", vips=(VIP,),
            advert_int_cs=100, ipv6=True)


def packet(src: IPv6Address, dst: IPv6Address, hops: int = 255) -> bytes:
    return ip6_packet(build_vrrp6(5, 100, 100, [VIP], src=src, dst=dst), src, dst, hops)


def vhid(environ: dict[str, str]) -> Vhid:
    (s,) = load({"CARP_INTERFACE": "eth0", "CARP_VHID": "5", **environ}).runtime().instances
    return s


def refused(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        vhid(environ)
    return str(e.value).splitlines()


# 1: unicast peers without CARP_SRCIP split the group
def test_a_unicast_advert_to_any_of_our_addresses_is_unicast() -> None:
    """keepalived tells unicast from multicast by the destination only: a peer addressing
    our global address while our own source is the link-local one is heard."""
    uni = dataclasses.replace(V6, own=LOCAL, peers=frozenset({PEER}), multicast=False)
    got = parse_packet6(packet(PEER, IPv6Address("2001:db8::7"), hops=64), uni)
    assert got.src == PEER and got.ttl == 64
    with pytest.raises(AdvertError) as e:  # still: multicast-only instances want ff02::12
        parse_packet6(packet(PEER, IPv6Address("2001:db8::7")), V6)
    assert e.value.reason is DropReason.WRONG_GROUP


def test_global_ipv6_peers_need_carp_srcip_link_local_ones_do_not() -> None:
    six = {"CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "2001:db8::7/64"}
    (line,) = refused({**six, "CARP_PEERS": "2001:db8::12,fe80::12"})
    assert line.startswith("CARP_SRCIP: required with the global CARP_PEERS 2001:db8::12 of")
    assert vhid({**six, "CARP_PEERS": "fe80::12,fe80::13"}).srcip is None
    assert vhid({**six, "CARP_PEERS": "2001:db8::12", "CARP_SRCIP": "2001:db8::11"}).peers


def test_the_import_warns_of_global_ipv6_peers_without_unicast_src_ip(tmp_path: Path) -> None:
    from sidecar.tools.keepalived_import import translate

    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance U6 {\n interface eth0\n virtual_router_id 4\n native_ipv6\n"
                    " unicast_peer {\n  2001:db8::12\n  fe80::12\n }\n"
                    " virtual_ipaddress {\n  2001:db8::4/64\n }\n}\n")
    notes = "\n".join(translate(conf).notes)
    assert "WARNING: unicast_peer 2001:db8::12 without unicast_src_ip" in notes
    assert "fe80::12 without" not in notes


# 2: an in-place restart must hand the IPv6 unicast socket to the keeper
def test_the_keeper_keeps_the_ipv6_unicast_socket() -> None:
    from types import SimpleNamespace

    from sidecar.runtime.restart import send_fds

    def sender(fd: int) -> SimpleNamespace:
        return SimpleNamespace(sock=SimpleNamespace(fileno=lambda: fd))
    six = SimpleNamespace(channel=SimpleNamespace(attached=SimpleNamespace(sock=sender(3).sock)),
                          port=SimpleNamespace(unicast=None, unicast6=sender(42)))
    assert send_fds(six) == [3, 42]  # type: ignore[arg-type]
    four = SimpleNamespace(channel=SimpleNamespace(attached=None),
                           port=SimpleNamespace(unicast=sender(7), unicast6=None))
    assert send_fds(four) == [7]  # type: ignore[arg-type]


# 4: the instance, not the packet's version nibble, picks the parser
def test_an_ipv4_packet_saying_version_6_is_bad_ip_header_for_carp_and_ipv4_vrrp() -> None:
    from sidecar.core.auth import carp_key
    from sidecar.core.outputs import Dropped
    from sidecar.core.protocol import Advert, build_ip_packet
    from sidecar.core.screen import screen

    vip4 = IPv4Address("10.0.0.7")
    carp = Expect(vhid=5, key=carp_key("x"), vip=vip4)
    good = build_ip_packet(Advert(vhid=5, advbase=1, advskew=0, counter=1), key=carp.key,
                           vip=vip4, src=IPv4Address("10.0.0.2"), dst=carp.group)
    assert screen(good, carp, None, 0.0).received is not None
    six = b"\x65" + good[1:]  # what the filter passes as IPv4 with byte 23 = 112
    (drop,) = screen(six, carp, None, 0.0).outputs
    assert isinstance(drop, Dropped) and drop.error.reason is DropReason.BAD_IP_HEADER
    assert drop.src == good[12:16]
    # an IPv4 vrrp3 instance without VIPs never parses an IPv6 advert as one
    v3 = Expect(vhid=5, key=b"", vip=vip4, protocol="vrrp3")
    (drop,) = screen(packet(LOCAL, IPv6Address("ff02::12")), v3, None, 0.0).outputs
    assert isinstance(drop, Dropped) and drop.error.reason is DropReason.BAD_IP_HEADER


# 3 and 6: the import settles an instance's family and version as keepalived's parser does
@pytest.mark.parametrize(("body", "protocol", "vips", "warned"), [
    # the first VIP decides: IPv6 VRRPv3 with only 2001:db8::100 (was vrrp2 with 10.0.0.100)
    (" virtual_ipaddress {\n  2001:db8::100/64\n  10.0.0.100/24\n }\n", "vrrp3",
     ["2001:db8::100/64"], "virtual_ipaddress 10.0.0.100/24: not carried"),
    (" virtual_ipaddress {\n  10.0.0.100/24\n  2001:db8::100/64\n }\n version 3\n", "vrrp3",
     ["10.0.0.100/24"], "virtual_ipaddress 2001:db8::100/64: not carried"),
    # unicast_src_ip first: IPv6, whatever the VIPs' order
    (" unicast_src_ip 2001:db8::11\n unicast_peer {\n  2001:db8::12\n }\n"
     " virtual_ipaddress {\n  10.0.0.100/24\n  2001:db8::100/64\n }\n", "vrrp3",
     ["2001:db8::100/64"], "virtual_ipaddress 10.0.0.100/24: not carried"),
    # version 2 once the instance is IPv6: keepalived ignores it and runs VRRPv3
    (" virtual_ipaddress {\n  2001:db8::100/64\n }\n version 2\n", "vrrp3",
     ["2001:db8::100/64"], ""),
    # version 2 then native_ipv6: native_ipv6 sets version 3
    (" version 2\n native_ipv6\n virtual_ipaddress {\n  2001:db8::100/64\n }\n", "vrrp3",
     ["2001:db8::100/64"], ""),
])
def test_the_import_takes_the_family_as_keepalived_does(
        tmp_path: Path, body: str, protocol: str, vips: list[str], warned: str) -> None:
    from sidecar.tools.keepalived_import import translate

    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance M {\n interface eth0\n virtual_router_id 4\n" + body + "}\n")
    result = translate(conf)
    toml = tmp_path / "carp.toml"
    toml.write_text(result.toml)
    (s,) = load({"CARP_CONFIG": str(toml)}, offline=True).runtime().instances
    assert (s.protocol, [str(v) for v in s.vips]) == (protocol, vips)
    notes = "\n".join(result.notes)
    assert (f"WARNING: {warned}" in notes) if warned else "WARNING" not in notes, notes
    assert "VRRPv2" not in notes, notes


def test_the_import_refuses_vrrp2_over_ipv6_with_a_warning(tmp_path: Path) -> None:
    from sidecar.tools.keepalived_import import translate

    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance M {\n interface eth0\n virtual_router_id 4\n version 2\n"
                    " virtual_ipaddress {\n  2001:db8::100/64\n }\n}\n"
                    "vrrp_instance K {\n interface eth0\n virtual_router_id 5\n"
                    " virtual_ipaddress {\n  10.0.0.1/24\n }\n}\n")
    result = translate(conf)
    notes = "\n".join(result.notes)
    assert "WARNING: version 2 before the instance's first IPv6 address" in notes
    assert "vrrp_instance M: no addr: skipped" in notes
    conf.write_text("global_defs {\n vrrp_strict\n}\nvrrp_instance M {\n interface eth0\n"
                    " virtual_router_id 4\n version 2\n"
                    " virtual_ipaddress {\n  2001:db8::100/64\n }\n}\n")
    assert 'protocol = "vrrp3"' in translate(conf).toml  # strict: keepalived sets version 3


# 8: short IPv6 next-header-112 frames are counted; our own source from another MAC is said
class _Receiver:
    def __init__(self, vhid: int, expect: Expect) -> None:
        self.vhid, self.expect = vhid, expect
        self.drops: list[DropReason] = []
        self.adverts: list[bytes] = []

    def advert_packet(self, packet: bytes) -> None:
        self.adverts.append(packet)

    def dropped(self, error: AdvertError) -> None:
        self.drops.append(error.reason)

    def arp_claim(self, sender_mac: bytes, probe_reply: bool = False) -> None: ...

    def na_claim(self, sender_mac: bytes) -> None: ...

    def interface_changed(self, present: bool, running: bool, reattached: bool) -> None: ...


class _Sock:
    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    def receive(self) -> list[bytes]:
        frames, self.frames = self.frames, []
        return frames


OUR_MAC = bytes.fromhex("020000000001")


def _channel(frames: list[bytes]) -> tuple[object, _Receiver]:
    import asyncio

    from sidecar.net.channel import Channel
    from sidecar.net.packet import Attached

    channel = Channel("eth0", asyncio.new_event_loop())
    receiver = _Receiver(5, V6)
    channel.add(receiver, LOCAL, None, [], [VIP])
    channel.attached = Attached(3, OUR_MAC, _Sock(frames))  # type: ignore[arg-type]
    return channel, receiver


def _frame(packet_: bytes, mac: bytes = bytes.fromhex("020000000002")) -> bytes:
    return bytes.fromhex("333300000012") + mac + b"\x86\xdd" + packet_


def test_a_short_ipv6_advert_frame_is_counted() -> None:
    good = packet(PEER, IPv6Address("ff02::12"))
    channel, receiver = _channel([_frame(good[:30]), _frame(good[:41]), _frame(good)])
    assert channel._on_readable() == 3  # type: ignore[attr-defined]
    channel.loop.close()  # type: ignore[attr-defined]
    assert receiver.drops == [DropReason.SHORT, DropReason.BAD_IP_HEADER]
    assert receiver.adverts == [good]


def test_our_own_source_from_another_mac_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    own = packet(LOCAL, IPv6Address("ff02::12"))
    stranger = bytes.fromhex("020000000009")
    channel, receiver = _channel([_frame(own, OUR_MAC), _frame(own, bytes.fromhex(
        "00005e000205")), _frame(own, stranger), _frame(own, stranger)])
    with caplog.at_level("WARNING", logger="carp-sidecar"):
        channel._on_readable()  # type: ignore[attr-defined]
    channel.loop.close()  # type: ignore[attr-defined]
    said = [r.getMessage() for r in caplog.records]
    assert said == ["An advert on eth0 from our own address fe80::a comes from MAC "
                    "02:00:00:00:00:09, not ours: another host uses that address (or forges "
                    "it); ignored"]
    assert receiver.adverts == [] and receiver.drops == []


# 9: an IPv4 advert of another VRID is the IPv4 instances' drop, never an IPv6 one's
def test_ipv4_adverts_of_other_vrids_are_not_counted_by_ipv6_instances() -> None:
    from sidecar.core.auth import carp_key
    from sidecar.core.protocol import Advert, build_ip_packet

    vip4 = IPv4Address("10.0.0.7")
    channel, six = _channel([])
    four = _Receiver(1, Expect(vhid=1, key=carp_key("x"), vip=vip4))
    group = IPv4Address("224.0.0.18")
    channel.add(four, IPv4Address("10.0.0.1"), group, [vip4])  # type: ignore[attr-defined]
    other = build_ip_packet(Advert(vhid=9, advbase=1, advskew=0, counter=1), key=b"k",
                            vip=vip4, src=IPv4Address("10.0.0.2"), dst=group)
    channel.ip_packet(other)  # type: ignore[attr-defined]
    channel.loop.close()  # type: ignore[attr-defined]
    assert four.drops == [DropReason.OTHER_VHID] and six.drops == []


# 5: without CARP_SRCIP an IPv6 instance follows the interface's link-local address
def test_a_new_link_local_address_becomes_the_source() -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from sidecar.net.channel import Channel
    from sidecar.net.netlink import AddressEvent
    from sidecar.net.packet import Attached
    from sidecar.runtime import linklocal
    from sidecar.runtime.instance import Instance
    from sidecar.serve.metrics import Metrics

    new = IPv6Address("fe80::b")

    class Nl:
        async def link_local(self, index: int, vips: object = ()) -> tuple[IPv6Address | None, str]:
            return new, ""

    s = vhid({"CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "2001:db8::100/64",
              "CARP_ADVERT_INT": "0.1", "CARP_METRICS_LISTEN": "off"})
    loop = asyncio.new_event_loop()
    try:
        channel = Channel("eth0", loop)
        metrics = Metrics(CollectorRegistry(), "test", process_metrics=False)
        instance = Instance(s, LOCAL, channel, Nl(), metrics, loop)  # type: ignore[arg-type]
        channel.add(instance, LOCAL, None, [], [VIP])
        channel.attached = Attached(7, OUR_MAC, _Sock([]))  # type: ignore[arg-type]
        instance.machine.start(loop.time())
        changed = linklocal.link_local_changed
        assert changed(instance, AddressEvent(7, new, True))
        assert changed(instance, AddressEvent(7, LOCAL, False))  # ours went: another one?
        assert not changed(instance, AddressEvent(7, LOCAL, True))
        assert not changed(instance, AddressEvent(7, new, False))
        assert not changed(instance, AddressEvent(8, new, True))
        loop.run_until_complete(linklocal.check_source(instance, 7))
        assert instance.srcip == instance.port.srcip == instance.reporter.srcip == new
        assert instance.session.config.params.own_ip == new
        assert new.packed in channel._own and LOCAL.packed not in channel._own
        own = packet(new, IPv6Address("ff02::12"))
        channel.ip6_packet(own, OUR_MAC)  # our adverts from it come back: ignored
        assert instance.m.value("carp_adverts_received_total") == 0
    finally:
        loop.close()
    fixed = vhid({"CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "2001:db8::100/64",
                  "CARP_PEERS": "fe80::12", "CARP_SRCIP": "fe80::a"})
    assert not linklocal.follows(fixed) and linklocal.follows(s)


# review: a link-local VIP (ours, or another instance's on the interface) never becomes the
# source when the address is read again: the kernel lists a newly added one first
def test_a_link_local_vip_is_never_read_as_the_new_source() -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from sidecar.net.channel import Channel
    from sidecar.net.netlink import AddressEvent
    from sidecar.net.packet import Attached
    from sidecar.runtime import linklocal
    from sidecar.runtime.instance import Instance
    from sidecar.serve.metrics import Metrics

    ours, theirs, eui = (IPv6Address(a) for a in ("fe80::9", "fe80::10", "fe80::b"))
    asked: list[frozenset[IPv6Address]] = []

    class Nl:  # the kernel's order: the VIPs added last come first
        async def link_local(self, index: int, vips: frozenset[IPv6Address] = frozenset()
                             ) -> tuple[IPv6Address | None, str]:
            asked.append(frozenset(vips))
            return next(a for a in (theirs, ours, eui) if a not in vips), ""

    one = vhid({"CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "fe80::9/64,2001:db8::9/64",
                "CARP_ADVERT_INT": "0.1", "CARP_METRICS_LISTEN": "off"})
    two = dataclasses.replace(one, vhid=2, vips=vhid({
        "CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "fe80::10/64,2001:db8::10/64",
        "CARP_METRICS_LISTEN": "off"}).vips)
    loop = asyncio.new_event_loop()
    try:
        channel = Channel("eth0", loop)
        metrics = Metrics(CollectorRegistry(), "test", process_metrics=False)
        first = Instance(one, LOCAL, channel, Nl(), metrics, loop)  # type: ignore[arg-type]
        second = Instance(two, LOCAL, channel, Nl(), metrics, loop)  # type: ignore[arg-type]
        channel.add(first, LOCAL, None, [], [])
        channel.add(second, LOCAL, None, [], [])
        channel.attached = Attached(7, OUR_MAC, _Sock([]))  # type: ignore[arg-type]
        first.machine.start(loop.time())
        changed = linklocal.link_local_changed
        assert not changed(first, AddressEvent(7, ours, True))
        assert not changed(first, AddressEvent(7, theirs, True))  # the other one's master
        assert changed(first, AddressEvent(7, eui, True))
        loop.run_until_complete(linklocal.check_source(first, 7))
        assert asked[-1] == {ours, theirs}
        assert first.srcip == eui
    finally:
        loop.close()


# review: an address another instance still sends from stays ours when one moves off it
def test_a_shared_source_stays_ours_when_one_instance_follows_another_address() -> None:
    import asyncio

    from sidecar.net.channel import Channel

    class R:  # what the channel asks of an instance here
        def __init__(self, vhid: int) -> None:
            self.vhid, self.srcip = vhid, LOCAL

    loop = asyncio.new_event_loop()
    try:
        channel = Channel("eth0", loop)
        moving, staying = R(1), R(2)
        for r in (moving, staying):
            channel.add(r, LOCAL, None, [], [])  # type: ignore[arg-type]
        channel.set_source(LOCAL, IPv6Address("fe80::b"))
        assert LOCAL.packed in channel._own  # staying still sends from it
        moving.srcip = IPv6Address("fe80::b")
        channel.set_source(LOCAL, IPv6Address("fe80::c"))  # the last user moves
        assert LOCAL.packed not in channel._own
    finally:
        loop.close()
