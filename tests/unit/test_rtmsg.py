"""sidecar.net.rtmsg's lookups for check-config, against pyroute2 and the kernel of this host
(reading links and addresses needs no privilege)."""

from __future__ import annotations

import socket
from ipaddress import IPv4Interface

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from sidecar.net.caps import IFF_LOOPBACK
from sidecar.net.rtmsg import RTM_NEWADDR, _ipv4_of, interface, ipv4_addresses


def test_every_interface_lists_the_ipv4_addresses_pyroute2_lists() -> None:
    with IPRoute() as ipr:
        links = {link["index"]: link for link in ipr.get_links()}
        for index, link in links.items():
            listed = ipr.get_addr(index=index, family=socket.AF_INET)
            expected = sorted(IPv4Interface((a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"),
                                             a["prefixlen"])) for a in listed)
            assert sorted(ipv4_addresses(index)) == expected, link.get_attr("IFLA_IFNAME")
            name = link.get_attr("IFLA_IFNAME")
            assert interface(name) == (index, link["flags"] & 0xFFFF), name
    assert IPv4Interface("127.0.0.1/8") in ipv4_addresses(socket.if_nametoindex("lo"))


def test_loopback_flags_and_a_missing_interface() -> None:
    found = interface("lo")
    assert found is not None and found[0] == 1 and found[1] & IFF_LOOPBACK
    assert interface("nosuchif0") is None
    assert ipv4_addresses(0x7FFFFFF0) == []  # no such index: nothing, not an error


def test_a_point_to_point_address_reads_the_local_end() -> None:
    msg = ifaddrmsg()
    msg["header"]["type"] = RTM_NEWADDR
    msg["family"], msg["prefixlen"], msg["index"] = socket.AF_INET, 32, 5
    msg["attrs"] = [("IFA_ADDRESS", "10.9.9.2"), ("IFA_LOCAL", "10.9.9.1")]
    msg.encode()
    body = bytes(msg.data[16:])  # without the netlink header, as the dump hands it over
    assert _ipv4_of(body, 5) == [IPv4Interface("10.9.9.1/32")]
    assert _ipv4_of(body, 6) == []  # another interface's
