"""A link-local VIP in an IPv6 VRRP instance (RFC 5798 §5.2.9: the first address of an IPv6
VRRP router's list; keepalived's configs list ``fe80::1/64`` first): accepted there only,
advertised and announced in configuration order, never taken for the advert source."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv6Address, IPv6Interface
from typing import Any

import pytest
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRPv3

from sidecar.config.settings import ConfigError, load
from sidecar.core.actions import Params, SendAdvert
from sidecar.core.vrrp6 import advert_for
from sidecar.net.netlink import IFA_F_TENTATIVE, Netlink
from sidecar.runtime.linklocal import ipv6_source, local_vips

BASE = {"CARP_INTERFACE": "eth0", "CARP_VHID": "9", "CARP_PROTOCOL": "vrrp3"}
OWN = IPv6Address("fe80::a8c1:abff:fe00:11")  # the interface's own (EUI-64) link-local


def test_an_ipv6_vrrp_instance_takes_a_link_local_vip_in_its_order() -> None:
    (s,) = load({**BASE, "CARP_ADDR": "fe80::1/64,2001:db8::1/64"}).runtime().instances
    assert s.ipv6 and [str(v) for v in s.vips] == ["fe80::1/64", "2001:db8::1/64"]
    assert [str(v) for v in s.ipv6_vips] == ["fe80::1/64", "2001:db8::1/64"]  # adverts, NAs


@pytest.mark.parametrize(("extra", "where"), [
    ({"CARP_PROTOCOL": "carp", "CARP_ADDR": "fe80::1/64", "CARP_PASS": "x"}, "not CARP"),
    ({"CARP_ADDR": "10.0.0.1/24,fe80::1/64"}, "not an instance with IPv4 VIPs"),
    ({"CARP_ADDR": "fe80::1/64", "CARP_VIP_INTERFACE": "lo"}, "not VIPs on CARP_VIP_INTERFACE"),
])
def test_a_link_local_vip_elsewhere_is_refused_in_one_line_naming_carp_addr(
        extra: dict[str, str], where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load({**BASE, **extra})
    lines = [line for line in str(e.value).splitlines() if "link-local" in line]
    assert len(lines) == 1 and "CARP_ADDR: fe80::1 is link-local (fe80::/10)" in lines[0]
    assert where in lines[0]


def test_vrrp2_names_its_own_rule_for_a_link_local_vip() -> None:
    with pytest.raises(ConfigError, match="CARP_ADDR: VRRPv2 carries IPv4 addresses only"):
        load({**BASE, "CARP_PROTOCOL": "vrrp2", "CARP_ADDR": "fe80::1/64"})


def test_the_advert_lists_the_link_local_vip_first_as_scapy_decodes_it() -> None:
    vips = [IPv6Address("fe80::1"), IPv6Address("2001:db8::1")]
    packet = advert_for(Params(protocol="vrrp3", advert_int_cs=10), SendAdvert(0, 0, 1), vrid=9,
                        vips=vips, src=OWN)
    decoded = IPv6(packet)[VRRPv3]
    assert decoded.addrlist == ["fe80::1", "2001:db8::1"] and decoded.ipcount == 2


class FakeIpr:
    """pyroute2's answer: the kernel lists a newer address first (our VIP before the EUI-64)."""

    def __init__(self, *addresses: tuple[str, int]) -> None:
        self.addresses = addresses

    async def get_addr(self, index: int, family: int) -> Any:
        async def dump() -> Any:
            for address, flags in self.addresses:
                yield {"IFA_ADDRESS": address, "IFA_FLAGS": flags}
        return dump()


def netlink(*addresses: tuple[str, int]) -> Netlink:
    nl = Netlink.__new__(Netlink)
    nl._ipr, nl._busy = FakeIpr(*addresses), asyncio.Lock()  # type: ignore[assignment]
    return nl


