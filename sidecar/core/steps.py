"""The state machine's steps (sidecar.core.machine): one VHID's state, and what becoming or
leaving MASTER, arming the master-down wait and building an advert change in it. The events
that take these steps, and the rules for when, are :class:`~sidecar.core.machine.Machine`'s.
Pure; deadlines in integer µs."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.core.actions import (
    Action,
    Address,
    AddVip,
    Conflict,
    DropVip,
    Params,
    Reason,
    SendAdvert,
    SendGarp,
    State,
    Stopped,
    Transition,
)
from sidecar.core.intervals import US, to_us
from sidecar.core.pacing import AdvertCounter, GarpPacer, Grace, Timing
from sidecar.core.protocol import BOW_OUT


class Steps(Timing):
    """A VHID's state and its steps (after ucarp's / BSD's functions); events: Machine."""

    def __init__(self, params: Params, rng: Callable[[], int]) -> None:
        self.params = params
        self.state = State.INIT
        self.maintenance = False  # demoted by an operator
        self.healthy = True  # the co-located service passes its checks
        self.link_up = True
        self.can_advertise = True  # our adverts can leave: source address present, sends work
        self._stop_at: int | None = None  # µs; set while a MASTER waits for its successor
        self._counter = AdvertCounter(rng, params.strict)
        self._advert_at: int | None = None  # deadlines in integer µs
        self._master_down_at: int | None = None
        self._master_down_reason = Reason.MASTER_DOWN
        self._master_down_peer: Address | None = None
        self._preempt_after = 0  # µs: no preemption before this (start, link back)
        self._vip_undecided = False  # neutral start: a VIP found in place is neither ours nor not
        self._master_interval_us: int | None = None  # the master's, as last advertised
        self._garps = GarpPacer()
        self.grace = Grace()  # a MASTER that cannot advertise, until its backups take over
        self._master_since: int | None = None  # µs
        self._quiet_until = 0  # µs: no conflict GARP / log line before this
        self._paused_until = 0  # µs: after a step down, no takeover of any kind before this
        self.sync_behind = False  # replicated paths not fresh: see set_sync_behind
        self._preempt_held = False  # sync_behind held a preempt back: the next one is caught up
        self._armed_at = 0  # µs: when the master-down (or handover) wait began

    @property
    def demoted(self) -> bool:
        return self.maintenance or not self.healthy

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def next_deadline(self) -> float | None:
        """When :meth:`timer_expired` wants to be called, in the caller's clock (seconds)."""
        deadline = next((d for d in (self._stop_at, self._advert_at, self._master_down_at,
                                     self.grace.until) if d is not None), None)
        return None if deadline is None else deadline / US

    # ---- steps ----
    @property
    def _link_usable(self) -> bool:
        return (self.link_up or self.params.ignoreifstate) and self.can_advertise

    def _finish_stop(self) -> list[Action]:
        self._stop_at = None
        self.state = State.INIT
        self._master_since = None
        return [DropVip(), Transition(State.MASTER, State.INIT, Reason.STOP), Stopped()]

    @property
    def _preempt_reason(self) -> Reason:
        return Reason.SYNC_CAUGHT_UP if self._preempt_held else Reason.PREEMPT

    def _become_master(self, now: float, reason: Reason, peer: Address | None) -> list[Action]:
        old = self.state
        self._vip_undecided = False
        self._preempt_held = False
        self.state = State.MASTER
        self._master_since = to_us(now)
        self._master_down_at = None
        if self.params.protocol != "carp":  # VRRP's Master_Adver_Interval: ours again
            self._master_interval_us = None
        self._garps.start(self.params.garp_repeat)
        actions: list[Action] = [Transition(old, State.MASTER, reason, peer), AddVip(), SendGarp()]
        actions.append(self._advert())
        self._advert_at = to_us(now) + self.advert_interval_us
        return actions

    def _periodic_advert(self, now: float) -> list[Action]:
        actions: list[Action] = [self._advert()]
        self._advert_at = to_us(now) + self.advert_interval_us
        if self._garps.after_advert():
            actions.append(SendGarp())
        return actions

    def _leave_master(self, reason: Reason, peer: Address | None = None) -> list[Action]:
        self.state = State.BACKUP
        self._master_since = None
        self._advert_at = None
        self._garps.stop()
        self.grace.end()
        return [DropVip(), Transition(State.MASTER, State.BACKUP, reason, peer)]

    def _hand_over(self, now: float, reason: Reason) -> list[Action]:
        """Leaving on purpose: a bow-out makes a backup take over at once (in grace: silently)."""
        if self.grace.active:
            return self._leave_master(reason)
        actions: list[Action] = [self._bow_out_advert(), *self._leave_master(reason)]
        self._arm_master_down(now)
        return actions

    def _arm_master_down(self, now: float) -> None:
        self._advert_at = None
        self._armed_at = to_us(now)
        # a step-down's pause holds whatever armed the timer (a link or an address back)
        self._master_down_at = max(self._armed_at + self.master_down_wait_us, self._paused_until)
        self._master_down_reason, self._master_down_peer = Reason.MASTER_DOWN, None

    def _advert(self) -> SendAdvert:
        return SendAdvert(self.params.advbase, self.params.advskew, self._counter.next())

    def _bow_out_advert(self) -> SendAdvert:
        return SendAdvert(BOW_OUT, BOW_OUT, self._counter.next(), handover=True)

    def _reassert(self, now: float, src: Address, advert: bool = False) -> list[Action]:
        """We stay MASTER over a worse one. Unauthenticated fields (source, skew) make this
        reachable by replays at line rate, so what it costs us (GARPs, log lines) is limited
        to once per advert interval. ``advert`` (VRRP): an advert goes with the GARP, as
        keepalived's master answers a lower priority ("forcing new election")."""
        t = to_us(now)
        actions: list[Action] = []
        settled = self._master_since is not None and t - self._master_since > self.advert_interval_us
        quiet = t < self._quiet_until
        if settled:
            actions.append(Conflict(src, announce=not quiet))
        if not quiet:
            self._quiet_until = t + self.advert_interval_us
            self._garps.start(self.params.garp_repeat)
            actions.append(SendGarp())
            if advert:
                actions.append(self._advert())
        return actions
