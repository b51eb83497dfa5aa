"""An IPv6 VRRP instance's advert source: CARP_SRCIP if set (unicast peers, keepalived's
unicast_src_ip), else the interface's link-local address (RFC 5798 §5.1.2.1, keepalived's
choice), read through netlink at start. Right after the interface comes up it may
have none yet or only a tentative one (duplicate address detection takes about a second): the
start logs why and retries, and refuses only when none appears. Without CARP_SRCIP the instance
follows it afterwards: an interface re-created (another MAC) or given another link-local
address is read again, and the session, send port and channel take the new source."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from sidecar.config.runconfig import Vhid
from sidecar.net.caps import source_address
from sidecar.net.netlink import AddressEvent, Netlink
from sidecar.runtime.startup import StartupError
from sidecar.runtime.vips import address_owner
from sidecar.serve.logs import fields

if TYPE_CHECKING:
    from sidecar.runtime.instance import Instance

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


def follows(s: Vhid) -> bool:
    """Its source is the link-local address, whichever the interface has now."""
    return s.ipv6 and s.srcip is None


async def check_source(instance: Instance, index: int) -> None:
    """A re-created interface: is our source address on it yet? (netlink events follow). An
    instance following the link-local address reads it again: the interface may be back with
    another MAC, so another address, and it could never advertise from the old one."""
    s, nl = instance.s, instance._nl
    try:
        if follows(s):
            fresh, why = await nl.link_local(index, never_source(instance))
            if fresh is None:
                log.warning("Interface %s has %s; waiting for a link-local address to "
                            "advertise from", s.interface, why,
                            extra=fields(vhid=s.vhid, interface=s.interface))
            elif fresh != instance.srcip and instance.channel.ifindex == index:
                adopt(instance, fresh)
            present = fresh is not None
        else:
            listed = await (nl.addresses(index) if s.ipv6 else nl.ipv4_addresses(index))
            present = any(a.ip == instance.srcip for a in listed)
    except Exception as e:  # netlink trouble: the next address event decides
        log.warning("Cannot list the addresses of %s: %s", s.interface, e)
        return
    if instance.channel.ifindex == index:
        instance._do(instance.session.set_source(instance.loop.time(), present))


def link_local_changed(instance: Instance, event: AddressEvent) -> bool:
    """On the interface of an instance following it, a link-local address (no VIP of ours)
    came or became usable, or the one in use went: read which one to use (if any)."""
    s, address = instance.s, event.address
    return (follows(s) and event.index == instance.channel.ifindex
            and isinstance(address, IPv6Address) and address.is_link_local
            and event.added == (address != instance.srcip)
            and address not in never_source(instance))


def never_source(instance: Instance) -> frozenset[IPv6Address]:
    """The link-local VIPs of every instance on the interface now (the channel's): one a
    master adds is listed first by the kernel, and must never become our source."""
    every = (getattr(r, "s", None) for r in instance.channel.every())
    return local_vips(instance.s, (v for v in every if isinstance(v, Vhid)))


def adopt(instance: Instance, new: IPv6Address) -> None:
    from sidecar.runtime.instance import session_config  # (it imports this module)

    s = instance.s
    log.warning("Interface %s: link-local address %s now (was %s): advertising from it",
                s.interface, new, instance.srcip,
                extra=fields(vhid=s.vhid, interface=s.interface))
    instance.channel.set_source(instance.srcip, new)
    instance.srcip = instance.port.srcip = instance.reporter.srcip = new
    instance.session.reconfigure(instance.loop.time(), session_config(s, new))