def test_the_source_is_never_a_link_local_vip() -> None:
    """keepalived's ignore_address_if_ours_or_link_local: a master's VIP (or a restart's
    leftover) listed first by the kernel is skipped, else our address would change."""
    nl = netlink(("fe80::1", 0), ("fe80::2", 0), (str(OWN), 0))
    mine = load({**BASE, "CARP_ADDR": "fe80::1/64,2001:db8::1/64"}).runtime().instances[0]
    other = load({**BASE, "CARP_VHID": "10", "CARP_ADDR": "fe80::2/64"}).runtime().instances[0]
    assert local_vips(mine, [mine, other]) == {IPv6Address("fe80::1"), IPv6Address("fe80::2")}
    assert asyncio.run(ipv6_source(nl, mine, 2, [mine, other])) == OWN
    assert asyncio.run(nl.link_local(2)) == (IPv6Address("fe80::1"), "")  # without: the VIP
    only_vip = netlink(("fe80::1", 0), (str(OWN), IFA_F_TENTATIVE))
    assert asyncio.run(only_vip.link_local(2, {IPv6Address("fe80::1")}))[0] is None


def test_an_address_owner_s_link_local_vip_is_its_source() -> None:
    owner = load({**BASE, "CARP_PRIORITY": "255", "CARP_ADDR": f"{OWN}/64"}).runtime()
    (s,) = owner.instances
    assert local_vips(s, owner.instances) == frozenset()
    assert asyncio.run(ipv6_source(netlink((str(OWN), 0)), s, 2)) == OWN


def test_the_keeper_s_address_dump_reads_ipv6_and_link_local() -> None:
    from sidecar.net.rtmsg import if_addresses

    lo = if_addresses(socket.if_nametoindex("lo"))
    assert any(a.version == 4 for a in lo)
    assert all(isinstance(a, IPv6Interface) for a in lo if a.version == 6)


def test_a_link_local_vip_is_unique_per_link_only(tmp_path: Any) -> None:
    def toml(second_interface: str) -> str:
        path = tmp_path / f"{second_interface}.toml"
        path.write_text('protocol = "vrrp3"\n'
                        '[[vhid]]\ninterface = "eth0"\nvhid = 9\naddr = ["fe80::1/64"]\n'
                        f'[[vhid]]\ninterface = "{second_interface}"\nvhid = 10\n'
                        'addr = ["fe80::1/64"]\n')
        return str(path)

    two = load({"CARP_CONFIG": toml("eth1")}).runtime().instances
    assert [(s.interface, str(s.vips[0])) for s in two] == [("eth0", "fe80::1/64"),
                                                            ("eth1", "fe80::1/64")]
    with pytest.raises(ConfigError, match="addr fe80::1 is already a VIP of"):
        load({"CARP_CONFIG": toml("eth0")})


def test_a_link_local_vip_on_another_link_is_never_taken_for_a_stale_one() -> None:
    """fe80::1 on another interface is that link's router's, whatever its kind."""
    from types import SimpleNamespace

    from sidecar.runtime import stale

    s = load({**BASE, "CARP_ADDR": "fe80::1/64,2001:db8::1/64"}).runtime().instances[0]
    removed: list[Any] = []

    class Nl:
        async def all_addresses(self) -> list[Any]:
            return [(3, IPv6Interface("fe80::1/64"), None), (3, IPv6Interface("2001:db8::1/64"),
                                                             None)]

        async def all_links(self) -> dict[int, tuple[str, int, str]]:
            return {2: ("eth0", 1, "veth"), 3: ("eth9", 1, "veth")}

        async def remove_address(self, index: int, vip: Any) -> bool:
            removed.append((index, str(vip.ip)))
            return True

    instance: Any = SimpleNamespace(s=s, vip_index=2)
    nl: Any = Nl()
    asyncio.run(stale._remove_elsewhere(nl, [instance], [instance]))
    assert removed == [(3, "2001:db8::1")]  # the global one: renamed while we were dead?
