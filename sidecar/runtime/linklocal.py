"""An IPv6 VRRP instance's advert source: CARP_SRCIP if set (unicast peers, keepalived's
unicast_src_ip), else the interface's link-local address (RFC 5798 §5.1.2.1, keepalived's
choice), read through netlink at start. Right after the interface comes up it may
have none yet or only a tentative one (duplicate address detection takes about a second): the
start logs why and retries, and refuses only when none appears."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv6Address

from sidecar.config.runconfig import Vhid
from sidecar.net.caps import source_address
from sidecar.net.netlink import Netlink
from sidecar.runtime.startup import StartupError
from sidecar.serve.logs import fields

log = logging.getLogger("carp-sidecar")
TRIES, WAIT = 20, 0.5  # 10 s: DAD's default is one probe, 1 s


async def ipv6_source(nl: Netlink, s: Vhid, index: int) -> IPv4Address | IPv6Address:
    if s.srcip is None:
        return await link_local_source(nl, s, index)
    own = [a.ip for a in await nl.addresses(index) if a.version == 6]
    srcip, problem = source_address(s.srcip, s.interface, own, [v.ip for v in s.vips])
    if srcip is None:
        raise StartupError(problem)
    return srcip


async def link_local_source(nl: Netlink, s: Vhid, index: int, tries: int = TRIES,
                            wait: float = WAIT) -> IPv6Address:
    why = ""
    for attempt in range(tries):
        address, why = await nl.link_local(index)
        if address is not None:
            return address
        if attempt % 4 == 0:  # a line every 2 s, not one per try
            log.warning("Interface %s has %s; an IPv6 VRRP instance advertises from its "
                        "link-local address: retrying", s.interface, why,
                        extra=fields(vhid=s.vhid, interface=s.interface))
        await asyncio.sleep(wait)
    raise StartupError(f"CARP_INTERFACE: {s.interface} has {why} after {tries * wait:g} s; an "
                       "IPv6 VRRP instance (CARP_PROTOCOL=vrrp3) advertises from it")
