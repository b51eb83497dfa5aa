"""The CARP state machine, with ucarp 1.5.2's rules (docs/protocol.md §5). Pure: no I/O, no clock.
A VRRP instance (Params.protocol vrrp2/vrrp3) runs the same machine with VRRP's timers
(pacing.Timing) and its rules for adverts heard and the owner's start (sidecar.core.vrrp_rules);
everything below that is not about an advert heard holds for it too (a bow-out is then a
priority 0 advert).

Everything that decides *who is master* lives here; nothing here knows about sockets, netlink,
scripts or time sources. The caller passes ``now`` (seconds, any monotonic origin) into every
call, performs the returned actions in order, and calls :meth:`Machine.timer_expired` once
:meth:`Machine.next_deadline` has passed. At most one timer is armed at a time: the advert timer
in MASTER, the master-down timer in BACKUP.

Intervals are integer microseconds like ucarp's ``struct timeval`` arithmetic. Candidates are
compared by the key ``(advbase, advskew*1e6//256)``: smaller means "advertises more often", which
is better. Equal keys between two masters are broken by ucarp's little-endian address order.

Transition table (state, event -> new state: actions) — the rows the tests are named after:

  INIT    start                        -> BACKUP: DropVip (unless neutral), arm master-down
  INIT    start resuming a MASTER      -> MASTER: Resumed, SendAdvert when due; no AddVip, Garp
          (a restart without a move)      or transition (demoted: bows out at once)
  BACKUP  advert after a neutral start -> BACKUP: DropVip once (a VIP left in place at start
                                          goes when another master is heard instead)
  BACKUP  master-down timer            -> MASTER: AddVip, Garp, SendAdvert, arm advert timer
  BACKUP  advert, preempt and L < R    -> MASTER  (reason preempt); within the preempt delay
                                          after start or link up: at the delay's end instead
  BACKUP  advert, R would time out     -> MASTER  (reason master_timeout; a bow-out advert is
                                          "handover" and waits our own skew first, see below)
  BACKUP  advert, sync behind          -> BACKUP: re-arm master-down (skew >= 240); no preempt
                                          (the next one is sync_caught_up), no "R would time out"
  BACKUP  advert otherwise             -> BACKUP: re-arm master-down
  BACKUP  sync behind changes          -> BACKUP: the wait under way re-measured
  MASTER  advert timer                 -> MASTER: SendAdvert (+ delayed Garp), re-arm
  MASTER  advert, L > R or tie lost    -> BACKUP: SendAdvert, DropVip, arm master-down
  MASTER  advert, L < R or tie won     -> MASTER: Garp now and again later, at most once per
                                          advert interval; Conflict once our takeover has had
                                          an advert interval to reach the other master
  any     link down (not ignored)      -> BACKUP: DropVip if MASTER, no timers
  MASTER  cannot advertise             -> MASTER (grace): no adverts, the VIP kept until a
                                          master-down interval after the last advert left;
                                          an advert heard (not a bow-out) or grace over
                                          -> BACKUP: DropVip, no timers (reason
                                          cannot_advertise; ignoreifstate does not ignore it)
  MASTER  (grace) can advertise again  -> MASTER: SendAdvert if one was due, no transition
  BACKUP  cannot advertise             -> BACKUP: no timers (never takes over)
  BACKUP  link up / can advertise      -> BACKUP: arm master-down (once both hold)
  MASTER  demoted                      -> BACKUP: SendAdvert(bow-out), DropVip, arm master-down
  MASTER  step down (SIGUSR2)          -> BACKUP: SendAdvert(bow-out), DropVip; neither master
                                          nor preempting for STEP_DOWN_PAUSE (ucarp's 3 s)
  MASTER  stop                         -> MASTER (stopping): SendAdvert(bow-out), wait for a
                                          successor's advert or the successor wait, then
                                          -> INIT: DropVip, Stopped
  BACKUP  stop                         -> INIT: Stopped

Rules beyond ucarp, each because a sidecar needs it:
- A demoted node — in maintenance, or its service unhealthy — never becomes MASTER: timeouts
  and preemption re-arm the master-down timer instead. A demoted MASTER bows out.
- Preempt delay (keepalived's ``preempt_delay``): a preferred node that has just started or
  regained its link lets a working master keep the VIP for that long, so its own service can
  warm up first; with no master at all it still takes over at master-down time.
- Sync behind (replicated paths not fresh, sidecar.core.replica): the VIP goes only where the
  data is. Such a BACKUP waits as if demoted (BSD's demotion counter) so a fresh one wins the
  race; with the master dead and nobody else, it still takes over. A MASTER ignores it.
- A stopping MASTER keeps the VIP after its bow-out until a successor's advert arrives (or
  ``successor_wait`` passes), so clients never meet a moment where nobody answers; backups are
  silent, so even a master that never heard a peer waits.
- A MASTER that cannot advertise keeps the VIP until its backups would take over (a
  master-down interval after its last advert left) or one speaks: dropping it at once left
  nobody answering for that long, and a flapping source address most of the time.
- Leaving MASTER on purpose (stop, demotion) sends the BSD bow-out advert (advbase 255,
  advskew 255). ucarp backups take over on it at once by their "going to time out" rule; our
  backups do the same after a delay proportional to their skew (advskew/2048 s), so with
  several backups the best one wins without a double master.
"""

