"""One VHID's protocol, pure: the machine, the peer tables, the replay window and the ARP
claims behind one object that takes what happened and says what to do (aioquic's style).

Inputs are method calls with the time (``now``: a monotonic clock in seconds; the caller's
wall clock is injected once, for the peer table and strict counters). Each returns a list of
outputs, in order: the machine's actions (:class:`~sidecar.core.machine.SendAdvert`, ...),
the session's own requests (:class:`SendProbe`, :class:`CheckSending`,
:class:`ReserveCounters`) and events for whoever reports (metrics, logs, the notify script).
:meth:`Session.next_deadline` says when :meth:`Session.timer` is due: the machine's timers,
the peer sweep, the stale-holder probe, the GARP refresh and the send check share one timer.

The rules here are the ones a receiver needs beyond ucarp's machine: strict mode's replay
window, the bad-key claim (a sender of our VHID with another key is remembered, never obeyed),
the re-announce after a former master falls silent or another MAC claims a VIP, and whether
our adverts can leave at all (a node its peers cannot hear must not hold the VIP).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.actions import Address, planned
from sidecar.core.claims import STALE_LOG_BACKOFF, VipClaims
from sidecar.core.machine import (
    Action,
    Machine,
    Params,
    Reason,
    Resume,
    Resumed,
    SendAdvert,
    SendGarp,
    State,
    Transition,
)
from sidecar.core.outputs import (
    AdvertisableChanged,
    CheckSending,
    FormerMasterSilent,
    HealthChanged,
    MaintenanceChanged,
    Notify,
    Output,
    PeersEvicted,
    PeersSwept,
    ReserveCounters,
    SendProbe,
    SteppingDown,
    SyncGateChanged,
    TookOver,
)
from sidecar.core.peers import PeerTable, PeerWatch, ReplayGuard
from sidecar.core.protocol import Expect
from sidecar.core.screen import screen
from sidecar.core.sending import COUNTER_RESERVE, SEND_CHECK_INTERVAL, LinkState, StrictCounter

__all__ = ["COUNTER_RESERVE", "SEND_CHECK_INTERVAL", "STALE_LOG_BACKOFF", "Session", "SessionConfig"]

PEER_CAPACITY = 32  # senders of our vhid remembered at once (a replay flood forges sources)
ARP_CAPACITY = 32  # other MACs announcing our VIP remembered at once (and stale holders)
PROBE_AFTER_TAKEOVER = 2.0  # s: the old master has dropped its VIP by then, unless it cannot
_MASTER = State.MASTER  # an enum member looked up once: this test runs on every advert


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What the session needs of a VHID's settings."""

    params: Params  # own_ip is our source address
    expect: Expect  # the codec's checks: our vhid, key, VIP, group, peers
    interface: str  # for the reasons it gives
    probe_interval: float = 0.0  # s between stale-holder probes while MASTER; 0: none
    garp_refresh: float = 0.0  # s between GARP refreshes while MASTER; 0: none

    @property
    def srcip(self) -> Address:
        return self.params.own_ip

    @property
    def unicast(self) -> bool:
        """Listed peers: routes are checked every second while running."""
        return self.expect.peers is not None


@dataclass(slots=True)
class _Deadlines:
    probe: float = 0.0
    garp: float | None = None
    check: float | None = None


