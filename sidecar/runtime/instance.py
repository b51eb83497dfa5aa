"""One CARP instance: a VHID on an interface, its state machine, its VIPs and its metrics.

The machine decides; an instance feeds it events (adverts routed here by the interface's
channel, the interface coming and going, health, maintenance, its own timer) and carries out
its actions: adverts are written at once, everything slow goes through its :class:`Effects`
queue. Everything an unauthenticated sender can grow (peers, ARP claims) is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from sidecar.config.runconfig import Vhid, Vip
from sidecar.core.machine import (
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
from sidecar.core.peers import ArpClaims, PeerTable, ReplayGuard
from sidecar.core.protocol import (
    BOW_OUT,
    Advert,
    AdvertError,
    DropReason,
    Expect,
    build_frame,
    build_ip_packet,
    parse_packet,
)
from sidecar.net.announce import build_arp_probe, build_garp, build_ns_probe, build_unsolicited_na
from sidecar.net.channel import Channel
from sidecar.net.netlink import AddressEvent, Netlink, NetlinkError
from sidecar.net.packet import UnicastSender
from sidecar.runtime.effects import Effect, Effects
from sidecar.runtime.maintenance import COUNTER_RESERVE, MaintenanceStore
from sidecar.runtime.scripts import Notifier, ScriptResult, base_environment
from sidecar.runtime.vips import VipBackend, backend_for
from sidecar.serve.logs import fields
from sidecar.serve.metrics import InstanceMetrics, Metrics

log = logging.getLogger("carp-sidecar")
PEER_CAPACITY = 32  # senders of our vhid remembered at once (a replay flood forges sources)
ARP_CAPACITY = 32  # other MACs announcing our VIP remembered at once
PROBE_AFTER_TAKEOVER = 2.0  # s: the old master has dropped its VIP by then, unless it cannot
PROBE_ANSWER_WINDOW = 1.0  # s: an NA this soon after our NS probe answers it
STALE_LOG_BACKOFF = 60.0  # s between log lines about one stale holder
UNROUTABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENODEV,
              errno.ENXIO, errno.ENETDOWN, errno.EPERM, errno.EACCES}  # EPERM: a firewall
FAILED_SENDS_FAULT = 3  # consecutive failed adverts of any kind (ucarp gives up after three)
SEND_CHECK_INTERVAL = 1.0  # s between checks that adverts can leave (unicast; after errors)
SWEEP_MIN, SWEEP_MAX = 0.05, 1.0  # s between peer-table sweeps: as needed, bounded both ways
WHY = {
    Reason.PREEMPT: "Putting MASTER down - preemption",
    Reason.MASTER_TIMEOUT: "Putting MASTER DOWN (going to time out)",
    Reason.HANDOVER: "Master handed over (bow-out advertisement): taking over",
    Reason.PREFERRED_MASTER: "Preferred master advertised: going back to BACKUP state",
    Reason.LINK_DOWN: "Link down: leaving MASTER state",
    Reason.DEMOTED: "Demoted: handing the VIP over",
    Reason.CANNOT_ADVERTISE: "Cannot advertise: leaving MASTER state",
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
        self.m = InstanceMetrics(metrics, s.vhid, s.interface, [str(v.ip) for v in s.vips],
                                 strict_peers=s.peers if s.strict else ())
        self.machine = Machine(_params(s, srcip),
                               # strict: counters start above the clock in µs and above the
                               # mark an earlier run kept (peers drop anything not newer)
                               rng=self._strict_seed if s.strict
                               else (lambda: secrets.randbits(64)))
        self.peer_table = PeerTable(PEER_CAPACITY, 3 * self.machine.master_down_interval_us / 1e6)
        self.arp_claims = ArpClaims(ARP_CAPACITY, self.machine.advert_interval_us / 1e6)
        self._expect = Expect(vhid=s.vhid, key=self.key, vip=s.hmac_address, group=s.mcast,
                              peers=frozenset(s.peers) if s.peers else None,
                              own=srcip if s.peers else None,
                              multicast=not s.peers or s.peers_multicast, strict=s.strict)
        self.unicast = UnicastSender() if s.peers else None
        self._nl = netlink
        self._source_present = True  # checked at start; then followed by netlink
        self._send_error: str | None = None  # why our adverts cannot leave, while they cannot
        self._last_send_error = ""
        self._last_errno = 0
        self._send_failed = asyncio.Event()  # wakes the multicast send check after a failure
        self._failed_sends = 0  # consecutive adverts that could go nowhere
        self._replays = ReplayGuard(self.machine.master_down_interval_us / 1e6)  # strict mode
        self._counter_floor = 0  # strict: an earlier run may have used counters up to this
        self._counters: tuple[MaintenanceStore, int] | None = None  # where reserved, up to what
        self._script_extra = script_extra
        self._script_base = base_environment(script_extra, s.script_env)
        self.effects = Effects(self._vip_backend(s), self._announce)
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
        self._probe_wake = asyncio.Event()  # a takeover (or a reload): the first probe is due
        self._reconfigured = asyncio.Event()  # set (and replaced) by each reload
        self._probe_at = 0.0
        self._probed_at = -1e9
        self._stale: dict[bytes, float] = {}  # stale holder MAC -> last logged (loop time)

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
                 s.vhid, ", ".join(s.shown_vips) + ("" if s.prefix_known else
                                                    " (prefix: the scripts' own)"), self.srcip,
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
        jobs += [self._garp_refresh(), self._watch_sending(), self._probe_stale_holders()]
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
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self.unicast is not None:
            self.unicast.close()

    def _vip_backend(self, s: Vhid) -> VipBackend:
        return backend_for(s, self._nl, self.m, lambda: self.channel.ifindex,
                           self.script_environment)

    # ---- reload: settings that change live ----
    def update(self, new: Vhid, script_extra: dict[str, str]) -> None:
        """Take ``new`` settings in place, without a transition unless the change itself calls
        for one (a worse advskew on a master whose peer preempts: the next advert carries it).
        The caller has checked that only live fields changed (see :mod:`reload`)."""
        old, self.s = self.s, new
        self.machine.params = _params(new, self.srcip)
        self.m.advbase.set(new.advbase)
        self.m.advskew.set(new.advskew)
        self.m.master_down_interval.set(self.machine.master_down_interval_us / 1e6)
        self._replays.stuck_after = self.machine.master_down_interval_us / 1e6
        self._script_extra = script_extra
        self._script_base = base_environment(script_extra, new.script_env)
        self.effects.backend = self._vip_backend(new)
        if new.notifyscript is None:
            self.notifier = None
        elif self.notifier is None:
            self.notifier = Notifier(new.notifyscript, new.vhid, new.script_timeout,
                                     self._notify_result)
            self._spawn(self.notifier.run())
        else:
            self.notifier.script, self.notifier.timeout = new.notifyscript, new.script_timeout
        if old.vips != new.vips:
            self._vips_changed(old, new)
        if old.probe_interval != new.probe_interval:
            self._probe_at = self.loop.time() + min(new.probe_interval, PROBE_AFTER_TAKEOVER)
        self._probe_wake.set()
        self._reconfigured.set()
        self._reconfigured = asyncio.Event()
        self._reschedule()

    def _vips_changed(self, old: Vhid, new: Vhid) -> None:
        gone = [v for v in old.vips if v not in new.vips]
        self.m.set_vips([str(v.ip) for v in new.vips])
        self.channel.set_vips(self, [v.ip for v in new.ipv4_vips], [v.ip for v in new.ipv6_vips])
        if self.machine.state is not State.MASTER or new.manages_vip_by_scripts:
            return  # scripts own the VIPs (the first one did not change: see reload.py)
        if gone:
            self._spawn(self._remove_vips(gone))
        self.effects.put(Effect.ADD_VIP)  # the new ones (the others are there already)
        self.effects.put(Effect.ANNOUNCE)

    async def _remove_vips(self, vips: list[Vip]) -> None:
        index = self.channel.ifindex
        for vip in vips:
            if index is not None:
                try:
                    await self._nl.remove_address(index, vip)
                except NetlinkError as e:
                    log.error("Cannot remove VIP %s from %s: %s", vip, self.s.interface, e)

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
        if t.new is State.MASTER:
            self._probe_at = self.loop.time() + PROBE_AFTER_TAKEOVER
            self._probe_wake.set()
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
        link_ok = (self.channel.attached is not None and self.machine.can_advertise
                   and (self.link_running or self.s.ignoreifstate))
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

    # ---- strict mode's counter: increasing across restarts, whatever the clock says ----
    def _strict_seed(self) -> int:
        return max(time.time_ns() // 1000, self._counter_floor + 1)

    def keep_counters(self, store: MaintenanceStore) -> None:
        """Before the first advert: start above what an earlier run reserved, and reserve ahead
        (one write per COUNTER_RESERVE adverts, not per advert). Raises StateError/OSError."""
        mark = store.counter_mark(self.s.name)
        self._counter_floor = mark or 0
        self._reserve(store, self._strict_seed())

    def _reserve(self, store: MaintenanceStore, counter: int) -> None:
        upto = min(counter + COUNTER_RESERVE, (1 << 64) - 1)
        store.reserve_counter(self.s.name, upto)
        self._counters = (store, upto)

    def _send_advert(self, a: SendAdvert) -> None:
        s = self.s
        if self._counters is not None and a.counter > self._counters[1] - COUNTER_RESERVE // 2:
            try:  # before the advert leaves: a crash after it must not reuse its counter
                self._reserve(self._counters[0], a.counter)
            except OSError as e:
                log.error("Cannot keep the advert counter in %s: %s; a restart with the clock "
                          "behind would be dropped as replays", self._counters[0].directory,
                          e.strerror or e)
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
            self._failed_sends = 0
            self.m.adverts_sent.inc()
            if a.handover:
                self.m.handovers_sent.inc()
            return
        self._failed_sends += 1
        # No route (or no such address) will not pass by itself; a full queue (ENOBUFS) may:
        # a master does not give up the VIP for one of those, only for a run of them.
        if self._send_error is None and (self._last_errno in UNROUTABLE
                                         or self._failed_sends >= FAILED_SENDS_FAULT):
            self._send_error = self._last_send_error
            self._send_failed.set()
            self._advertisable_changed()

    def _sent(self, send: Callable[[], None]) -> bool:
        try:
            send()
        except OSError as e:
            self.m.advert_send_errors.inc()
            log.warning("write() has failed: %s", e.strerror)
            self._last_send_error = f"sends fail: {e.strerror or e}"
            self._last_errno = e.errno or 0
            return False
        return True

    # ---- can our adverts leave? (a node its peers cannot hear must not hold the VIP) ----
    def _advertisable_changed(self) -> None:
        ok = self._source_present and self._send_error is None
        if ok == self.machine.can_advertise or self.stopping:
            return
        if ok:
            log.warning("Adverts can leave again (source %s on %s): taking part again%s",
                        self.srcip, self.s.interface, self._which(),
                        extra=fields(vhid=self.s.vhid, interface=self.s.interface))
        else:
            why = (self._send_error if self._source_present
                   else f"source address {self.srcip} is not on {self.s.interface}")
            log.warning("Cannot advertise (%s): not holding the VIP until adverts can leave%s",
                        why, self._which(),
                        extra=fields(vhid=self.s.vhid, interface=self.s.interface,
                                     reason="cannot_advertise"))
        self._apply(self.machine.set_can_advertise(self.loop.time(), ok))
        self._notify_if_changed("can_advertise" if ok else "cannot_advertise")

    def _source_changed(self, present: bool) -> None:
        if present != self._source_present:
            self._source_present = present
            self._advertisable_changed()

    async def _check_source(self, index: int) -> None:
        """A re-created interface: is our source address on it yet? (netlink events follow)"""
        try:
            present = any(a.ip == self.srcip for a in await self._nl.ipv4_addresses(index))
        except Exception as e:  # netlink trouble: the next address event decides
            log.warning("Cannot list the addresses of %s: %s", self.s.interface, e)
            return
        if self.channel.ifindex == index:
            self._source_changed(present)

    def _sending_works(self) -> str | None:
        """Why adverts could not leave now, without sending one: unicast peers need a route
        from our source (a UDP connect does the lookup and sends nothing)."""
        if self.unicast is None:
            return None if self.channel.attached is not None else "the interface is missing"
        error = "no peers"
        for peer in self.s.peers:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind((str(self.srcip), 0))
                probe.connect((str(peer), 9))
                return None
            except OSError as e:
                error = f"sends fail: {e.strerror or e} (to {peer})"
            finally:
                probe.close()
        return error

    async def _watch_sending(self) -> None:
        """Unicast: a backup checks every second that its peers are reachable, so it never
        takes over unable to advertise; after a failed send, any mode checks until it works."""
        while True:
            if self.unicast is None and self._send_error is None:
                # multicast, sending fine: no wake-ups at all until a send fails
                self._send_failed.clear()
                await self._send_failed.wait()
            await asyncio.sleep(SEND_CHECK_INTERVAL)
            if self.stopping:
                continue
            error = self._sending_works() if self._source_present else self._send_error
            if error != self._send_error:
                self._send_error = error
                self._advertisable_changed()

    def _announce(self) -> None:
        """GARP for each IPv4 VIP, unsolicited NA for each IPv6 VIP — only while MASTER: a
        stale announcement would pull clients to a node that has left."""
        if self.machine.state is not State.MASTER or \
                not self._per_vip(build_garp, build_unsolicited_na, "Gratuitous ARP"):
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
        if self.s.strict and not self._counted(received.src, ad.counter):
            return
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

    def _counted(self, src: IPv4Address, counter: int) -> bool:
        """Strict mode: is the counter above the peer's last one? A listed peer whose every
        advert is a "replay" for a master-down interval restarted with its clock behind and
        lost its counter mark: both may hold the VIP, so say so loudly (once)."""
        verdict = self._replays.check(src, counter, self.loop.time())
        gauge = self.m.peer_counter_behind.get(src)
        if verdict.recovered:
            if gauge is not None:
                gauge.set(0)
            log.warning("Peer %s's adverts are accepted again (its counter is above %d)%s",
                        src, verdict.last, self._which())
        if verdict.accepted:
            return True
        self.dropped(AdvertError(DropReason.REPLAY, f"counter not above {verdict.last}"),
                     src.packed)
        if verdict.stuck_for is not None:
            if gauge is not None:
                gauge.set(1)
            log.error("Peer %s: every advert for %.1f s was dropped as a replay (counter %d, "
                      "below the %d it sent before): its agent restarted with its clock behind "
                      "and without its CARP_STATE_DIR. Both nodes may hold the VIP. Restart this "
                      "agent to accept it again, and keep CARP_STATE_DIR on a volume "
                      "(docs/runbook.md)%s", src, verdict.stuck_for, counter, verdict.last,
                      self._which(), extra=fields(vhid=self.s.vhid, interface=self.s.interface,
                                                  peer=str(src), reason="replay"))
        return False

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
        if error.reason is DropReason.VRRP:
            log.warning("VRRP advertisement on our VHID%s: %s. A VRRP router (keepalived?) "
                        "shares this link and ID; CARP and VRRP ignore each other, but give it "
                        "another virtual_router_id (docs/runbook.md); further ones counted in "
                        "carp_adverts_dropped_total{reason=\"vrrp\"}", self._which(), error,
                        extra=extra)
        elif error.reason is DropReason.BAD_HMAC:  # ucarp's words, which people search for
            log.warning("Bad digest - Check vhid, password and virtual IP address%s (from %s; "
                        "further ones counted in carp_adverts_dropped_total)", self._which(),
                        extra["fields"].get("peer", "?"), extra=extra)
        else:
            log.warning("Dropped advertisement%s: %s (further drops counted in "
                        "carp_adverts_dropped_total)", self._which(), error, extra=extra)

    def _drop_fields(self, reason: str, src: bytes | None) -> dict[str, Any]:
        peer = str(IPv4Address(src)) if src is not None and len(src) == 4 else None
        return fields(vhid=self.s.vhid, interface=self.s.interface, reason=reason, peer=peer)

    def arp_claim(self, sender_mac: bytes, probe_reply: bool = False) -> None:
        """An ARP for one of our IPv4 VIPs from another MAC; ``probe_reply``: an answer to
        our probe, from a host that has the VIP configured."""
        if self.machine.state is not State.MASTER:
            return
        if probe_reply:
            self._stale_holder(sender_mac)
            return
        self.m.conflicts["arp"].inc()
        self._claimed(sender_mac)

    def na_claim(self, sender_mac: bytes) -> None:
        """A neighbour advertisement for one of our IPv6 VIPs from another MAC: just after our
        NS probe, the answer of a host that has it; otherwise another node announcing it."""
        if self.machine.state is not State.MASTER:
            return
        if self.loop.time() - self._probed_at < PROBE_ANSWER_WINDOW:
            self._stale_holder(sender_mac)
            return
        self.m.conflicts["na"].inc()
        self._claimed(sender_mac)

    def _claimed(self, sender_mac: bytes) -> None:
        if self.arp_claims.claimed(self.loop.time(), sender_mac):
            actions = self.machine.reannounce(self.loop.time())  # at most one per interval
            if actions:
                log.warning("Another host (%s) announces a VIP of vhid %d: re-announcing ours",
                            sender_mac.hex(":"), self.s.vhid)
            self._apply(actions)

    def _stale_holder(self, mac: bytes) -> None:
        """A host still has our VIP configured (a killed agent's, typically: SIGKILL and the OOM
        killer leave no down path). We cannot remove it there; we count it, say which MAC once
        per back-off period, and re-announce so clients that asked come back to us."""
        self.m.conflicts["stale_holder"].inc()
        now = self.loop.time()
        if now - self._stale.get(mac, -1e9) >= STALE_LOG_BACKOFF:
            if len(self._stale) >= ARP_CAPACITY:
                self._stale.clear()
            self._stale[mac] = now
            log.error("Stale holder of VIP %s: the host with MAC %s still has the address (a "
                      "killed agent's?) and answers for it: remove it there (docs/runbook.md). "
                      "Re-announcing ours%s", self.s.vips[0].ip, mac.hex(":"), self._which(),
                      extra=fields(vhid=self.s.vhid, interface=self.s.interface,
                                   reason="stale_holder", peer=mac.hex(":")))
        self._apply(self.machine.reannounce(now))

    async def _probe_stale_holders(self) -> None:
        """While MASTER: an RFC 5227 ARP probe (IPv6: an NS from ::) for each VIP, first
        PROBE_AFTER_TAKEOVER after the takeover, then every CARP_PROBE_INTERVAL (jittered, so
        many VHIDs do not probe at once). Only a host that has the VIP configured answers."""
        while True:
            self._probe_wake.clear()
            if self.machine.state is not State.MASTER or self.s.probe_interval <= 0:
                await self._probe_wake.wait()
                continue
            delay = self._probe_at - self.loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._probe_wake.wait(), delay)
                continue
            self._probe_at = self.loop.time() + self.s.probe_interval * random.uniform(0.9, 1.1)
            self._probe()

    def _probe(self) -> None:
        if self._per_vip(build_arp_probe, build_ns_probe, "VIP probe"):
            self._probed_at = self.loop.time()
            self.m.probes_sent.inc()

    def _per_vip(self, v4_frame: Callable[[bytes, IPv4Address], bytes],
                 v6_frame: Callable[[bytes, IPv6Address], bytes], what: str) -> bool:
        """One frame per VIP from our MAC (ARP for IPv4, ICMPv6 for IPv6); False if none could
        go out (no interface, or the kernel refused)."""
        attached = self.channel.attached
        if attached is None:
            return False
        try:
            for v4 in self.s.ipv4_vips:
                attached.sock.send_arp(v4_frame(attached.mac, v4.ip))
            for v6 in self.s.ipv6_vips:
                attached.sock.send_ipv6(v6_frame(attached.mac, v6.ip))
        except OSError as e:
            log.warning("%s failed: %s", what, e.strerror)
            return False
        return True

    def interface_changed(self, present: bool, running: bool, reattached: bool) -> None:
        self._interface_changed(present, running, reattached)
        if not self.stopping:
            self._notify_if_changed("link_up" if present and (running or self.s.ignoreifstate)
                                    else "link_down" if present else "interface_missing")

    def _interface_changed(self, present: bool, running: bool, reattached: bool) -> None:
        self.m.interface_present.set(1 if present else 0)
        now = self.loop.time()
        if reattached and self.channel.ifindex is not None:
            self._spawn(self._check_source(self.channel.ifindex))
        if not present:
            for child in self.m.vip_present.values():
                child.set(0)
            if self.link_running:
                self.link_running = False
                # ignoreifstate ignores carrier, not a missing interface: nothing can be sent
                self._apply(self.machine.link_changed(now, up=False, force=True))
            # the source address went with the interface: a new one has none until netlink
            # says so (a node that hears adverts but cannot send must not take over)
            self._source_present = False
            self._apply(self.machine.set_can_advertise(now, False))
            return
        if running != self.link_running:
            self.link_running = running
            self._apply(self.machine.link_changed(now, running))
        if reattached and self.s.ignoreifstate:  # carrier does not matter, presence does
            self._apply(self.machine.link_changed(now, up=True, force=True))

    def address_event(self, event: AddressEvent) -> None:
        if event.address == self.srcip:
            self._source_changed(event.added)
            return
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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _garp_refresh(self) -> None:
        """CARP_GARP_REFRESH while MASTER; idle (no wake-ups) while it is 0, until a reload."""
        while True:
            reconfigured = self._reconfigured
            if self.s.garp_refresh <= 0:
                await reconfigured.wait()
                continue
            try:
                await asyncio.wait_for(reconfigured.wait(), self.s.garp_refresh)
                continue  # a reload: start over with the new period
            except TimeoutError:
                pass
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

    def drop_check(self, name: str) -> None:
        """A reload removed or changed check ``name``: its last result no longer counts."""
        if self.checks.pop(name, None) is None:
            return
        all_ok = all(ok for ok, _ in self.checks.values())
        self.m.health_up.set(1 if all_ok else 0)
        self._apply(self.machine.set_healthy(self.loop.time(), all_ok))
        self.m.demoted.set(1 if self.machine.demoted else 0)

    def step_down(self) -> None:
        if self.machine.state is State.MASTER:
            log.warning("Stepping down (SIGUSR2): handing the VIP over, back in the election "
                        "in 3 s%s", self._which())
        self._apply(self.machine.step_down(self.loop.time()))

    # ---- views ----
    def log_state(self) -> None:
        state = "BACKUP" if self.machine.state is not State.MASTER else "MASTER"
        log.info("%s on %s id %d", state, self.s.interface, self.s.vhid)

    def ready(self) -> bool:
        return (self.machine.state is not State.INIT and self.channel.attached is not None
                and self.machine.can_advertise)

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
            "vip": s.shown_vips[0],
            "vips": s.shown_vips,
            "vip_prefix": "configured" if s.prefix_known else "set by the scripts",
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
            "master_down_interval": machine.master_down_interval_us / 1e6,
            "health": health,
            "interface_present": self.channel.attached is not None,
            "can_advertise": machine.can_advertise,
            "stale_holders": sorted(mac.hex(":") for mac, at in self._stale.items()
                                    if self.loop.time() - at < STALE_LOG_BACKOFF),
            "cannot_advertise_reason": None if machine.can_advertise else (
                self._send_error if self._source_present
                else f"source address {self.srcip} is not on {s.interface}"),
            "link_running": self.link_running,
            "peers": {src: {"last_seen": p.wall, "advbase": p.advbase, "advskew": p.advskew}
                      for src, p in self.peer_table.valid_peers().items()},
            "counters": {"adverts_sent": self.m.value("carp_adverts_sent_total"),
                         "adverts_received": self.m.value("carp_adverts_received_total"),
                         "adverts_dropped": {r: n for r, n in dropped.items() if n}},
        }


def _params(s: Vhid, srcip: IPv4Address) -> Params:
    return Params(advbase=s.advbase, advskew=s.advskew, deadratio=s.deadratio, preempt=s.preempt,
                  neutral=s.neutral, ignoreifstate=s.ignoreifstate, garp_repeat=s.garp_repeat,
                  own_ip=srcip, preempt_delay=s.preempt_delay,
                  vrrp3_dead_timer=s.vrrp3_dead_timer, strict=s.strict)


def _utc(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
