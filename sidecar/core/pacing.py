"""Small rules of the machine (sidecar.core.machine): its waits and comparison key, the
advert counter, the pace of a takeover's gratuitous ARPs, and a master's grace while it cannot
advertise. Pure."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.core.actions import Address, Params
from sidecar.core.intervals import (
    CS_US,
    advert_interval_us,
    handover_delay_us,
    master_down_interval_us,
    skew_us,
    vrrp_master_down_us,
    vrrp_skew_us,
)

# BSD's demotion as a skew: a backup whose replicated paths are behind waits as if its advskew
# were at least this, so a fresh backup wins the race for a dead master's VIP.
SYNC_BEHIND_SKEW = 240


def le_order(ip: Address) -> int:
    """ucarp compares raw s_addr on little-endian hosts: the last octet is most significant."""
    return int.from_bytes(ip.packed, "little")


class Timing:
    """The machine's intervals and its comparison key, from its parameters; its waits as a
    BACKUP also from whether its replicas are behind (adverts always keep the own skew)."""

    params: Params
    sync_behind: bool
    _master_interval_us: int | None  # the master's, as last advertised

    @property
    def vrrp_version(self) -> int:
        """2 or 3 for a VRRP instance, 0 for CARP."""
        return {"vrrp2": 2, "vrrp3": 3}.get(self.params.protocol, 0)

    @property
    def advert_interval_us(self) -> int:
        if self.params.protocol != "carp":
            return self.params.advert_int_cs * CS_US
        return advert_interval_us(self.params.advbase, self.params.advskew)

    @property
    def vrrp_master_interval_us(self) -> int:
        """VRRP's Master_Adver_Interval: v3's as the master last advertised it, else ours."""
        return self._master_interval_us or self.advert_interval_us

    def _vrrp_wait(self, priority: int) -> int:
        return vrrp_master_down_us(self.vrrp_version, priority, self.vrrp_master_interval_us,
                                   self.params.deadratio)

    @property
    def vrrp_wait_priority(self) -> int:
        """Behind (replicas not fresh): wait as with skew SYNC_BEHIND_SKEW, priority 16."""
        p = self.params.priority
        return min(p, 256 - SYNC_BEHIND_SKEW) if self.sync_behind else p

    @property
    def master_down_interval_us(self) -> int:
        """As configured (what peers expect of this node, and what status shows)."""
        p = self.params
        if p.protocol != "carp":
            return self._vrrp_wait(p.priority)
        return master_down_interval_us(p.advbase, p.advskew, p.deadratio, p.vrrp3_dead_timer,
                                       self._master_interval_us)

    @property
    def local_key(self) -> tuple[int, int]:
        return (self.params.advbase, skew_us(self.params.advskew))

    @property
    def wait_skew(self) -> int:
        advskew = self.params.advskew
        return max(advskew, SYNC_BEHIND_SKEW) if self.sync_behind else advskew

    @property
    def master_down_wait_us(self) -> int:
        """A BACKUP's wait for the master's next advert. Behind, it also covers a live master
        slower than our own timeout: ucarp's "would time out" takeover is off then, and the
        timer must not do the same a little later."""
        if self.params.protocol != "carp":  # a live master is never preempted while behind
            return self._vrrp_wait(self.vrrp_wait_priority)
        p, extra = self.params, skew_us(self.wait_skew) - skew_us(self.params.advskew)
        wait = self.master_down_interval_us + extra
        if self.sync_behind and self._master_interval_us is not None:
            wait = max(wait, p.deadratio * self._master_interval_us + skew_us(self.wait_skew))
        return wait

    @property
    def handover_wait_us(self) -> int:
        """After a bow-out (CARP) or a priority 0 advert (VRRP: Skew_Time, RFC 3768 6.4.2)."""
        if self.params.protocol != "carp":
            return vrrp_skew_us(self.vrrp_version, self.vrrp_wait_priority,
                                self.vrrp_master_interval_us)
        return handover_delay_us(self.wait_skew)


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
