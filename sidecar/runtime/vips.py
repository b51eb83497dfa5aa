"""Where the VIPs of an instance go when it becomes MASTER, chosen once at start: the agent's
own netlink requests, or the classic up/down scripts (which then own the VIPs). With
CARP_VIP_INTERFACE the netlink requests go to that interface (lo) instead of the CARP one."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Protocol

from sidecar.config.runconfig import Vhid, Vip
from sidecar.config.vrrp import OWNER_PRIORITY
from sidecar.net.caps import vip_interface_problem
from sidecar.net.netlink import InterfaceNotFound, Netlink, NetlinkError
from sidecar.runtime.scripts import run_script, script_argv
from sidecar.runtime.startup import StartupError
from sidecar.serve.metrics import InstanceMetrics

log = logging.getLogger("carp-sidecar")
NOT_UP = ("the VIP was not up: nothing for the down script to remove, as when ucarp runs it at "
          "start; harmless")


class VipBackend(Protocol):
    async def up(self, abort: asyncio.Event) -> None: ...

    async def down(self, held: bool = True) -> None:
        """``held``: the VIPs were brought up since they were last dropped (False at start)."""


async def vip_link(netlink: Netlink, s: Vhid) -> int:
    """The index of CARP_VIP_INTERFACE, checked (StartupError naming the variable)."""
    assert s.vip_interface is not None
    try:
        link = await netlink.link(s.vip_interface)
    except InterfaceNotFound:
        raise StartupError(f"CARP_VIP_INTERFACE: no interface named {s.vip_interface!r} "
                           f"({s.name})") from None
    problem = vip_interface_problem(s.vip_interface, link.flags, s.vips)
    if problem:
        raise StartupError(f"{problem} ({s.name})")
    return link.index


class NetlinkVips:
    """Adds and removes every VIP itself, labelled like ``eth0:0`` (IPv4) for ifconfig users."""

    def __init__(self, settings: Vhid, netlink: Netlink, metrics: InstanceMetrics,
                 ifindex: Callable[[], int | None]) -> None:
        self.s, self.nl, self.m, self._ifindex = settings, netlink, metrics, ifindex

    async def up(self, abort: asyncio.Event) -> None:
        await self._change(up=True)

    async def down(self, held: bool = True) -> None:
        await self._change(up=False)

    async def remove(self, vips: list[Vip]) -> None:
        """Those VIPs only (a reload dropped them from the list)."""
        index = self._ifindex()
        if index is not None:
            for vip in vips:
                await self._one(index, vip, up=False)

    async def _change(self, up: bool) -> None:
        index = self._ifindex()
        if index is None:
            if up:
                log.error("Cannot add the VIPs of %s: interface %s is missing", self.s.name,
                          self.s.vip_interface or self.s.interface)
                self.m.vip_errors.inc()
            return  # a missing interface holds no VIP
        for vip in self.s.vips:
            await self._one(index, vip, up)

    async def _one(self, index: int, vip: Vip, up: bool) -> None:
        try:
            if up:
                await self.nl.add_address(index, vip, self.s.if_alias)
            else:
                await self.nl.remove_address(index, vip)
        except NetlinkError as e:
            if not up and e.code == errno.ENODEV:
                return  # the interface went away, and its addresses with it
            self.m.vip_errors.inc()
            log.error("Cannot %s VIP %s on %s: %s", "add" if up else "remove", vip,
                      self.s.vip_interface or self.s.interface, e)


def address_owner(s: Vhid) -> bool:
    """VRRP's address owner (priority 255, its VIPs the node's own addresses, checked at
    start): the addresses are never added or removed, only advertised and announced."""
    return s.protocol != "carp" and s.priority == OWNER_PRIORITY


class OwnedVips:
    """The owner's addresses stay where the system put them: a stop or a demotion that
    removed them would take the node's own address (keepalived's owner keeps it too)."""

    async def up(self, abort: asyncio.Event) -> None:
        pass

    async def down(self, held: bool = True) -> None:
        pass

    async def remove(self, vips: list[Vip]) -> None:
        pass


class ScriptVips:
    """ucarp's way: the upscript and downscript own the VIPs, argv ``script iface vip [xparam]``."""

    def __init__(self, settings: Vhid, metrics: InstanceMetrics,
                 environment: Callable[[str], dict[str, str]],
                 seen: Callable[[], bool] = lambda: True) -> None:
        self.s, self.m, self.environment, self._seen = settings, metrics, environment, seen

    async def up(self, abort: asyncio.Event) -> None:
        await self._run("up", abort)

    async def down(self, held: bool = True) -> None:
        # ucarp's recipe runs the downscript at start too, where `ip addr del` of an address
        # that is not there fails: harmless while the VIP was neither brought up by us nor
        # seen on the interface (a neutral start's leftover is seen: its failure is real)
        await self._run("down", None, None if held or self._seen() else NOT_UP)

    async def _run(self, name: str, abort: asyncio.Event | None,
                   failure_note: str | None = None) -> None:
        s = self.s
        script = s.upscript if name == "up" else s.downscript
        if script is None:
            return
        result = await run_script(script_argv(script, s.interface, s.script_address, s.xparam),
                                  s.script_timeout, abort=abort,
                                  env=self.environment("MASTER" if name == "up" else "BACKUP"),
                                  failure_note=failure_note)
        self.m.script_runs[(name, result.result)].inc()
        self.m.script_duration[name].observe(result.duration)


def backend_for(settings: Vhid, netlink: Netlink, metrics: InstanceMetrics,
                ifindex: Callable[[], int | None],
                environment: Callable[[str], dict[str, str]],
                seen: Callable[[], bool] = lambda: True) -> VipBackend:
    if settings.manages_vip_by_scripts:
        return ScriptVips(settings, metrics, environment, seen)
    if address_owner(settings):
        return OwnedVips()
    return NetlinkVips(settings, netlink, metrics, ifindex)
