"""One instance's timer: armed with ``loop.call_at`` at its session's next deadline.

A timer that runs late first reads what is queued on the instance's interface. An advert that
came before the deadline is still unread only if the loop was not running when it came: the
process was frozen (SIGSTOP, a VM snapshot or migration, `docker pause`) or busy. Acting on the
expired master-down timer first would make a thawed backup take over from a master that never
stopped advertising, and step back a millisecond later on that master's queued advert: a
transition that counts as a flap, though the VIP never moved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sidecar.core.intervals import US, read_queue_first, stalled
from sidecar.core.session import Session
from sidecar.net.channel import Channel

log = logging.getLogger("carp-sidecar")


class SessionTimer:
    def __init__(self, loop: asyncio.AbstractEventLoop, session: Session, channel: Channel,
                 fire: Callable[[float], None], lateness: Callable[[float], None],
                 where: dict[str, Any]) -> None:
        """``fire(now)``: the deadline has come; ``lateness(s)``: how late each run was."""
        self.loop, self.session, self.channel = loop, session, channel
        self.fire, self.lateness, self.where = fire, lateness, where
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = 0.0

    def reschedule(self) -> None:
        deadline = self.session.next_deadline()
        if self._handle is not None and deadline == self._armed_for:
            return
        self.cancel()
        if deadline is not None:
            self._armed_for = deadline
            self._handle = self.loop.call_at(deadline, self._expired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expired(self) -> None:
        self._handle = None
        now, deadline = self.loop.time(), self._armed_for
        self.lateness(now - deadline)
        if read_queue_first(round((now - deadline) * US)):
            self._read_queue(now - deadline)
            now, due = self.loop.time(), self.session.next_deadline()
            if due is None or due > now:  # what was queued moved the deadline
                self.reschedule()
                return
            deadline = due
        self.fire(max(now, deadline))

    def _read_queue(self, late: float) -> None:
        frames = self.channel.drain()  # an advert for us re-arms this timer: decided again
        self.cancel()
        params = self.session.config.params
        if frames and stalled(round(late * US), params.advbase, params.advskew):
            log.warning("The agent stood still (a timer ran %.1f s late: SIGSTOP, a VM snapshot, "
                        "docker pause?): read %d queued frame(s) before acting on its timers",
                        late, frames, extra=self.where)