from __future__ import annotations

from sidecar.core.actions import (
    UNSPECIFIED,
    Action,
    Address,
    AddVip,
    Conflict,
    DropVip,
    Params,
    Reason,
    Resume,
    Resumed,
    SendAdvert,
    SendGarp,
    State,
    Stopped,
    Transition,
)
from sidecar.core.intervals import US, advert_interval_us, skew_us, to_us
from sidecar.core.pacing import SYNC_BEHIND_SKEW, le_order
from sidecar.core.protocol import BOW_OUT
from sidecar.core.vrrp_rules import VrrpRules

__all__ = [  # the vocabulary is imported from here too
    "STEP_DOWN_PAUSE", "SUCCESSOR_WAIT", "SYNC_BEHIND_SKEW", "UNSPECIFIED", "US", "Action",
    "AddVip", "Conflict", "DropVip", "Machine", "Params", "Reason", "Resume", "Resumed",
    "SendAdvert", "SendGarp", "State", "Stopped", "Transition", "le_order",
]

SUCCESSOR_WAIT = 0.8  # s a stopping master keeps the VIP waiting for a successor's advert
STEP_DOWN_PAUSE = 3.0  # s ucarp sleeps after SIGUSR2 before listening again
BOW_OUT_KEY = (BOW_OUT, skew_us(BOW_OUT))  # the comparison key of a bow-out advert


