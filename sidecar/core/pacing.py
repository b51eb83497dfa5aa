"""Small rules of the machine (sidecar.core.machine): the advert counter, the pace of a
takeover's gratuitous ARPs, and a master's grace while it cannot advertise. Pure."""

from __future__ import annotations

from collections.abc import Callable


class AdvertCounter:
    """ucarp's advert counter: random 64-bit values until a peer's counter is adopted (ucarp
    §2.3), then one more per advert; strict mode never adopts: our own, only ever increased."""

    def __init__(self, rng: Callable[[], int], strict: bool) -> None:
        self._rng, self._strict = rng, strict
        self._last: int | None = None

    def heard(self, counter: int) -> None:
        if not self._strict:
            self._last = counter

    def next(self) -> int:
        if self._last is None and not self._strict:
            return self._rng() & 0xFFFF_FFFF_FFFF_FFFF
        seed = self._rng() if self._last is None else self._last + 1
        self._last = seed & 0xFFFF_FFFF_FFFF_FFFF
        return self._last


class GarpPacer:
    """The GARPs of a takeover: one at once, the rest of ``garp_repeat`` with the second
    advert after it and each one after that."""

    def __init__(self) -> None:
        self._left = 0
        self._adverts_until = 0

    def start(self, repeat: int) -> None:
        self._left, self._adverts_until = repeat - 1, 2

    def stop(self) -> None:
        self._left = 0

    def after_advert(self) -> bool:
        """An advert went out: is a GARP due with it?"""
        if self._left <= 0:
            return False
        self._adverts_until -= 1
        if self._adverts_until > 0:
            return False
        self._left -= 1
        self._adverts_until = 1
        return True


class Grace:
    """A MASTER that cannot advertise (its source address gone, sends failing) keeps the VIP
    until a master-down interval after its last advert left, when its backups take over: they
    cannot sooner, so dropping it at once leaves nobody answering (a flapping address: most of
    the time). Meanwhile it still hears adverts and yields to whoever speaks; if it can
    advertise again first, it goes on with the advert that was due, without a transition."""

    def __init__(self) -> None:
        self.until: int | None = None  # µs; set while in grace
        self._advert_at: int | None = None  # the advert that was due when it began

    @property
    def active(self) -> bool:
        return self.until is not None

    def start(self, until: int, advert_at: int | None) -> None:
        self.until, self._advert_at = until, advert_at

    def end(self) -> int | None:
        """Over (either way): the advert deadline that was pending."""
        due, self.until, self._advert_at = self._advert_at, None, None
        return due
