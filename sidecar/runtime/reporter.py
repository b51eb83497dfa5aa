"""What an instance's session says, told to people and Prometheus: each event becomes series
and log lines (ucarp's words where ucarp has some: people search for them). Nothing here
decides anything; the rules are the session's (sidecar.core.session)."""

from __future__ import annotations

import logging
import time
from ipaddress import ip_address
from typing import Any

from sidecar.config.runconfig import Vhid
from sidecar.core import outputs
from sidecar.core.actions import Address, planned
from sidecar.core.machine import Action, Conflict, Reason, Resumed, State, Transition
from sidecar.core.protocol import AdvertError, DropReason
from sidecar.core.session import Session
from sidecar.serve.logs import fields
from sidecar.serve.metrics import InstanceMetrics

log = logging.getLogger("carp-sidecar")
DROP_LOG_EVERY = 60.0  # s between log lines about one drop reason
WHY = {
    Reason.PREEMPT: "Putting MASTER down - preemption",
    Reason.MASTER_TIMEOUT: "Putting MASTER DOWN (going to time out)",
    Reason.HANDOVER: "Master handed over (bow-out advertisement): taking over",
    Reason.PREFERRED_MASTER: "Preferred master advertised: going back to BACKUP state",
    Reason.LINK_DOWN: "Link down: leaving MASTER state",
    Reason.MAINTENANCE: "Maintenance: handing the VIP over",
    Reason.UNHEALTHY: "Service unhealthy: handing the VIP over",
    Reason.CANNOT_ADVERTISE: "Cannot advertise: leaving MASTER state",
    Reason.SYNC_CAUGHT_UP: "Replicas caught up with the master: preempting",
}


