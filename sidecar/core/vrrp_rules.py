"""The machine's rules for a VRRP instance (Params.protocol "vrrp2"/"vrrp3"): RFC 3768 §6.4 /
RFC 5798 §6.4, checked against keepalived 2.2.7 (keepalived/vrrp/vrrp.c: vrrp_state_backup,
vrrp_state_master_rx). Pure; :class:`~sidecar.core.machine.Machine` calls them for an advert
that carries a priority, everything else (timers, stop, demotion, grace) is the machine's.

Timers (sidecar.core.intervals / pacing.Timing): Skew_Time v2 = (256 - priority)/256 s, v3 =
(256 - priority) x Master_Adver_Interval / 256; Master_Down_Interval = deadratio (3) x
Master_Adver_Interval + Skew_Time, where v3's Master_Adver_Interval is learnt from every
advert with a priority above 0 that a BACKUP accepts or that makes a MASTER yield, never from
one discarded, and is our own again once MASTER (keepalived vrrp.c; v2's is ours: a v2 advert
with another interval never reaches here, keepalived drops it too).

BACKUP hearing:
- priority 0 (the master resigns): the master-down timer is set to Skew_Time (the best
  backup fires first and its advert re-arms the others); reason ``handover``.
- with preempt, a priority below ours (after the preempt delay): the advert is discarded and
  the master-down timer keeps running, so we take over Master_Down_Interval after the last
  advert we accepted, reason ``preempt`` — RFC 3768 §6.4.2 and keepalived ("received lower
  priority advert - discarding"), not at once as CARP's preempt does.
- anything else (nopreempt, an equal or higher priority, demoted, replicas behind, within the
  preempt delay): the timer is re-armed. Equal priorities are not compared by a BACKUP (the
  RFC compares addresses only between masters).
- preempt_delay: keepalived starts it at the first lower-priority advert; ours runs from the
  start or the link coming back, as in CARP mode (the same setting behaves the same in both);
  within it lower adverts are accepted as keepalived does while its delay runs.

MASTER hearing:
- priority 0: an advert at once and the advert timer restarted (RFC 5798 §6.4.3).
- a higher priority, or an equal one from a higher address (network byte order: keepalived's
  vrrp_saddr_cmp): BACKUP at once without an advert (keepalived's higher_prio_send_advert is
  off by default), the master-down timer armed with the sender's interval (v3).
- a lower priority, or an equal one from a lower address: we stay MASTER and answer with an
  advert and a GARP (keepalived sends an advert each time; ours are limited to one per
  advert interval with the GARP: VRRP's fields are unauthenticated, a replay flood must not
  turn into an advert flood), Conflict once settled, as in CARP mode.
- our own address at our priority (a looped-back advert): ignored.
Address owner (priority 255): MASTER at start at once (RFC 3768 §6.4.1; keepalived's init), and
it always preempts (RFC 5798 §6.1; keepalived resets nopreempt for it) — as a BACKUP after a
demotion or a link loss.
Two owners: keepalived lowers its own to 254; ours keeps 255 and wins by address (config
refuses 255 unless every VIP is the node's own, so two owners are a configuration error).
"""

from __future__ import annotations

from sidecar.core.actions import Action, Address, DropVip, Reason, State
from sidecar.core.intervals import CS_US, to_us
from sidecar.core.steps import Steps

OWNER = 255


class VrrpRules(Steps):
    @property
    def vrrp_owner_starts(self) -> bool:
        """A VRRP address owner that can serve is MASTER at start, without waiting."""
        return (self.params.protocol != "carp" and self.params.priority == OWNER
                and self._link_usable and not self.demoted)

    def _vrrp_hears(self, now: float, src: Address, priority: int,
                    interval_cs: int) -> list[Action]:
        heard = max(interval_cs, 1) * CS_US if self.vrrp_version == 3 else None
        if self.state is State.MASTER:
            return self._vrrp_master_hears(now, src, priority, heard)
        return self._vrrp_backup_hears(now, src, priority, heard)

    def _learn(self, interval_us: int | None) -> None:
        """v3's Master_Adver_Interval, from an advert accepted or yielded to only (keepalived
        vrrp.c: a discarded lower-priority advert does not change it)."""
        if interval_us is not None:
            self._master_interval_us = interval_us

    def _vrrp_master_hears(self, now: float, src: Address, priority: int,
                           interval_us: int | None) -> list[Action]:
        if priority == 0:
            return [] if self.grace.active else self._periodic_advert(now)
        ours, own = self.params.priority, self.params.own_ip
        lost = priority > ours or (priority == ours and int(src) > int(own))
        if lost:
            self._learn(interval_us)
        if self.grace.active:  # whoever speaks has taken over, or soon would (see Grace)
            return self._leave_master(Reason.PREFERRED_MASTER if lost
                                      else Reason.CANNOT_ADVERTISE, src)
        if lost:
            actions = self._leave_master(Reason.PREFERRED_MASTER, src)
            self._arm_master_down(now)
            return actions
        if priority == ours and src == own:
            return []
        return self._reassert(now, src, advert=True)

    def _vrrp_backup_hears(self, now: float, src: Address, priority: int,
                           interval_us: int | None) -> list[Action]:
        t = to_us(now)
        if t < self._paused_until:  # stepped down: listening, not competing
            self._learn(interval_us if priority else None)
            self._arm_master_down(now)
            self._master_down_at = max(self._master_down_at or 0, self._paused_until)
            return []
        if priority == 0:
            self._armed_at = t
            self._master_down_at = max(t + self.handover_wait_us, self._paused_until)
            self._master_down_reason, self._master_down_peer = Reason.HANDOVER, None
            return []
        p = self.params
        preempt = p.preempt or p.priority == OWNER  # RFC 5798 §6.1: the owner always preempts
        if (preempt and priority < p.priority and not self.demoted
                and t >= self._preempt_after and self._master_down_at is not None):
            if not self.sync_behind:  # discarded: the running timer will make us MASTER
                self._master_down_reason, self._master_down_peer = self._preempt_reason, src
                return []
            self._preempt_held = True  # behind: accepted; the next one is sync_caught_up
        elif not (preempt and priority < p.priority):
            self._preempt_held = False  # this master is not one to preempt
        self._learn(interval_us)  # accepted
        self._arm_master_down(now)
        if self._vip_undecided:  # another master is settled: what a neutral start left goes
            self._vip_undecided = False
            return [DropVip()]
        return []
