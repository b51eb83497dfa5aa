"""Netlink through pyroute2's asyncio API: the interface, the VIP, and link/address events."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address
from typing import Any

from sidecar.net import rtmsg
from sidecar.net._pyroute2 import AsyncIPRoute, NetlinkError
from sidecar.net.held import HeldVips
from sidecar.net.rtaddr import RTM_DELADDR, RTM_NEWADDR, AddressWriter

__all__ = ["AddressEvent", "InterfaceNotFound", "Link", "LinkEvent", "Netlink", "NetlinkError"]

IFF_RUNNING = 0x40
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
AF_INET = 2
AF_INET6 = 10
IFA_F_NODAD = 0x02  # a VIP moves between hosts: duplicate address detection would delay it
IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40  # a link-local address not usable as a source
Vip = IPv4Interface | IPv6Interface


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    mac: bytes
    running: bool
    flags: int = 0  # IFF_*: CARP_VIP_INTERFACE must be a loopback or NOARP one


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """Any interface appeared, changed or went away (``deleted``); the agent picks its own."""

    index: int
    name: str
    mac: bytes
    running: bool
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class AddressEvent:
    index: int
    address: IPv4Address | IPv6Address
    added: bool


class InterfaceNotFound(LookupError):
    pass


def _mac(msg: Any) -> bytes:
    return bytes.fromhex((msg.get("IFLA_ADDRESS") or "00:00:00:00:00:00").replace(":", ""))


def _vip(msg: Any) -> Vip | None:
    address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    if msg.get("family") == AF_INET:
        return IPv4Interface(f"{address}/{msg['prefixlen']}")
    if msg.get("family") == AF_INET6:
        return IPv6Interface(f"{address}/{msg['prefixlen']}")
    return None


class Netlink:
    """Requests on one socket; :meth:`events` opens its own multicast-bound socket."""

    def __init__(self, held: HeldVips | None = None) -> None:
        self._ipr = AsyncIPRoute()
        self.held = held  # every address added, for the next run if this one is killed
        self._recorded: asyncio.Future[None] | None = None  # this turn's write of the record
        self._writer: AddressWriter | None = None  # adds and removes, batched (its docstring)
        # One request at a time: the instances' effects run concurrently, and pyroute2 answers
        # a second request on a socket still busy with the first with EBUSY.
        self._busy = asyncio.Lock()

    async def link(self, ifname: str) -> Link:
        """By ioctl, not pyroute2: see :func:`rtmsg.link` (each lookup used to keep ~4 KB)."""
        found = rtmsg.link(ifname)
        if found is None:
            raise InterfaceNotFound(ifname)
        index, flags, mac = found
        return Link(index, mac, bool(flags & IFF_RUNNING), flags)

    async def ipv4_addresses(self, index: int) -> list[IPv4Interface]:
        async with self._busy:
            msgs = [m async for m in await self._ipr.get_addr(index=index, family=AF_INET)]
        return [IPv4Interface(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}") for m in msgs]

    async def link_local(self, index: int, vips: Collection[IPv6Address] = ()
                         ) -> tuple[IPv6Address | None, str]:
        """The interface's usable IPv6 link-local address (an IPv6 VRRP instance's source), or
        None and why: none yet, or still tentative (duplicate address detection), or failed.
        ``vips``: link-local VIPs, never the source (keepalived's
        ignore_address_if_ours_or_link_local): one a master holds, or a restart left, would
        otherwise change our address in the election and in the peers' view."""
        async with self._busy:
            msgs = [m async for m in await self._ipr.get_addr(index=index, family=AF_INET6)]
        why = "no IPv6 link-local address"
        for m in msgs:
            ip = IPv6Address(m.get("IFA_ADDRESS"))
            flags = m.get("IFA_FLAGS") or m.get("flags") or 0
            if not ip.is_link_local or ip in vips:
                continue
            if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                why = f"only {ip}, " + ("which failed duplicate address detection"
                                        if flags & IFA_F_DADFAILED else "still tentative (DAD)")
                continue
            return ip, ""
        return None, why

    async def addresses(self, index: int) -> list[Vip]:
        """Every IPv4 and IPv6 address of the interface."""
        async with self._busy:
            msgs = [m async for m in await self._ipr.get_addr(index=index)]
        return [vip for vip in map(_vip, msgs) if vip is not None]

    async def all_addresses(self) -> list[tuple[int, Vip, str | None]]:
        """Every IPv4 and IPv6 address of every interface: its interface's index, the address,
        its label (IPv4 only; the interface's name unless set, like ``eth0:0``)."""
        async with self._busy:
            msgs = [m async for m in await self._ipr.get_addr()]
        return [(m["index"], vip, m.get("IFA_LABEL")) for m in msgs
                if (vip := _vip(m)) is not None]

    async def all_links(self) -> dict[int, tuple[str, int, str]]:
        """Every interface: index -> (name, ARPHRD_* type, kind: "veth", "dummy"... or "")."""
        async with self._busy:
            msgs = [m async for m in await self._ipr.get_links()]
        return {m["index"]: (m.get("IFLA_IFNAME") or "", m["ifi_type"],
                             m.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "")
                for m in msgs}

    async def add_address(self, index: int, vip: Vip, label: str | None) -> bool:
        """Add (IPv6 without duplicate address detection); False if it was already there."""
        if self.held is not None:  # before: killed in between, the next run finds it
            self.held.adding(index, str(vip.ip), vip.network.prefixlen)
            await self._record()
        code = await self._write(RTM_NEWADDR, index, vip, label if vip.version == 4 else None,
                                 IFA_F_NODAD if vip.version == 6 else 0)
        if code == errno.EEXIST:
            return False
        if code:
            raise NetlinkError(code)
        return True

    async def remove_address(self, index: int, vip: Vip) -> bool:
        """Remove whatever prefix it has; False if it was not there."""
        removed = False
        for have in await self.addresses(index):
            if have.ip != vip.ip:
                continue
            code = await self._write(RTM_DELADDR, index, have)
            if code not in (0, errno.EADDRNOTAVAIL):
                raise NetlinkError(code)
            removed = removed or code == 0
        if self.held is not None:  # not on the interface now, however it left
            self.held.removed(index, str(vip.ip))
            await self._record()
        return removed

    async def _record(self) -> None:
        """Every change to the record made in this turn of the event loop, written once at its
        end: 255 VHIDs x 16 VIPs becoming MASTER together are one rewrite, not 4080."""
        if self._recorded is None:
            loop = asyncio.get_running_loop()
            self._recorded = loop.create_future()
            loop.call_soon(self._write_record)
        await asyncio.shield(self._recorded)  # one caller cancelled cancels no other's

    def _write_record(self) -> None:
        done, self._recorded = self._recorded, None
        try:
            if self.held is not None:
                self.held.flush()
        finally:
            if done is not None:
                done.set_result(None)

    async def _write(self, kind: int, index: int, vip: Vip, label: str | None = None,
                     flags: int = 0) -> int:
        if self._writer is None:
            self._writer = AddressWriter(asyncio.get_running_loop())
        return await self._writer.request(kind, index, str(vip.ip), vip.network.prefixlen,
                                          label, flags)

    async def events(self) -> AsyncIterator[LinkEvent | AddressEvent]:
        """Link and address events of every interface (the interface we follow may be
        deleted and come back under a new index, so the caller filters)."""
        monitor = AsyncIPRoute()
        try:
            await monitor.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            while True:  # get() yields one batch of messages per call
                async for msg in monitor.get():
                    event, index = msg.get("event"), msg.get("index")
                    if event in ("RTM_NEWLINK", "RTM_DELLINK"):
                        yield LinkEvent(index, msg.get("IFLA_IFNAME") or "", _mac(msg),
                                        bool(msg["flags"] & IFF_RUNNING),
                                        deleted=event == "RTM_DELLINK")
                    elif event in ("RTM_NEWADDR", "RTM_DELADDR"):
                        address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                        if address:
                            yield AddressEvent(index, ip_address(address),
                                               event == "RTM_NEWADDR")
        finally:
            monitor.close()

    def close(self) -> None:
        self._ipr.close()
        if self._writer is not None:
            self._writer.close()
        if self.held is not None:
            self.held.close()