class Reporter:
    def __init__(self, settings: Vhid, srcip: Address, metrics: InstanceMetrics,
                 several: bool) -> None:
        self.s, self.srcip, self.m = settings, srcip, metrics
        self._several = several  # log lines then say which vhid they are about
        self.master_since: float | None = None
        self.last_transition: dict[str, Any] | None = None
        self._last_drop_log: dict[str, float] = {}
        self._peer_series: set[str] = set()  # peers that have carp_peer_* series now
        self.peer_priority: dict[str, int] = {}  # VRRP: the last priority each peer sent

    def which(self) -> str:
        """ucarp's log lines name nothing (one process, one VHID); with several we say which."""
        # an IPv6 instance's VRID may also be an IPv4 one's (keepalived's pairs)
        family = ", IPv6" * self.s.ipv6
        return f" (vhid {self.s.vhid} on {self.s.interface}{family})" if self._several else ""

    def _fields(self, **more: Any) -> dict[str, Any]:
        return fields(vhid=self.s.vhid, interface=self.s.interface,
                      ipv6=True if self.s.ipv6 else None, **more)

    def event(self, e: object, session: Session, now: float) -> None:
        """Report one output of the session (the caller has carried out the actions)."""
        handler = _HANDLERS.get(type(e))
        if handler is not None:
            handler(self, e, session, now)

    # ---- transitions and the machine's conflicts ----
    def transition(self, t: Transition, session: Session, now: float) -> None:
        extra = self._fields(state=t.new.name, **{"from": t.old.name}, reason=t.reason.value,
                             peer=str(t.peer) if t.peer else None)
        if t.reason in WHY:
            log.warning("%s%s", WHY[t.reason], f" (peer {t.peer})" if t.peer else "", extra=extra)
        if t.new is not State.INIT:
            log.warning("Switching to state: %s%s", t.new.name, self.which(), extra=extra)
        m = self.m
        m.set_state(t.new)
        moved = planned(t.new, t.reason) if t.planned is None else t.planned
        m.transitions[(t.old, t.new, t.reason, moved)].inc()
        wall = time.time()
        m.last_transition.set(wall)
        self.last_transition = {"from": t.old.name, "to": t.new.name, "reason": t.reason.value,
                                "at": wall, "peer": str(t.peer) if t.peer else None}
        self.master_since = wall if t.new is State.MASTER else None

    def _resumed(self, r: Resumed, session: Session, now: float) -> None:
        """A restart without a move: the state where the previous process left it. Not a
        transition (nothing moved): the state gauges only, no carp_transitions_total."""
        self.m.set_state(r.state)
        wall = time.time()
        if r.state is State.MASTER:
            self.master_since = r.master_since if r.master_since is not None else wall
        self.last_transition = {"from": r.state.name, "to": r.state.name,
                                "reason": Reason.RESUMED.value, "at": wall, "peer": None}
        log.info("Resumed as %s on %s id %d (VIP kept)", r.state.name, self.s.interface,
                 self.s.vhid, extra=self._fields(state=r.state.name, reason=Reason.RESUMED.value))

    def _conflict(self, c: Conflict, session: Session, now: float) -> None:
        self.m.conflicts["advert"].inc()
        if c.announce:
            log.warning("Non-preferred master advertising: reasserting control of VIP with "
                        "another gratuitous arp (peer %s)", c.peer)

    # ---- adverts in ----
    def _accepted(self, a: outputs.Accepted, session: Session, now: float) -> None:
        self.m.received.inc()
        if a.by_next_key:
            self.m.received_next_key.inc()
        self.m.failover_possible()
        if a.handover:
            self.m.handovers_received.inc()
        elif a.priority is not None:  # VRRP: what keepalived's weights did is seen here
            self.peer_priority[str(a.peer)] = a.priority
            self.m.family.peer_priority.labels(**self.m.labels, peer=str(a.peer)).set(a.priority)

    def decision(self, todo: list[outputs.Output], session: Session) -> None:
        """CARP_LOG_LEVEL=debug: each advert and what it made the machine do."""
        a = next((o for o in todo if isinstance(o, outputs.Accepted)), None)
        if a is None:
            return
        acts = [type(o).__name__ for o in todo if isinstance(o, Action)]
        log.debug("Advert from %s advbase %d advskew %d counter %d in %s: %s", a.peer, a.advbase,
                  a.advskew, a.counter, session.machine.state.name,
                  ", ".join(acts) or "nothing to do",
                  extra=fields(vhid=self.s.vhid, peer=str(a.peer), advbase=a.advbase,
                               advskew=a.advskew))

    def _dropped(self, d: outputs.Dropped, session: Session, now: float) -> None:
        self.dropped(d.error, d.src, now)

    def dropped(self, error: AdvertError, src: bytes | None, now: float) -> None:
        """Count a drop; say so at most once a minute per reason. Cheap on the counted path:
        a flood of forged packets arrives here at line rate."""
        self.m.dropped[error.reason].inc()
        reason = error.reason.value
        if error.reason is DropReason.OTHER_VHID or \
                now - self._last_drop_log.get(reason, -1e9) < DROP_LOG_EVERY:
            # other groups sharing the LAN are normal: counted, never warned about
            if log.isEnabledFor(logging.DEBUG):
                log.debug("Dropped advertisement%s: %s", self.which(), error,
                          extra=self._drop_fields(reason, src))
            return
        self._last_drop_log[reason] = now
        extra = self._drop_fields(reason, src)
        if error.reason is DropReason.VRRP:
            log.warning("VRRP advertisement on our VHID%s: %s. A VRRP router (keepalived?) "
                        "shares this link and ID; CARP and VRRP ignore each other, but give it "
                        "another virtual_router_id (docs/runbook.md); further ones counted in "
                        "carp_adverts_dropped_total{reason=\"vrrp\"}", self.which(), error,
                        extra=extra)
        elif error.reason is DropReason.CARP:  # the same mix-up seen from the VRRP side
            log.warning("CARP advertisement on our VRID%s: %s. A CARP node (ucarp, another "
                        "carp-sidecar) shares this link and ID; give it another vhid; further "
                        "ones counted in carp_adverts_dropped_total{reason=\"carp\"}",
                        self.which(), error, extra=extra)
        elif error.reason is DropReason.ADDRESSES:  # keepalived logs and drops these too
            log.warning("Dropped VRRP advertisement%s: %s: the other node's virtual_ipaddress "
                        "(or v2 advert_int) differs from our VIPs; it is not counted as a peer",
                        self.which(), error, extra=extra)
        elif error.reason is DropReason.BAD_HMAC:  # ucarp's words, which people search for
            log.warning("Bad digest - Check vhid, password and virtual IP address%s (from %s; "
                        "further ones counted in carp_adverts_dropped_total)", self.which(),
                        extra["fields"].get("peer", "?"), extra=extra)
        else:
            log.warning("Dropped advertisement%s: %s (further drops counted in "
                        "carp_adverts_dropped_total)", self.which(), error, extra=extra)

    def _drop_fields(self, reason: str, src: bytes | None) -> dict[str, Any]:
        peer = str(ip_address(src)) if src is not None and len(src) in (4, 16) else None
        return self._fields(reason=reason, peer=peer)

    def _behind(self, b: outputs.PeerCounterBehind, session: Session, now: float) -> None:
        gauge = self.m.peer_counter_behind.get(b.peer)
        if gauge is not None:
            gauge.set(1)
        log.error("Peer %s: every advert for %.1f s was dropped as a replay (counter %d, below "
                  "the %d it sent before): its agent restarted with its clock behind and "
                  "without its CARP_STATE_DIR. Both nodes may hold the VIP. Restart this agent "
                  "to accept it again, and keep CARP_STATE_DIR on a volume (docs/runbook.md)%s",
                  b.peer, b.stuck_for, b.counter, b.last, self.which(),
                  extra=self._fields(peer=str(b.peer), reason="replay"))

    def _back(self, b: outputs.PeerCounterBack, session: Session, now: float) -> None:
        gauge = self.m.peer_counter_behind.get(b.peer)
        if gauge is not None:
            gauge.set(0)
        log.warning("Peer %s's adverts are accepted again (its counter is above %d)%s",
                    b.peer, b.last, self.which())

    # ---- peers ----
    def _evicted(self, e: outputs.PeersEvicted, session: Session, now: float) -> None:
        self.m.peers_evicted.inc(e.count)

    def _swept(self, e: outputs.PeersSwept, session: Session, now: float) -> None:
        peers = session.peers.valid_peers()
        for gone in self._peer_series - peers.keys():
            self.m.forget_peer(gone)
            self.peer_priority.pop(gone, None)
        for src, p in peers.items():
            self.m.set_peer(src, p.wall, p.advbase, p.advskew)
        self._peer_series = set(peers)
        self.m.peers.set(len(session.peers))

    def _silent(self, e: outputs.FormerMasterSilent, session: Session, now: float) -> None:
        former = e.peers
        # after a handover or our preemption this is the plan working: a WARNING each time
        # would teach people to skip the one that matters (a master gone silent unasked)
        log.log(logging.WARNING if e.gave_way is None else logging.INFO,
                "Former master %s stopped advertising%s: re-announcing VIP %s%s",
                ", ".join(former[:3]) + (" …" if len(former) > 3 else ""),
                "" if e.gave_way is None else f" ({e.gave_way}, as planned)",
                self.s.vips[0].ip, self.which(),
                extra=self._fields(peer=former[0], reason=e.gave_way or "silent"))

    def successor(self, session: Session, bowed_out: float, now: float) -> None:
        """A stopping master: who took over after our bow-out (the adverts heard since)."""
        heard = [src for src, p in session.peers.valid_peers().items()
                 if p.last_seen >= bowed_out and (p.advbase, p.advskew) != (255, 255)]
        if heard:
            log.info("Handed over to %s%s", ", ".join(sorted(heard)), self.which(),
                     extra=self._fields(peer=heard[0], reason="stop"))
        else:
            log.warning("No successor heard within %.1f s of our bow-out: the VIP is down "
                        "until a backup times out, if there is one%s", now - bowed_out,
                        self.which(), extra=self._fields(reason="stop"))

    def _claim(self, c: outputs.ClaimSeen, session: Session, now: float) -> None:
        self.m.conflicts[c.kind].inc()
        if c.reannounced:
            log.warning("Another host (%s) announces a VIP of vhid %d: re-announcing ours",
                        c.mac.hex(":"), self.s.vhid)

    def _stale(self, h: outputs.StaleHolder, session: Session, now: float) -> None:
        self.m.conflicts["stale_holder"].inc()
        if h.report:
            mac = h.mac.hex(":")
            # no master advertises: not a handover; the MAC's owner may also be a device that
            # answers every probe (proxy ARP), so it is named as either, not presumed an agent
            log.error("Stale holder of VIP %s: the host with MAC %s still has the address or "
                      "answers ARP probes for addresses it does not hold, and no other master "
                      "advertises: remove it there (docs/runbook.md). Re-announcing ours%s",
                      self.s.vips[0].ip, mac, self.which(),
                      extra=self._fields(reason="stale_holder", peer=mac))

    # ---- can we advertise, health, maintenance ----
    def _advertisable(self, a: outputs.AdvertisableChanged, session: Session, now: float) -> None:
        if a.ok:
            log.warning("Adverts can leave again (source %s on %s): taking part again%s",
                        self.srcip, self.s.interface, self.which(), extra=self._fields())
        elif a.grace:  # a MASTER: the VIP stays until its backups take over (round 4)
            log.warning("Cannot advertise (%s): keeping the VIP at most %.1f s more, until a "
                        "backup takes over%s", a.why, a.grace, self.which(),
                        extra=self._fields(reason="cannot_advertise"))
        else:
            log.warning("Cannot advertise (%s): not holding the VIP until adverts can leave%s",
                        a.why, self.which(), extra=self._fields(reason="cannot_advertise"))

    def _health(self, h: outputs.HealthChanged, session: Session, now: float) -> None:
        self.m.health_up.set(1 if h.healthy else 0)
        if h.report:
            log.warning("Service %s%s", "healthy again" if h.healthy else f"unhealthy ({h.error})",
                        self.which())

    def _maintenance(self, c: outputs.MaintenanceChanged, session: Session, now: float) -> None:
        since = session.maintenance_since()
        self.m.maintenance.set(1 if since is not None else 0)
        self.m.maintenance_since.set(since or 0)
        what = ("by operator" if c.source == "operator"
                else f"by maintenance file {self.s.maintenance_file}")
        if not c.at_start:
            log.warning("Maintenance mode %s %s%s", "on" if c.since is not None else "off", what,
                        self.which())
        elif c.since is not None:
            log.warning("Starting in maintenance (demoted %s since %s)%s", what, utc(c.since),
                        self.which())

    def _stepping_down(self, e: outputs.SteppingDown, session: Session, now: float) -> None:
        log.warning("Stepping down (SIGUSR2): handing the VIP over, back in the election in 3 s%s",
                    self.which())


    def _sync_gate(self, g: outputs.SyncGateChanged, session: Session, now: float) -> None:
        if session.machine.state is State.BACKUP or not g.behind:
            log.warning("%s%s", "Replicas behind the master: not preempting, waiting longer for "
                        "a silent master" if g.behind else "Replicas fresh: back in the election",
                        self.which())


_HANDLERS: dict[type, Any] = {
    Transition: Reporter.transition,
    Resumed: Reporter._resumed,
    Conflict: Reporter._conflict,
    outputs.Accepted: Reporter._accepted,
    outputs.Dropped: Reporter._dropped,
    outputs.PeerCounterBehind: Reporter._behind,
    outputs.PeerCounterBack: Reporter._back,
    outputs.PeersEvicted: Reporter._evicted,
    outputs.PeersSwept: Reporter._swept,
    outputs.FormerMasterSilent: Reporter._silent,
    outputs.ClaimSeen: Reporter._claim,
    outputs.StaleHolder: Reporter._stale,
    outputs.AdvertisableChanged: Reporter._advertisable,
    outputs.HealthChanged: Reporter._health,
    outputs.MaintenanceChanged: Reporter._maintenance,
    outputs.SteppingDown: Reporter._stepping_down,
    outputs.SyncGateChanged: Reporter._sync_gate,
}


def utc(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
