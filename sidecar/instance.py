"""One CARP instance: a VHID on an interface, its state machine, its VIPs and its metrics.

The machine decides; an instance feeds it events (adverts routed here by the interface's
channel, the interface coming and going, health, maintenance, its own timer) and carries out
its actions: adverts are written at once, everything slow goes through its :class:`Effects`
queue. Everything an unauthenticated sender can grow (peers, ARP claims) is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from .effects import Effect, Effects
from .logs import fields
from .machine import (
    Action,
    AddVip,
    Conflict,
    DropVip,
    Machine,
    Params,
    Reason,
    SendAdvert,
    SendGarp,
    State,
    Stopped,
    Transition,
)
from .metrics import InstanceMetrics, Metrics
from .net.announce import build_garp, build_unsolicited_na
from .net.channel import Channel
from .net.netlink import AddressEvent, Netlink
from .net.packet import UnicastSender
from .peers import ArpClaims, PeerTable
from .protocol import (
    BOW_OUT,
    Advert,
    AdvertError,
    DropReason,
    Expect,
    build_frame,
    build_ip_packet,
    parse_packet,
)
from .runconfig import Vhid
from .scripts import Notifier, ScriptResult, base_environment
from .vips import backend_for

log = logging.getLogger("carp-sidecar")
PEER_CAPACITY = 32  # senders of our vhid remembered at once (a replay flood forges sources)
ARP_CAPACITY = 32  # other MACs announcing our VIP remembered at once
SWEEP_MIN, SWEEP_MAX = 0.05, 1.0  # s between peer-table sweeps: as needed, bounded both ways
WHY = {
    Reason.PREEMPT: "Putting MASTER down - preemption",
    Reason.MASTER_TIMEOUT: "Putting MASTER DOWN (going to time out)",
    Reason.HANDOVER: "Master handed over (bow-out advertisement): taking over",
    Reason.PREFERRED_MASTER: "Preferred master advertised: going back to BACKUP state",
    Reason.LINK_DOWN: "Link down: leaving MASTER state",
    Reason.DEMOTED: "Demoted: handing the VIP over",
}


class Instance:
    def __init__(self, settings: Vhid, srcip: IPv4Address, channel: Channel,
                 netlink: Netlink, metrics: Metrics, loop: asyncio.AbstractEventLoop,
                 several: bool = False, script_extra: dict[str, str] | None = None) -> None:
        script_extra = script_extra or {}
        s = self.s = settings
        self._several = several  # log lines then say which vhid they are about
        self.srcip, self.channel, self.loop = srcip, channel, loop
        self.key = s.secret
        self.m = InstanceMetrics(metrics, s.vhid, s.interface, [str(v.ip) for v in s.vips])
        self.machine = Machine(Params(advbase=s.advbase, advskew=s.advskew,
                                      deadratio=s.deadratio, preempt=s.preempt,
                                      neutral=s.neutral, ignoreifstate=s.ignoreifstate,
                                      garp_repeat=s.garp_repeat, own_ip=srcip,
                                      preempt_delay=s.preempt_delay,
                                      vrrp3_dead_timer=s.vrrp3_dead_timer, strict=s.strict),
                               # strict: counters start at the clock in µs, so they keep
                               # increasing across restarts (peers drop anything not newer)
                               rng=(lambda: time.time_ns() // 1000) if s.strict
                               else (lambda: secrets.randbits(64)))
        self.peer_table = PeerTable(PEER_CAPACITY, 3 * self.machine.master_down_interval_us / 1e6)
        self.arp_claims = ArpClaims(ARP_CAPACITY, self.machine.advert_interval_us / 1e6)
        self._expect = Expect(vhid=s.vhid, key=self.key, vip=s.hmac_address, group=s.mcast,
                              peers=frozenset(s.peers) if s.peers else None,
                              own=srcip if s.peers else None,
                              multicast=not s.peers or s.peers_multicast, strict=s.strict)
        self.unicast = UnicastSender() if s.peers else None
        self._last_counter: dict[IPv4Address, int] = {}  # strict mode: per listed peer
        self._script_base = base_environment(script_extra, s.script_env)
        self.effects = Effects(backend_for(s, netlink, self.m, lambda: channel.ifindex,
                                           self.script_environment), self._announce)
        self.notifier = None if s.notifyscript is None else Notifier(
            s.notifyscript, s.vhid, s.script_timeout, self._notify_result)
        self._notified: str | None = None  # the last state the notify script was told
        self.checks: dict[str, tuple[bool, str]] = {}  # check name -> (healthy, last error)
        self.maintenance: dict[str, float] = {}  # "operator"/"file" -> since (Unix time)
        self.master_since: float | None = None
        self.last_transition: dict[str, Any] | None = None
        self.link_running = False  # the channel is opened after the instances are built
        self.stopped = asyncio.Event()
        self.stopping = False
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0
        self._takeover_started: float | None = None
        self._last_drop_log: dict[str, float] = {}
        self._went_silent: list[str] = []  # former masters not yet answered by a re-announce
        self._peer_series: set[str] = set()  # peers that have carp_peer_* series now
        self._peer_heard = asyncio.Event()  # wakes the sweeper of an empty peer table
        self._tasks: list[asyncio.Task[None]] = []

    # ---- Receiver (what the channel calls) ----
    @property
    def vhid(self) -> int:
        return self.s.vhid

    @property
    def expect(self) -> Expect:
        return self._expect

    # ---- life ----
    def start(self) -> list[Coroutine[Any, Any, None]]:
        """Start the machine; returns the coroutines the agent must supervise."""
        s, m = self.s, self.m
        m.advbase.set(s.advbase)
        m.advskew.set(s.advskew)
        m.master_down_interval.set(self.machine.master_down_interval_us / 1e6)
        m.interface_present.set(1 if self.channel.attached is not None else 0)
        log.info("Using [%s] as a network interface, vhid %d, VIP %s, source %s", s.interface,
                 s.vhid, ", ".join(map(str, s.vips)), self.srcip,
                 extra=fields(vhid=s.vhid, interface=s.interface))
        log.info("Local advertised ethernet address is [00:00:5e:00:00:%02x]", s.vhid,
                 extra=fields(vhid=s.vhid, interface=s.interface))
        if s.manages_vip_by_scripts:
            for kind, path in (("up", s.upscript), ("down", s.downscript)):
                if path is None:
                    log.warning("Warning: no script called when going %s", kind)
        self.link_running = self.channel.running
        if not self.link_running:
            self.machine.link_changed(self.loop.time(), up=False)
        self._apply(self.machine.start(self.loop.time()))
        jobs = [self.effects.run(), self._housekeeping()]
        if self.notifier is not None:
            jobs.append(self.notifier.run())
        self._notify_if_changed("startup")
        if s.garp_refresh > 0:
            jobs.append(self._garp_refresh())
        return jobs

    async def stop(self) -> None:
        """Hand over if MASTER (bow-out, VIP kept until a successor speaks), release the VIPs,
        and let the downscript finish (scripts have their own timeout)."""
        self.stopping = True
        self._apply(self.machine.stop(self.loop.time()))
        await self.stopped.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.effects.join(), self.s.script_timeout + 1)
        if self.notifier is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.notifier.join(), self.s.script_timeout + 1)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.unicast is not None:
            self.unicast.close()

    # ---- machine plumbing ----
    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, SendAdvert):
                self._send_advert(a)
            elif isinstance(a, AddVip):
                self.effects.put(Effect.ADD_VIP)
            elif isinstance(a, DropVip):
                self.effects.put(Effect.DROP_VIP)
            elif isinstance(a, SendGarp):
                self.effects.put(Effect.ANNOUNCE)
            elif isinstance(a, Transition):
                self._on_transition(a)
            elif isinstance(a, Conflict):
                self.m.conflicts["advert"].inc()
                if a.announce:
                    log.warning("Non-preferred master advertising: reasserting control of VIP "
                                "with another gratuitous arp (peer %s)", a.peer)
            elif isinstance(a, Stopped):
                self.stopped.set()
        self._reschedule()

    def _reschedule(self) -> None:
        deadline = self.machine.next_deadline()
        if self._timer is not None and deadline == self._armed_for:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._armed_for = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._apply(self.machine.timer_expired(max(self.loop.time(), self._armed_for)))

    def _on_transition(self, t: Transition) -> None:
        m = self.m
        extra = fields(vhid=self.s.vhid, interface=self.s.interface, state=t.new.name,
                       **{"from": t.old.name}, reason=t.reason.value,
                       peer=str(t.peer) if t.peer else None)
        if t.reason in WHY:
            log.warning("%s%s", WHY[t.reason], f" (peer {t.peer})" if t.peer else "", extra=extra)
        if t.new is not State.INIT:
            log.warning("Switching to state: %s%s", t.new.name, self._which(), extra=extra)
        m.set_state(t.new)
        m.transitions[(t.old, t.new, t.reason)].inc()
        now = time.time()
        m.last_transition.set(now)
        self.last_transition = {"from": t.old.name, "to": t.new.name, "reason": t.reason.value,
                                "at": now, "peer": str(t.peer) if t.peer else None}
        self.master_since = now if t.new is State.MASTER else None
        self._takeover_started = self.loop.time() if t.new is State.MASTER else None
        self._notify_if_changed(t.reason.value, t.peer)

    # ---- scripts: their environment, the notify script ----
    def script_environment(self, state: str, reason: str | None = None,
                           peer: str | None = None) -> dict[str, str]:
        """The scripts' environment for a move to ``state``; the reason and peer are the last
        transition's unless given."""
        t = self.last_transition or {}
        env = dict(self._script_base)
        env.update(CARP_STATE=state, CARP_REASON=reason or str(t.get("reason") or ""))
        if peer or t.get("peer"):
            env["CARP_PEER"] = peer or str(t["peer"])
        return env

    def notify_state(self) -> str:
        """keepalived's vocabulary: MASTER, BACKUP, FAULT (no usable link, or the service
        unhealthy: this node could not serve), STOP."""
        if self.machine.state is State.MASTER:
            return "MASTER"
        if self.machine.state is State.INIT:
            return "STOP" if self.stopping else "INIT"
        link_ok = self.channel.attached is not None and (self.link_running
                                                         or self.s.ignoreifstate)
        return "BACKUP" if link_ok and self.machine.healthy else "FAULT"

    def _notify_if_changed(self, reason: str, peer: IPv4Address | None = None) -> None:
        state = self.notify_state()
        if state == self._notified or state == "INIT":
            return
        self._notified = state
        if self.notifier is not None:
            self.notifier.notify(state, reason, self.script_environment(
                state, reason, str(peer) if peer is not None else None))

    def _notify_result(self, result: ScriptResult) -> None:
        self.m.script_runs[("notify", result.result)].inc()
        self.m.script_duration["notify"].observe(result.duration)

    def _which(self) -> str:
        """ucarp's log lines name nothing (one process, one VHID); with several we say which."""
        return f" (vhid {self.s.vhid} on {self.s.interface})" if self._several else ""

    def _send_advert(self, a: SendAdvert) -> None:
        s = self.s
        advert = Advert(vhid=s.vhid, advbase=a.advbase, advskew=a.advskew, counter=a.counter)
        sent = False
        unicast = self.unicast
        if unicast is not None:  # to each listed peer; the kernel routes
            for peer in s.peers:
                packet = build_ip_packet(advert, key=self.key, vip=s.hmac_address, src=self.srcip,
                                         dst=peer, ident=random.getrandbits(16), strict=s.strict)
                sent = self._sent(functools.partial(unicast.send, packet, peer)) or sent
        if self._expect.multicast:
            packet = build_ip_packet(advert, key=self.key, vip=s.hmac_address, src=self.srcip,
                                     dst=s.mcast, ident=random.getrandbits(16), strict=s.strict)
            frame = build_frame(packet, vhid=s.vhid, group=s.mcast, broadcast=s.nomcast)
            sent = self._sent(lambda: self.channel.send(frame)) or sent
        if sent:
            self.m.adverts_sent.inc()
            if a.handover:
                self.m.handovers_sent.inc()

    def _sent(self, send: Callable[[], None]) -> bool:
        try:
            send()
        except OSError as e:
            self.m.advert_send_errors.inc()
            log.warning("write() has failed: %s", e.strerror)
            return False
        return True

    def _announce(self) -> None:
        """GARP for each IPv4 VIP, unsolicited NA for each IPv6 VIP — only while MASTER: a
        stale announcement would pull clients to a node that has left."""
        attached = self.channel.attached
        if attached is None or self.machine.state is not State.MASTER:
            return
        try:
            for v4 in self.s.ipv4_vips:
                attached.sock.send_arp(build_garp(attached.mac, v4.ip))
            for v6 in self.s.ipv6_vips:
                attached.sock.send_ipv6(build_unsolicited_na(attached.mac, v6.ip))
        except OSError as e:
            log.warning("Gratuitous ARP failed: %s", e.strerror)
            return
        self.m.garps_sent.inc()
        if self._takeover_started is not None:
            self.m.takeover_duration.observe(self.loop.time() - self._takeover_started)
            self._takeover_started = None

    # ---- from the channel ----
    def advert_packet(self, packet: bytes) -> None:
        try:
            received = parse_packet(packet, self._expect)
        except AdvertError as e:
            self.dropped(e, packet[12:16])
            if e.reason is DropReason.BAD_HMAC:
                # someone advertises our vhid with another key: remember the claim (a master
                # that stops claiming may leave clients on its MAC), never act on its content
                carp = (packet[0] & 0x0F) * 4  # parse_packet has checked the lengths
                self._heard(str(IPv4Address(packet[12:16])), packet[carp + 5], packet[carp + 2],
                            valid=False)
            return
        ad, peer = received.advert, str(received.src)
        if self.s.strict:
            last = self._last_counter.get(received.src)
            if last is not None and ad.counter <= last:
                self.dropped(AdvertError(DropReason.REPLAY, f"counter not above {last}"),
                             received.src.packed)
                return
            self._last_counter[received.src] = ad.counter
        self.m.received.inc()
        self._heard(peer, ad.advbase, ad.advskew, valid=True)
        if ad.advbase == BOW_OUT and ad.advskew == BOW_OUT:
            self.m.handovers_received.inc()
        actions = self.machine.advert_received(self.loop.time(), received.src,
                                               ad.advbase, ad.advskew, ad.counter)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Advert from %s advbase %d advskew %d counter %d in %s: %s", peer,
                      ad.advbase, ad.advskew, ad.counter, self.machine.state.name,
                      ", ".join(type(a).__name__ for a in actions) or "nothing to do",
                      extra=fields(vhid=self.s.vhid, peer=peer, advbase=ad.advbase,
                                   advskew=ad.advskew))
        self._apply(actions)

    def dropped(self, error: AdvertError, src: bytes | None = None) -> None:
        """Count a drop; say so at most once a minute per reason. Cheap on the counted path:
        a flood of forged packets arrives here at line rate."""
        self.m.dropped[error.reason].inc()
        reason, now = error.reason.value, self.loop.time()
        if error.reason is DropReason.OTHER_VHID or now - self._last_drop_log.get(reason, -1e9) < 60:
            # other groups sharing the LAN are normal: counted, never warned about
            if log.isEnabledFor(logging.DEBUG):
                log.debug("Dropped advertisement%s: %s", self._which(), error,
                          extra=self._drop_fields(reason, src))
            return
        self._last_drop_log[reason] = now
        extra = self._drop_fields(reason, src)
        if error.reason is DropReason.BAD_HMAC:  # ucarp's words, which people search for
            log.warning("Bad digest - Check vhid, password and virtual IP address%s (from %s; "
                        "further ones counted in carp_adverts_dropped_total)", self._which(),
                        extra["fields"].get("peer", "?"), extra=extra)
        else:
            log.warning("Dropped advertisement%s: %s (further drops counted in "
                        "carp_adverts_dropped_total)", self._which(), error, extra=extra)

    def _drop_fields(self, reason: str, src: bytes | None) -> dict[str, Any]:
        peer = str(IPv4Address(src)) if src is not None and len(src) == 4 else None
        return fields(vhid=self.s.vhid, interface=self.s.interface, reason=reason, peer=peer)

    def arp_claim(self, sender_mac: bytes) -> None:
        """An ARP for one of our IPv4 VIPs from another MAC."""
        if self.machine.state is not State.MASTER:
            return
        self.m.conflicts["arp"].inc()
        if self.arp_claims.claimed(self.loop.time(), sender_mac):
            actions = self.machine.reannounce(self.loop.time())  # at most one per interval
            if actions:
                log.warning("Another host (%s) announces a VIP of vhid %d: re-announcing ours",
                            sender_mac.hex(":"), self.s.vhid)
            self._apply(actions)

    def interface_changed(self, present: bool, running: bool, reattached: bool) -> None:
        self._interface_changed(present, running, reattached)
        if not self.stopping:
            self._notify_if_changed("link_up" if present and (running or self.s.ignoreifstate)
                                    else "link_down" if present else "interface_missing")

    def _interface_changed(self, present: bool, running: bool, reattached: bool) -> None:
        self.m.interface_present.set(1 if present else 0)
        now = self.loop.time()
        if not present:
            for child in self.m.vip_present.values():
                child.set(0)
            if self.link_running:
                self.link_running = False
                # ignoreifstate ignores carrier, not a missing interface: nothing can be sent
                self._apply(self.machine.link_changed(now, up=False, force=True))
            return
        if running != self.link_running:
            self.link_running = running
            self._apply(self.machine.link_changed(now, running))
        if reattached and self.s.ignoreifstate:  # carrier does not matter, presence does
            self._apply(self.machine.link_changed(now, up=True, force=True))

    def address_event(self, event: AddressEvent) -> None:
        child = self.m.vip_present.get(str(event.address))
        if child is None:
            return
        child.set(1 if event.added else 0)
        if (not event.added and self.machine.state is State.MASTER and not self.machine.stopping
                and not self.s.manages_vip_by_scripts):
            log.warning("VIP %s was removed from %s by someone else: adding it back",
                        event.address, self.s.interface)
            self.effects.put(Effect.ADD_VIP)
            self.effects.put(Effect.ANNOUNCE)  # clients may have moved elsewhere meanwhile

    def vip_observed(self, present: set[IPv4Address | IPv6Address]) -> None:
        for vip in self.s.vips:
            self.m.vip_present[str(vip.ip)].set(1 if vip.ip in present else 0)

    # ---- peers ----
    def _heard(self, peer: str, advbase: int, advskew: int, valid: bool) -> None:
        # Per packet only the table is touched (a flood may bring 20k of these a second);
        # the peer series follow the table in _sync_peer_series.
        evicted = self.peer_table.heard(self.loop.time(), time.time(), peer, advbase, advskew,
                                        valid)
        self._peer_heard.set()
        if evicted:
            self.m.peers_evicted.inc(len(evicted))

    def _sync_peer_series(self) -> None:
        peers = self.peer_table.valid_peers()
        for gone in self._peer_series - peers.keys():
            self.m.forget_peer(gone)
        for src, p in peers.items():
            self.m.set_peer(src, p.wall, p.advbase, p.advskew)
        self._peer_series = set(peers)
        self.m.peers.set(len(self.peer_table))

    async def _housekeeping(self) -> None:
        """Peers expire; a former master that fell silent may have left clients on its MAC.
        A sweep happens when the table says something is due, and at least once a second (a
        peer heard meanwhile is due 2.5 of its intervals later at the earliest, 1 s after a
        bow-out); with nobody to watch it sleeps until an advert arrives."""
        while True:
            deadline = self.peer_table.next_deadline()
            if deadline is None and not self._went_silent:
                self._peer_heard.clear()  # nobody to watch (a lone master): sleep until heard
                await self._peer_heard.wait()
                continue
            now = self.loop.time()
            wait = SWEEP_MAX if deadline is None else min(max(deadline - now, SWEEP_MIN), SWEEP_MAX)
            await asyncio.sleep(wait)
            now = self.loop.time()
            self.peer_table.expire(now)
            self._sync_peer_series()
            silent = self.peer_table.fallen_silent(now)
            if silent:
                self._went_silent = silent
            if self._went_silent and self.machine.state is not State.MASTER:
                self._went_silent = []
            elif self._went_silent:
                # at most one GARP per advert interval: if one just went out, try next tick
                actions = self.machine.reannounce(now)
                if actions:
                    former = self._went_silent
                    log.warning("Former master %s stopped advertising: re-announcing VIP %s",
                                ", ".join(former[:3]) + (" …" if len(former) > 3 else ""),
                                self.s.vips[0].ip)
                    self._went_silent = []
                self._apply(actions)

    async def _garp_refresh(self) -> None:
        while True:
            await asyncio.sleep(self.s.garp_refresh)
            if self.machine.state is State.MASTER:
                self.effects.put(Effect.ANNOUNCE)

    # ---- health and maintenance ----
    def set_maintenance(self, source: str, since: float | None) -> bool:
        """Maintenance by ``source`` ("operator": the control socket or a record restored at
        start; "file": the maintenance file) began at ``since`` (Unix time), or ended (None).
        True if that changed anything."""
        if (source in self.maintenance) == (since is not None):
            return False
        if since is None:
            del self.maintenance[source]
        else:
            self.maintenance[source] = since
        on = bool(self.maintenance)
        self.m.maintenance.set(1 if on else 0)
        self.m.maintenance_since.set(min(self.maintenance.values()) if on else 0)
        what = "by operator" if source == "operator" else f"by maintenance file {self.s.maintenance_file}"
        if self.machine.state is State.INIT:
            if since is not None:
                log.warning("Starting in maintenance (demoted %s since %s)%s", what,
                            _utc(since), self._which())
        else:
            log.warning("Maintenance mode %s %s%s", "on" if since is not None else "off", what,
                        self._which())
        self._apply(self.machine.set_maintenance(self.loop.time(), on))
        self.m.demoted.set(1 if self.machine.demoted else 0)
        return True

    def check_result(self, ok: bool) -> None:
        self.m.health_checks[ok].inc()

    def check_changed(self, name: str, healthy: bool, error: str) -> None:
        self.checks[name] = (healthy, error)
        all_ok = all(ok for ok, _ in self.checks.values())
        self.m.health_up.set(1 if all_ok else 0)
        if all_ok != self.machine.healthy:
            log.warning("Service %s%s", "healthy again" if all_ok else f"unhealthy ({error})",
                        self._which())
        self._apply(self.machine.set_healthy(self.loop.time(), all_ok))
        self.m.demoted.set(1 if self.machine.demoted else 0)
        if not self.stopping:
            self._notify_if_changed("healthy" if all_ok else "unhealthy")

    # ---- views ----
    def log_state(self) -> None:
        state = "BACKUP" if self.machine.state is not State.MASTER else "MASTER"
        log.info("%s on %s id %d", state, self.s.interface, self.s.vhid)

    def ready(self) -> bool:
        return self.machine.state is not State.INIT and self.channel.attached is not None

    def status(self) -> dict[str, Any]:
        s, machine = self.s, self.machine
        dropped = {r.value: self.m.value("carp_adverts_dropped_total", reason=r.value)
                   for r in DropReason}
        health = None
        if self.checks:
            errors = [e for ok, e in self.checks.values() if not ok]
            health = {"healthy": machine.healthy, "last_error": errors[0] if errors else "",
                      "checks": {n: ok for n, (ok, _) in self.checks.items()}}
        return {
            "state": machine.state.name,
            "vhid": s.vhid,
            "interface": s.interface,
            "vip": str(s.vips[0]),
            "vips": [str(v) for v in s.vips],
            "srcip": str(self.srcip),
            "advbase": s.advbase,
            "advskew": s.advskew,
            "preempt": s.preempt,
            "master_since": self.master_since,
            "last_transition": self.last_transition,
            "demoted": machine.demoted,
            "maintenance": machine.maintenance,
            "maintenance_since": _utc(min(self.maintenance.values())) if self.maintenance else None,
            "maintenance_by": sorted(self.maintenance),
            "preempt_delay": s.preempt_delay,
            "health": health,
            "interface_present": self.channel.attached is not None,
            "link_running": self.link_running,
            "peers": {src: {"last_seen": p.wall, "advbase": p.advbase, "advskew": p.advskew}
                      for src, p in self.peer_table.valid_peers().items()},
            "counters": {"adverts_sent": self.m.value("carp_adverts_sent_total"),
                         "adverts_received": self.m.value("carp_adverts_received_total"),
                         "adverts_dropped": {r: n for r, n in dropped.items() if n}},
        }


def _utc(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
