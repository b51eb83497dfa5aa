"""Two small rules of what the machine sends (sidecar.core.machine): the advert counter and
the pace of a takeover's gratuitous ARPs. Pure."""

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
