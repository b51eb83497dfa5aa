"""An IPv6 VRRP instance's advert source: CARP_SRCIP if set (unicast peers, keepalived's
unicast_src_ip), else the interface's link-local address (RFC 5798 §5.1.2.1, keepalived's
choice), read through netlink at start. Right after the interface comes up it may
have none yet or only a tentative one (duplicate address detection takes about a second): the
start logs why and retries, and refuses only when none appears."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from sidecar.config.runconfig import Vhid
from sidecar.net.caps import source_address
from sidecar.net.netlink import Netlink
from sidecar.runtime.startup import StartupError
from sidecar.runtime.vips import address_owner
from sidecar.serve.logs import fields

log = logging.getLogger("carp-sidecar")
TRIES, WAIT = 20, 0.5  # 10 s: DAD's default is one probe, 1 s


async def ipv6_source(nl: Netlink, s: Vhid, index: int, every: Iterable[Vhid] = ()
                      ) -> IPv4Address | IPv6Address:
    if s.srcip is None:
        return await link_local_source(nl, s, index, vips=local_vips(s, every))
    own = [a.ip for a in await nl.addresses(index) if a.version == 6]
    srcip, problem = source_address(s.srcip, s.interface, own, [v.ip for v in s.vips])
    if srcip is None:
        raise StartupError(problem)
    return srcip


def local_vips(s: Vhid, every: Iterable[Vhid]) -> frozenset[IPv6Address]:
    """The link-local VIPs of ``s`` and of every instance on its interface: never a source
    (an address owner's are its own addresses, its source if so)."""
    return frozenset(v.ip for i in (s, *every) if i.interface == s.interface
                     and not address_owner(i) for v in i.vips
                     if isinstance(v.ip, IPv6Address) and v.ip.is_link_local)


async def link_local_source(nl: Netlink, s: Vhid, index: int, tries: int = TRIES,
                            wait: float = WAIT, vips: frozenset[IPv6Address] = frozenset()
                            ) -> IPv6Address:
    why = ""
    for attempt in range(tries):
        address, why = await nl.link_local(index, vips)
        if address is not None:
            return address
        if attempt % 4 == 0:  # a line every 2 s, not one per try
            log.warning("Interface %s has %s; an IPv6 VRRP instance advertises from its "
                        "link-local address: retrying", s.interface, why,
                        extra=fields(vhid=s.vhid, interface=s.interface))
        await asyncio.sleep(wait)
    raise StartupError(f"CARP_INTERFACE: {s.interface} has {why} after {tries * wait:g} s; an "
                       "IPv6 VRRP instance (CARP_PROTOCOL=vrrp3) advertises from it")