class Session(VipClaims):
    def __init__(self, config: SessionConfig, wall: Callable[[], float],
                 rng: Callable[[], int], jitter: Callable[[], float] = lambda: 1.0) -> None:
        """``wall``: Unix time; ``rng``: 64-bit random counters (strict mode seeds from the
        wall clock instead); ``jitter``: a factor near 1 for the probe period."""
        self.config, self._wall, self._jitter = config, wall, jitter
        self.counters = StrictCounter(wall)  # strict mode's, kept across restarts
        self.machine = Machine(config.params, rng=self.counters.seed if config.params.strict
                               else rng)
        self.watch = PeerWatch(PeerTable(PEER_CAPACITY,
                                         3 * self.machine.master_down_interval_us / 1e6))
        self.peers = self.watch.table
        super().__init__(ARP_CAPACITY, self.machine.advert_interval_us / 1e6)
        self.replays = ReplayGuard(self.machine.master_down_interval_us / 1e6)
        self.checks: dict[str, tuple[bool, str]] = {}  # check name -> (healthy, last error)
        self.maintenance: dict[str, float] = {}  # "operator"/"file" -> since (Unix time)
        self.stopping = False
        self.link = LinkState()
        self._at = _Deadlines()
        self._notified: str | None = None
        self._master_heard_at: float | None = None  # the last advert heard since our takeover
        self._took_over: Reason | None = None  # why we are MASTER (None: we are not)

    # ---- life ----
    def start(self, now: float, present: bool, running: bool,
              resume: Resume | None = None) -> list[Output]:
        """``resume``: what the agent's previous process left of this VHID (a restart without
        a move): a MASTER whose link is usable and who can advertise goes on as MASTER
        (:class:`Resumed`, no VIP added, no script run); anything else is a normal start."""
        self.link.present, self.link.running = present, running
        if not running:
            self.machine.link_changed(now, up=False)
        self._at.garp = now + self.config.garp_refresh if self.config.garp_refresh > 0 else None
        self._schedule_check(now)
        if resume is not None and (not present or self.stopping):
            resume = None
        if resume is not None and resume.counter is not None and self.config.params.strict:
            self.counters.floor = max(self.counters.floor, resume.counter)  # above its last
        return self._after(now, self.machine.start(now, resume)) + self._notify("startup")

    def stop(self, now: float) -> list[Output]:
        self.stopping = True
        return self._after(now, self.machine.stop(now))

    def reconfigure(self, now: float, config: SessionConfig) -> None:
        """Live settings changed (see the runtime's reload plan): the next advert carries them."""
        old, self.config = self.config, config
        self.machine.params = config.params
        self.replays.stuck_after = self.machine.master_down_interval_us / 1e6
        if old.probe_interval != config.probe_interval:
            self._at.probe = now + min(config.probe_interval, PROBE_AFTER_TAKEOVER)
        if old.garp_refresh != config.garp_refresh or old.expect != config.expect:
            self._at.garp = now + config.garp_refresh if config.garp_refresh > 0 else None
        self._schedule_check(now)

    # ---- the one timer ----
    def next_deadline(self) -> float | None:  # after every advert: no temporaries
        best, at = self.machine.next_deadline(), self._at
        for t in (self.watch.sweep_at, at.garp, at.check, at.probe if self._probing() else None):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def timer(self, now: float) -> list[Output]:
        out: list[Output] = []
        deadline = self.machine.next_deadline()
        if deadline is not None and now >= deadline:
            out += self._after(now, self.machine.timer_expired(now))
        if self.watch.sweep_at is not None and now >= self.watch.sweep_at:
            out += self._sweep(now)
        if self._at.garp is not None and now >= self._at.garp:
            self._at.garp = now + self.config.garp_refresh
            if self.machine.state is State.MASTER:
                out.append(SendGarp())  # not rate limited: the operator asked for this period
        if self._probing() and now >= self._at.probe:
            self._at.probe = now + self.config.probe_interval * self._jitter()
            out.append(SendProbe())
        if self._at.check is not None and now >= self._at.check:
            self._at.check = None
            if not self.stopping and self.link.source_present:
                out.append(CheckSending())
            self._schedule_check(now)
        return out

    def _probing(self) -> bool:
        return self.machine.state is _MASTER and self.config.probe_interval > 0

    # ---- adverts in ----
    def receive(self, now: float, packet: bytes) -> list[Output]:
        verdict = screen(packet, self.config.expect, self.replays if self.config.params.strict
                         else None, now)
        out: list[Output] = list(verdict.outputs)
        if verdict.claim is not None:  # another key: remembered as a claim, never obeyed
            out += self._heard(now, *verdict.claim, valid=False)
        if verdict.received is None:
            return out
        rx = verdict.received
        ad, src = rx.advert, rx.src
        self._master_heard_at = now  # only a master advertises (a preempting one too)
        out += self._heard(now, str(src), ad.advbase, ad.advskew, valid=True)
        return out + self._after(now, self.machine.advert_received(
            now, src, ad.advbase, ad.advskew, ad.counter, rx.priority, rx.interval_cs or 0))

    def _heard(self, now: float, peer: str, advbase: int, advskew: int,
               valid: bool) -> list[Output]:
        evicted = self.watch.heard(now, self._wall(), peer, advbase, advskew, valid)
        return [PeersEvicted(len(evicted))] if evicted else []

    def _sweep(self, now: float) -> list[Output]:
        """Peers expire; a former master that fell silent may have left clients on its MAC."""
        out: list[Output] = [PeersSwept()]
        former = self.watch.sweep(now, master=self.machine.state is State.MASTER)
        if former:
            actions = self.machine.reannounce(now)  # at most one per advert interval
            if actions:
                out.append(FormerMasterSilent(former, gave_way(self.peers, former,
                                                                self._took_over)))
                self.watch.answered()
            out += self._after(now, actions)
        self.watch.reschedule(now)
        return out

    # ---- the interface, our source address, our sends ----
    def set_link(self, now: float, present: bool, running: bool,
                 reattached: bool) -> list[Output]:
        link, out = self.link, []
        link.present = present
        if not present:
            if link.running:
                link.running = False
                # ignoreifstate ignores carrier, not a missing interface: nothing can be sent
                out += self._after(now, self.machine.link_changed(now, up=False, force=True))
            # the source address went with the interface: a new one has none until netlink
            # says so (a node that hears adverts but cannot send must not take over)
            link.source_present = False
            out += self._after(now, self.machine.set_can_advertise(now, False))
        else:
            if running != link.running:
                link.running = running
                out += self._after(now, self.machine.link_changed(now, running))
            if reattached and self.config.params.ignoreifstate:  # carrier does not matter, presence does
                out += self._after(now, self.machine.link_changed(now, up=True, force=True))
        if not self.stopping:
            out += self._notify("link_up" if present and (running or self.config.params.ignoreifstate)
                                else "link_down" if present else "interface_missing")
        return out

    def set_source(self, now: float, present: bool) -> list[Output]:
        if present == self.link.source_present:
            return []
        self.link.source_present = present
        return self._advertisable_changed(now)

    def sent(self, now: float, ok: bool, error: str = "", errno_: int = 0) -> list[Output]:
        """How the advert of a :class:`SendAdvert` went: ``ok`` if it left by some way."""
        if not self.link.sent(now, ok, error, errno_):
            return []
        self._schedule_check(now)
        return self._advertisable_changed(now)

    def sending_checked(self, now: float, error: str | None) -> list[Output]:
        """The answer to :class:`CheckSending`: why adverts could not leave, or None."""
        return self._advertisable_changed(now) if self.link.checked(error) else []

    def _schedule_check(self, now: float) -> None:
        self._at.check = self.link.next_check(now, self._at.check, self.config.unicast)

    def cannot_advertise_reason(self) -> str | None:
        return self.link.reason(self.config.srcip, self.config.interface)

    def _advertisable_changed(self, now: float) -> list[Output]:
        why = self.cannot_advertise_reason()
        ok = why is None
        if ok == self.machine.can_advertise or self.stopping:
            return []
        actions = self.machine.set_can_advertise(now, ok, self.link.sent_at)
        grace = self.machine.grace.until
        out: list[Output] = [AdvertisableChanged(ok, why, None if grace is None
                                                 else max(grace / 1e6 - now, 0.0))]
        out += self._after(now, actions)
        return out + self._notify("can_advertise" if ok else "cannot_advertise")

    # ---- health, maintenance, the operator ----
    def set_check(self, now: float, name: str, healthy: bool, error: str) -> list[Output]:
        self.checks[name] = (healthy, error)
        all_ok = all(ok for ok, _ in self.checks.values())
        out: list[Output] = [HealthChanged(all_ok, error, report=all_ok != self.machine.healthy)]
        out += self._after(now, self.machine.set_healthy(now, all_ok))
        return out + ([] if self.stopping else self._notify("healthy" if all_ok else "unhealthy"))

    def drop_check(self, now: float, name: str) -> list[Output]:
        """A reload removed or changed check ``name``: its last result no longer counts."""
        if self.checks.pop(name, None) is None:
            return []
        all_ok = all(ok for ok, _ in self.checks.values())
        out: list[Output] = [HealthChanged(all_ok, "", report=False)]
        return out + self._after(now, self.machine.set_healthy(now, all_ok))

    def set_maintenance(self, now: float, source: str, since: float | None) -> list[Output]:
        """Maintenance by ``source`` ("operator": the control socket or a record restored at
        start; "file": the maintenance file) began at ``since`` (Unix time), or ended (None)."""
        if (source in self.maintenance) == (since is not None):
            return []
        if since is None:
            del self.maintenance[source]
        else:
            self.maintenance[source] = since
        out: list[Output] = [MaintenanceChanged(source, since, self.machine.state is State.INIT)]
        return out + self._after(now, self.machine.set_maintenance(now, bool(self.maintenance)))

    def maintenance_since(self) -> float | None:
        return min(self.maintenance.values()) if self.maintenance else None

    def set_sync(self, now: float, behind: bool) -> list[Output]:
        """Replicated paths behind (not fresh) or caught up: see Machine.set_sync_behind."""
        changed = [SyncGateChanged(behind)] if behind != self.machine.sync_behind else []
        return [*changed, *self._after(now, self.machine.set_sync_behind(now, behind))]

    @property
    def sync_behind(self) -> bool:
        return self.machine.sync_behind

    def step_down(self, now: float) -> list[Output]:
        out: list[Output] = [SteppingDown()] if self.machine.state is State.MASTER else []
        return out + self._after(now, self.machine.step_down(now))

    # ---- views ----
    def notify_state(self) -> str:
        """keepalived's vocabulary: MASTER, BACKUP, FAULT (no usable link, or the service
        unhealthy: this node could not serve), STOP."""
        machine = self.machine
        if machine.state is State.MASTER:
            return "MASTER"
        if machine.state is State.INIT:
            return "STOP" if self.stopping else "INIT"
        link_ok = (self.link.present and machine.can_advertise
                   and (self.link.running or self.config.params.ignoreifstate))
        return "BACKUP" if link_ok and machine.healthy else "FAULT"

    def ready(self) -> bool:
        return (self.machine.state is not State.INIT and self.link.present
                and self.machine.can_advertise)

    # ---- plumbing ----
    def _after(self, now: float, actions: list[Action]) -> list[Output]:
        """The machine's actions, with what follows from them here: the counter reserved
        before an advert, the first probe after a takeover, the notify script told."""
        out: list[Output] = []
        for a in actions:
            upto = self.counters.due(a.counter) if isinstance(a, SendAdvert) else None
            if upto is not None:
                out.append(ReserveCounters(upto))  # before the advert leaves
            if isinstance(a, Transition):
                a = with_planned(a, master_heard=self._master_heard_at is not None)
            out.append(a)
            if isinstance(a, Resumed):
                self._resumed(now)
            if isinstance(a, Transition):
                self._took_over = a.reason if a.new is State.MASTER else None
                if a.new is State.MASTER:
                    self.link.failed_sends = 0  # a run of failures counts this mastership's
                    self._at.probe = now + PROBE_AFTER_TAKEOVER
                    if self._master_heard_at is not None:
                        out.append(TookOver(a.reason.value, self._master_heard_at))
                    self._master_heard_at = None
                out += self._notify(a.reason.value, a.peer)
        return out

    def _resumed(self, now: float) -> None:
        """MASTER as the previous process left it: a master for the probe and the former-master
        rules, and the notify script already told (no second MASTER for it)."""
        self._took_over, self._master_heard_at = Reason.RESUMED, None
        self._at.probe = now + PROBE_AFTER_TAKEOVER
        self._notified = "MASTER"  # a bow-out that follows (demoted meanwhile) is news to it

    def _notify(self, reason: str, peer: Address | None = None) -> list[Output]:
        state = self.notify_state()
        if state == self._notified or state == "INIT":
            return []
        self._notified = state
        return [Notify(state, reason, peer)]


def with_planned(t: Transition, master_heard: bool) -> Transition:
    """A takeover by timeout moved the VIP only if a master had been heard: the first one of a
    node that never heard any (the cluster starting, a node alone) moved nothing."""
    unheard = t.new is State.MASTER and not master_heard
    return dataclasses.replace(t, planned=True if unheard else planned(t.new, t.reason))


def gave_way(peers: PeerTable, former: list[str], took_over: Reason | None) -> str | None:
    """Whether these former masters went silent as planned: each bowed out, or we preempted
    them (a preempted master's last advert may precede our takeover)."""
    last = [peers.get(src) for src in former]
    if all(p is not None and (p.advbase, p.advskew) == (255, 255) for p in last):
        return "bowed out"
    return "preempted" if took_over is Reason.PREEMPT else None
