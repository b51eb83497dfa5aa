"""Carrying out what the machine asked for that may be slow — VIP changes (netlink or scripts,
see :mod:`vips`) and the announcements that must follow them — in order, in one task per
instance, so an advert is never late because of them.

Order is kept but bounded: leaving MASTER must never wait for a slow upscript (that is how two
nodes end up holding the VIP), so a VIP drop supersedes the work still queued for the takeover
it undoes — a pending add is skipped, a running upscript is stopped (SIGTERM, then SIGKILL) —
and the downscript runs as soon as the upscript has ended. Announcements (GARP, unsolicited NA)
go out only while MASTER.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from enum import Enum

from sidecar.runtime.serial import SerialWork
from sidecar.runtime.vips import VipBackend

log = logging.getLogger("carp-sidecar")


class Effect(Enum):
    ADD_VIP = "add"
    DROP_VIP = "drop"
    ANNOUNCE = "announce"


class Effects(SerialWork[Effect]):
    def __init__(self, backend: VipBackend, announce: Callable[[], None]) -> None:
        super().__init__()
        self.backend, self._announce = backend, announce  # replaced by a reload
        self._running: Effect | None = None
        self._abort = asyncio.Event()
        self.held = False  # the VIPs were brought up since last dropped (none at start)

    def put(self, effect: Effect) -> None:
        if effect is Effect.DROP_VIP:
            if Effect.ADD_VIP in self._pending:
                self._pending = deque(e for e in self._pending if e is Effect.DROP_VIP)
            if self._running is Effect.ADD_VIP:
                self._abort.set()
        self._put(effect)

    async def _handle(self, effect: Effect) -> None:
        self._running = effect
        self._abort.clear()
        try:
            if effect is Effect.ANNOUNCE:
                self._announce()
            elif effect is Effect.ADD_VIP:
                self.held = True  # an upscript stopped half-way may have added some
                await self.backend.up(self._abort)
            else:
                held, self.held = self.held, False
                await self.backend.down(held)
        except Exception:
            log.exception("Unexpected error while handling %s", effect.value)
        finally:
            self._running = None
