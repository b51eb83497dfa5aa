"""Carrying out what the machine asked for that may be slow — VIP changes by netlink or by the
up/down scripts, and the gratuitous ARPs that must follow them — in order, in one task of their
own, so an advert is never late because of them.

Order is kept but bounded: leaving MASTER must never wait for a slow upscript (that is how two
nodes end up holding the VIP), so a VIP drop supersedes the work still queued for the takeover
it undoes — a pending add is skipped, a running upscript is stopped (SIGTERM, then SIGKILL) —
and the downscript runs as soon as the upscript has ended. A GARP is sent only while MASTER.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from collections.abc import Callable
from enum import Enum
from ipaddress import IPv4Interface

from pyroute2.netlink.exceptions import NetlinkError

from .config import Settings
from .metrics import Metrics
from .net.garp import build_garp
from .net.netlink import Netlink
from .net.packet import Attached
from .scripts import run_script, script_argv

log = logging.getLogger("carp-sidecar")


class Effect(Enum):
    ADD_VIP = "add"
    DROP_VIP = "drop"
    GARP = "garp"


class Effects:
    def __init__(self, settings: Settings, metrics: Metrics, netlink: Netlink,
                 attached: Callable[[], Attached | None], is_master: Callable[[], bool],
                 on_garp: Callable[[], None]) -> None:
        self.s, self.m, self.nl = settings, metrics, netlink
        self.vip: IPv4Interface = settings.vip
        self._attached, self._is_master, self._on_garp = attached, is_master, on_garp
        self._pending: deque[Effect] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running: Effect | None = None
        self._abort = asyncio.Event()

    def put(self, effect: Effect) -> None:
        if effect is Effect.DROP_VIP:
            if Effect.ADD_VIP in self._pending:
                self._pending = deque(e for e in self._pending if e is Effect.DROP_VIP)
            if self._running is Effect.ADD_VIP:
                self._abort.set()
        self._pending.append(effect)
        self._idle.clear()
        self._wake.set()

    async def join(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                effect = self._running = self._pending.popleft()
                self._abort.clear()
                try:
                    if effect is Effect.GARP:
                        self._send_garp()
                    else:
                        await self._vip_change(up=effect is Effect.ADD_VIP)
                except Exception:
                    log.exception("Unexpected error while handling %s", effect.value)
                finally:
                    self._running = None
            self._idle.set()

    async def _vip_change(self, up: bool) -> None:
        s, lb = self.s, self.m.labels
        if s.manages_vip_by_scripts:
            script = s.upscript if up else s.downscript
            if script is None:
                return
            result = await run_script(script_argv(script, s.interface, str(self.vip.ip),
                                                  s.xparam), s.script_timeout,
                                      abort=self._abort if up else None)
            name = "up" if up else "down"
            self.m.script_runs.labels(**lb, script=name, result=result.result).inc()
            self.m.script_duration.labels(**lb, script=name).observe(result.duration)
            return
        attached = self._attached()
        if attached is None:
            if up:
                log.error("Cannot add VIP %s: interface %s is missing", self.vip, s.interface)
                self.m.vip_errors.labels(**lb).inc()
            return  # a missing interface holds no VIP
        try:
            if up:
                await self.nl.add_address(attached.index, self.vip, s.if_alias)
            else:
                await self.nl.remove_address(attached.index, self.vip)
        except NetlinkError as e:
            if not up and e.code == errno.ENODEV:
                return  # the interface went away, and its addresses with it
            self.m.vip_errors.labels(**lb).inc()
            log.error("Cannot %s VIP %s on %s: %s", "add" if up else "remove", self.vip,
                      s.interface, e)

    def _send_garp(self) -> None:
        attached = self._attached()
        if attached is None or not self._is_master():
            return  # a GARP from a non-master would pull clients to the wrong node
        try:
            attached.sock.send_arp(build_garp(attached.mac, self.vip.ip))
        except OSError as e:
            log.warning("Gratuitous ARP failed: %s", e.strerror)
            return
        self.m.garps_sent.labels(**self.m.labels).inc()
        self._on_garp()
