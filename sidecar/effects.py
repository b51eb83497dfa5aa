"""Carrying out what the machine asked for that may be slow — VIP changes by netlink or by the
up/down scripts, and the gratuitous ARPs that must follow them — strictly in order, in one
task of their own, so an advert is never late because of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum
from ipaddress import IPv4Interface

from pyroute2.netlink.exceptions import NetlinkError

from .config import Settings
from .metrics import Metrics
from .net.garp import build_garp
from .net.netlink import Netlink
from .net.packet import PacketSocket
from .scripts import run_script, script_argv

log = logging.getLogger("carp-sidecar")


class Effect(Enum):
    ADD_VIP = "add"
    DROP_VIP = "drop"
    GARP = "garp"


class Effects:
    def __init__(self, settings: Settings, metrics: Metrics, netlink: Netlink, ifindex: int,
                 sock: PacketSocket, mac: bytes, on_garp: Callable[[], None]) -> None:
        self.s, self.m, self.nl = settings, metrics, netlink
        self.vip: IPv4Interface = settings.vip
        self.ifindex, self.sock, self.mac = ifindex, sock, mac
        self._on_garp = on_garp
        self._queue: asyncio.Queue[Effect] = asyncio.Queue()

    def put(self, effect: Effect) -> None:
        self._queue.put_nowait(effect)

    async def join(self) -> None:
        await self._queue.join()

    async def run(self) -> None:
        while True:
            effect = await self._queue.get()
            try:
                if effect is Effect.GARP:
                    self._send_garp()
                else:
                    await self._vip_change(up=effect is Effect.ADD_VIP)
            except Exception:
                log.exception("Unexpected error while handling %s", effect.value)
            finally:
                self._queue.task_done()

    async def _vip_change(self, up: bool) -> None:
        s, lb = self.s, self.m.labels
        if s.manages_vip_by_scripts:
            script = s.upscript if up else s.downscript
            if script is None:
                return
            result = await run_script(script_argv(script, s.interface, str(self.vip.ip),
                                                  s.xparam), s.script_timeout)
            name = "up" if up else "down"
            self.m.script_runs.labels(**lb, script=name, result=result.result).inc()
            self.m.script_duration.labels(**lb, script=name).observe(result.duration)
            return
        try:
            if up:
                await self.nl.add_address(self.ifindex, self.vip, s.if_alias)
            else:
                await self.nl.remove_address(self.ifindex, self.vip)
        except NetlinkError as e:
            self.m.vip_errors.labels(**lb).inc()
            log.error("Cannot %s VIP %s on %s: %s", "add" if up else "remove", self.vip,
                      s.interface, e)

    def _send_garp(self) -> None:
        try:
            self.sock.send_arp(build_garp(self.mac, self.vip.ip))
        except OSError as e:
            log.warning("Gratuitous ARP failed: %s", e.strerror)
            return
        self.m.garps_sent.labels(**self.m.labels).inc()
        self._on_garp()