class Machine(VrrpRules):
    """One CARP virtual host (vhid), or VRRP virtual router, on one interface."""

    # ---- events ----
    def start(self, now: float, resume: Resume | None = None) -> list[Action]:
        """``resume``: what the agent's previous process left; a MASTER goes on (see
        :meth:`_resume`) if its link is usable and it can advertise, else a normal start."""
        if self.state is not State.INIT:
            return []
        self._preempt_after = to_us(now) + to_us(self.params.preempt_delay)
        if resume is not None and resume.master and self._link_usable:
            return self._resume(now, resume)
        if self.vrrp_owner_starts:  # VRRP's address owner: MASTER at once (INIT -> MASTER)
            return self._become_master(now, Reason.STARTUP, None)
        actions: list[Action] = [Transition(State.INIT, State.BACKUP, Reason.STARTUP)]
        self.state = State.BACKUP
        if not self.params.neutral:
            actions.append(DropVip())
        self._vip_undecided = self.params.neutral
        if self._link_usable:
            self._arm_master_down(now)
        return actions

    def _resume(self, now: float, resume: Resume) -> list[Action]:
        """A restart without a move: MASTER as the previous process left it, the VIPs in place
        (no AddVip, GARP or transition: nothing moved); its adverts go on at their rhythm and
        its counters above the last one sent. Demoted meanwhile: it bows out at once."""
        t = to_us(now)
        self.state, self._master_since = State.MASTER, t
        if resume.counter is not None:
            self._counter.heard(resume.counter)  # strict: the session's floor does it
        due = t if resume.next_advert is None else to_us(resume.next_advert)
        self._advert_at = min(max(due, t), t + self.advert_interval_us)  # never later than ours
        actions: list[Action] = [Resumed(State.MASTER, resume.master_since)]
        if self.demoted:
            return actions + self._demotion_changed(now)
        return actions + (self._periodic_advert(now) if self._advert_at <= t else [])

    def timer_expired(self, now: float) -> list[Action]:
        t = to_us(now)
        if self._stop_at is not None:
            return self._finish_stop() if t >= self._stop_at else []
        if self._master_down_at is not None and t >= self._master_down_at:
            if self.demoted:
                self._arm_master_down(now)
                return []
            return self._become_master(now, self._master_down_reason, self._master_down_peer)
        if self._advert_at is not None and t >= self._advert_at:
            return self._periodic_advert(now)
        if self.grace.until is not None and t >= self.grace.until:
            return self._leave_master(Reason.CANNOT_ADVERTISE)  # no timers until it can
        return []

    def advert_received(self, now: float, src: Address, advbase: int, advskew: int,
                        counter: int, priority: int | None = None,
                        interval_cs: int = 0) -> list[Action]:
        """A valid (authenticated, our vhid) advert from ``src``. VRRP (``priority`` given,
        ``interval_cs`` its interval; advbase/advskew/counter unused): sidecar.core.vrrp_rules."""
        if priority is None:
            self._counter.heard(counter)  # ucarp adopts it in every state, before any logic
        if self._stop_at is not None:
            return self._finish_stop()  # a successor speaks: the VIP can go
        if self.state is State.INIT or not (self._link_usable or self.grace.active):
            return []
        if priority is not None:
            return self._vrrp_hears(now, src, priority, interval_cs)
        remote = (advbase, skew_us(advskew))
        if remote != BOW_OUT_KEY:
            self._master_interval_us = advert_interval_us(advbase, advskew)
        if self.state is State.MASTER:
            return self._master_hears(now, src, remote)
        return self._backup_hears(now, src, remote)

    def link_changed(self, now: float, up: bool, force: bool = False) -> list[Action]:
        """Carrier change (ignored with ``ignoreifstate``), or with ``force`` the interface
        itself vanishing or returning, which no setting can ignore."""
        if up and not self.link_up:
            self._preempt_after = to_us(now) + to_us(self.params.preempt_delay)
        self.link_up = up
        if self._stop_at is not None and not up and (force or not self.params.ignoreifstate):
            return self._finish_stop()  # nobody can hear us any more: no point waiting
        if ((self.params.ignoreifstate and not force) or self.state is State.INIT
                or self._stop_at is not None):
            return []
        if not up:
            actions = self._leave_master(Reason.LINK_DOWN) if self.state is State.MASTER else []
            self._advert_at = self._master_down_at = None
            return actions
        if self._master_down_at is None and self._advert_at is None and self.can_advertise:
            self._arm_master_down(now)
        return []

    def set_can_advertise(self, now: float, ok: bool,
                          last_sent: float | None = None) -> list[Action]:
        """Whether our adverts can leave (the source address is on the interface, sends work).
        A node that cannot advertise must not hold the VIP beyond its grace (see Grace): its
        peers cannot hear it, so they take over — a master-down interval after ``last_sent``
        (when our last advert left; default ``now``). No setting ignores this."""
        if ok == self.can_advertise:
            return []
        self.can_advertise = ok
        if self._stop_at is not None and not ok:
            return self._finish_stop()
        if self.state is State.INIT or self._stop_at is not None:
            return []
        if not ok:
            if self.state is State.MASTER:  # see Grace
                # from our last advert, or our takeover if none of this mastership has left
                since = max(to_us(now if last_sent is None else last_sent), self._master_since or 0)
                until = since + self.master_down_interval_us
                self.grace.start(until, self._advert_at)
            self._advert_at = self._master_down_at = None
            return self.timer_expired(now)  # the backups' wait may be over already
        if self.grace.active:  # back in time: on with the advert that was due
            self._advert_at = self.grace.end() or to_us(now)
            return self._periodic_advert(now) if to_us(now) >= self._advert_at else []
        if self._link_usable and self._master_down_at is None and self._advert_at is None:
            self._arm_master_down(now)
        return []

    def set_sync_behind(self, now: float, behind: bool) -> list[Action]:
        """Whether this node's replicated paths are behind the master's (sidecar.core.replica:
        not fresh). A BACKUP behind does not compete with a live master (no preemption, no
        "would time out" takeover) and waits with skew SYNC_BEHIND_SKEW at least, so a fresh
        backup wins the race for a dead master's VIP; this one still takes it when nobody
        does (availability wins). A wait under way is re-measured from when it began."""
        if behind == self.sync_behind:
            return []
        self.sync_behind = behind
        if self.state is not State.BACKUP or self._master_down_at is None:
            return []
        if self._master_down_reason in (Reason.PREEMPT, Reason.SYNC_CAUGHT_UP):  # behind now
            self._preempt_held = True  # the preempt delay's end: not while behind
            self._master_down_reason, self._master_down_peer = Reason.MASTER_DOWN, None
        wait = (self.handover_wait_us if self._master_down_reason is Reason.HANDOVER
                else self.master_down_wait_us)
        self._master_down_at = max(self._armed_at + wait, self._paused_until)
        return []

    def set_maintenance(self, now: float, on: bool) -> list[Action]:
        self.maintenance = on
        return self._demotion_changed(now)

    def set_healthy(self, now: float, healthy: bool) -> list[Action]:
        self.healthy = healthy
        return self._demotion_changed(now)

    def _demotion_changed(self, now: float) -> list[Action]:
        if not self.demoted or self.state is not State.MASTER or self._stop_at is not None:
            return []
        return self._hand_over(now, Reason.MAINTENANCE if self.maintenance else Reason.UNHEALTHY)

    def step_down(self, now: float, pause: float = STEP_DOWN_PAUSE) -> list[Action]:
        """ucarp's SIGUSR2: a MASTER goes BACKUP (the downscript runs) and stays out for
        ``pause``; ours also bows out, so a backup takes over at once instead of at its
        master-down time. With preempt it may come back once the pause is over."""
        if self.state is not State.MASTER or self._stop_at is not None:
            return []
        actions = self._hand_over(now, Reason.STEP_DOWN)
        t = self._paused_until = to_us(now) + to_us(pause)
        self._preempt_after = max(self._preempt_after, t)
        if self._master_down_at is not None:
            self._master_down_at = max(self._master_down_at, t)
        return actions

    def reannounce(self, now: float) -> list[Action]:
        """Clients may have the VIP on another MAC (an ARP for it from another host, a former
        master gone quiet): a MASTER sends a GARP, at most once per advert interval."""
        t = to_us(now)
        if self.state is not State.MASTER or t < self._quiet_until:
            return []
        self._quiet_until = t + self.advert_interval_us
        return [SendGarp()]

    def stop(self, now: float, successor_wait: float = SUCCESSOR_WAIT) -> list[Action]:
        old = self.state
        if self._stop_at is not None:
            return []
        if old is State.MASTER and self._link_usable:
            self._advert_at = self._master_down_at = None
            self._stop_at = to_us(now) + to_us(successor_wait)
            return [self._bow_out_advert()]
        actions: list[Action] = [DropVip()] if old is State.MASTER else []
        self.grace.end()
        if old is not State.INIT:
            actions.append(Transition(old, State.INIT, Reason.STOP))
        self.state = State.INIT
        self._advert_at = self._master_down_at = None
        return [*actions, Stopped()]

    # ---- an advert heard ----
    def _master_hears(self, now: float, src: Address, remote: tuple[int, int]) -> list[Action]:
        local = self.local_key
        lost = local > remote or (local == remote and le_order(src) < le_order(self.params.own_ip))
        if self.grace.active and remote != BOW_OUT_KEY:
            # in grace whoever speaks has taken over (it cannot hear us) or soon would: yield
            return self._leave_master(Reason.PREFERRED_MASTER if lost
                                      else Reason.CANNOT_ADVERTISE, src)
        if lost:
            actions: list[Action] = [self._advert()]
            actions += self._leave_master(Reason.PREFERRED_MASTER, src)
            self._arm_master_down(now)
            return actions
        return self._reassert(now, src)

    def _backup_hears(self, now: float, src: Address, remote: tuple[int, int]) -> list[Action]:
        preempt_later = False
        if to_us(now) < self._paused_until:  # stepped down: listening, not competing
            self._arm_master_down(now)
            self._master_down_at = max(self._master_down_at or 0, self._paused_until)
            return []
        if not self.demoted:
            if not (self.params.preempt and self.local_key < remote):
                self._preempt_held = False  # this master is not one to preempt
            elif self.sync_behind:
                self._preempt_held = True  # after the catch-up: reason sync_caught_up
            elif to_us(now) >= self._preempt_after:
                return self._become_master(now, self._preempt_reason, src)
            else:
                preempt_later = True  # a bow-out below still hands over at once
            p = self.params
            if (p.advbase * p.deadratio, skew_us(p.advskew)) < remote:
                if remote == BOW_OUT_KEY and self.wait_skew:
                    # Handover: the best backup (least skew) fires first and its advert
                    # re-arms the others, so one handover makes one transition.
                    self._armed_at = to_us(now)
                    self._master_down_at = self._armed_at + self.handover_wait_us
                    self._master_down_reason, self._master_down_peer = Reason.HANDOVER, None
                    return []
                if not self.sync_behind:  # behind: a live master is waited for (see Timing)
                    return self._become_master(now, _timeout_reason(remote), src)
        self._arm_master_down(now)
        actions: list[Action] = []
        if self._vip_undecided:  # another master is settled: what a neutral start left goes
            self._vip_undecided = False
            actions.append(DropVip())
        if preempt_later and self._master_down_at is not None \
                and self._preempt_after < self._master_down_at:
            # The preempt delay runs out before this master would time out: preempt then.
            self._master_down_at = self._preempt_after
            self._master_down_reason, self._master_down_peer = self._preempt_reason, src
        return actions


def _timeout_reason(remote: tuple[int, int]) -> Reason:
    return Reason.HANDOVER if remote == BOW_OUT_KEY else Reason.MASTER_TIMEOUT
