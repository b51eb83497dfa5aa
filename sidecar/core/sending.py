"""Whether our adverts can leave, and strict mode's counter: the session's sending rules.

A node its peers cannot hear must not hold the VIP: its source address missing, or sends that
fail, count as a fault like link down. An unroutable errno is a fault at once; a full queue
(ENOBUFS) may pass, so only a run of FAILED_SENDS_FAULT failures is one.

Strict mode's counter increases across restarts whatever the clock says: it starts above the
wall clock in µs and above the mark an earlier run kept, and the mark is reserved ahead, one
write per COUNTER_RESERVE adverts.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.actions import Address

UNROUTABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENODEV,
                        errno.ENXIO, errno.ENETDOWN, errno.EPERM, errno.EACCES})  # EPERM: firewall
FAILED_SENDS_FAULT = 3  # consecutive failed adverts of any kind (ucarp gives up after three)
COUNTER_RESERVE = 1 << 32  # strict: counters reserved per write: 194 days of adverts at 4 ms
COUNTER_MAX = (1 << 64) - 1
SEND_CHECK_INTERVAL = 1.0  # s between checks that adverts can leave (unicast; after errors)


@dataclass(slots=True)
class LinkState:
    present: bool = True  # the interface exists
    running: bool = False  # its carrier is up
    source_present: bool = True  # our source address is on it
    send_error: str | None = None  # why adverts cannot leave, while they cannot
    failed_sends: int = 0
    sent_at: float | None = None  # when our last advert left: the backups wait from then

    def sent(self, now: float, ok: bool, error: str, errno_: int) -> bool:
        """Count one advert's outcome; True when this failure makes it a fault."""
        if ok:
            self.failed_sends, self.sent_at = 0, now
            return False
        self.failed_sends += 1
        if self.send_error is None and (errno_ in UNROUTABLE
                                        or self.failed_sends >= FAILED_SENDS_FAULT):
            self.send_error = error
            return True
        return False

    def checked(self, error: str | None) -> bool:
        """The route check's answer; True when it changes whether adverts can leave. A fault it
        clears needs a run of failures of its own before the next."""
        if error == self.send_error or not self.source_present:
            return False
        if error is None:
            self.failed_sends = 0
        self.send_error = error
        return True

    def next_check(self, now: float, armed: float | None, unicast: bool) -> float | None:
        """When to check that adverts can leave: unicast, every second, so a backup never
        takes over unable to advertise; after a failed send, any mode until it works.
        Otherwise never (no wake-ups at all)."""
        if not (unicast or self.send_error is not None):
            return None
        return armed if armed is not None else now + SEND_CHECK_INTERVAL

    def reason(self, srcip: Address, interface: str) -> str | None:
        """Why adverts cannot leave, or None."""
        if not self.source_present:
            return f"source address {srcip} is not on {interface}"
        return self.send_error


class StrictCounter:
    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall  # Unix time
        self.floor = 0  # an earlier run may have used counters up to this
        self.reserved: int | None = None  # reserved up to this (None: not kept)

    def seed(self) -> int:
        """The first counter: above the wall clock in µs and above the floor."""
        return max(int(self._wall() * 1_000_000), self.floor + 1)

    def keep(self, mark: int | None) -> int:
        """Before the first advert: start above ``mark`` (what an earlier run reserved); the
        end of the first reservation, to be written before the advert leaves (then set
        :attr:`reserved`)."""
        self.floor = mark or 0
        return min(self.seed() + COUNTER_RESERVE, COUNTER_MAX)

    def due(self, counter: int) -> int | None:
        """Before the advert with ``counter`` leaves: a new reservation's end, if one is due
        (past half the current one: a crash after the advert must not reuse its counter)."""
        if self.reserved is not None and counter > self.reserved - COUNTER_RESERVE // 2:
            return min(counter + COUNTER_RESERVE, COUNTER_MAX)
        return None
