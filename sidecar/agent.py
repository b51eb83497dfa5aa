"""The asyncio loop that wires the pure machine to sockets, netlink, scripts, health and HTTP.

The machine decides; this module only carries out its actions and feeds it events. Adverts are
sent inline (a non-blocking socket write). Everything slow — netlink VIP changes, scripts,
GARPs that must follow them — goes through :mod:`effects`, one ordered queue served by its own
task, so a slow script never delays an advertisement. The only timer is the machine's next deadline,
armed with ``loop.call_at``; there is no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import Coroutine
from ipaddress import IPv4Address
from typing import Any

from prometheus_client import CollectorRegistry
from pyroute2.netlink.exceptions import NetlinkError

from . import logs
from .config import Settings, host_port
from .control import ControlServer, socket_path
from .effects import Effect, Effects
from .health import HealthMonitor, checks_from
from .http import StatusServer
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
    Transition,
)
from .metrics import Metrics
from .net.netlink import AddressEvent, InterfaceNotFound, LinkEvent, Netlink
from .net.packet import ETH_P_ARP, ETH_P_IP, Attached, PacketSocket
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
from .reaper import reap_forever

log = logging.getLogger("carp-sidecar")
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
SUCCESSOR_WAIT = 0.8  # s a stopping master keeps the VIP waiting for the new master's advert
PEER_CAPACITY = 32  # senders of our vhid remembered at once (a replay flood forges sources)
ARP_CAPACITY = 32  # other MACs announcing our VIP remembered at once
HOUSEKEEPING = 0.25  # s between peer-table sweeps (expiry, silent former masters)
WHY = {
    Reason.PREEMPT: "Putting MASTER down - preemption",
    Reason.MASTER_TIMEOUT: "Putting MASTER DOWN (going to time out)",
    Reason.HANDOVER: "Master handed over (bow-out advertisement): taking over",
    Reason.PREFERRED_MASTER: "Preferred master advertised: going back to BACKUP state",
    Reason.LINK_DOWN: "Link down: leaving MASTER state",
    Reason.DEMOTED: "Demoted: handing the VIP over",
}


class StartupError(Exception):
    """Cannot run in this environment; the message says what to change (exit status 2)."""


def _capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


class Agent:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None,
                 version: str = "0") -> None:
        self.s = settings
        self.vip = settings.vip
        self.key = settings.secret
        self.registry = registry or CollectorRegistry()
        self.m = Metrics(self.registry, settings.vhid, settings.interface, version)
        self.machine: Machine | None = None
        self.srcip = settings.srcip
        self.attached: Attached | None = None  # None while the interface is missing
        self.health: HealthMonitor | None = None
        self.maintenance = False
        self.health_ok = True
        self.master_since: float | None = None
        self.last_transition: dict[str, Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0
        self._takeover_started: float | None = None
        self._stopping = asyncio.Event()
        self._successor = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_drop_log: dict[str, float] = {}
        self._went_silent: list[str] = []  # former masters not yet answered by a re-announce
        self._peer_series: set[str] = set()  # peers that have carp_peer_* series now
        self._link_running = True
        self.failed = False
        self.http: StatusServer | None = None
        self.control: ControlServer | None = None

    # ---- start / stop ----
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._check_capabilities()
        self.nl = Netlink()
        try:
            await self._open()
            self._begin()
            await self._stopping.wait()
            await self._shutdown()
        finally:
            await self._close()
        return 1 if self.failed else 0

    def _check_capabilities(self) -> None:
        caps = _capabilities()
        if not caps >> CAP_NET_RAW & 1:
            raise StartupError("missing capability NET_RAW: CARP adverts need a packet socket "
                               "(docker run --cap-add=NET_RAW, or run as root)")
        if not self.s.manages_vip_by_scripts and not caps >> CAP_NET_ADMIN & 1:
            raise StartupError("missing capability NET_ADMIN: the agent adds and removes the VIP "
                               "by netlink (docker run --cap-add=NET_ADMIN)")

    async def _open(self) -> None:
        s = self.s
        try:
            link = await self.nl.link(s.interface)
        except InterfaceNotFound:
            raise StartupError(f"CARP_INTERFACE: no interface named {s.interface!r}") from None
        self._link_running = link.running
        own = [a.ip for a in await self.nl.ipv4_addresses(link.index) if a.ip != self.vip.ip]
        if self.srcip is None:
            if not own:
                raise StartupError(f"CARP_SRCIP: not set and {s.interface} has no IPv4 address")
            self.srcip = own[0]
        elif self.srcip not in own:
            raise StartupError(f"CARP_SRCIP: {self.srcip} is not an address of {s.interface} "
                               f"(it has {', '.join(map(str, own)) or 'none'})")
        self._build_core()
        try:
            self.attached = self._attach_socket(link.index, link.mac)
        except PermissionError:
            raise StartupError("missing capability NET_RAW for the packet socket") from None
        except OSError as e:
            raise StartupError(f"CARP_INTERFACE: cannot open {s.interface}: {e.strerror}") from None
        if not s.manages_vip_by_scripts:
            try:
                if await self.nl.remove_address(link.index, self.vip):
                    log.warning("Removed stale VIP %s from %s (left by an earlier run)",
                                self.vip.ip, s.interface)
            except NetlinkError as e:
                if e.code == 1:
                    raise StartupError("missing capability NET_ADMIN: cannot manage the VIP by "
                                       "netlink (docker run --cap-add=NET_ADMIN)") from None
                raise
        self.m.vip_present.labels(**self.m.labels).set(
            1 if await self.nl.has_address(link.index, self.vip.ip) else 0)
        self.m.interface_present.labels(**self.m.labels).set(1)
        await self._open_servers()

    def _build_core(self) -> None:
        """The machine and what feeds it, once the source address is known (no I/O)."""
        s = self.s
        assert self.srcip is not None
        params = Params(advbase=s.advbase, advskew=s.advskew, deadratio=s.deadratio,
                        preempt=s.preempt, neutral=s.neutral, ignoreifstate=s.ignoreifstate,
                        garp_repeat=s.garp_repeat, own_ip=self.srcip)
        self.machine = Machine(params, rng=lambda: secrets.randbits(64))
        self.peer_table = PeerTable(PEER_CAPACITY,
                                    3 * self.machine.master_down_interval_us / 1e6)
        self.arp_claims = ArpClaims(ARP_CAPACITY, self.machine.advert_interval_us / 1e6)
        self.expect = Expect(vhid=s.vhid, key=self.key, vip=self.vip.ip, group=s.mcast)
        self.effects = Effects(s, self.m, self.nl, lambda: self.attached, self._is_master,
                               self._garp_sent)

    def _attach_socket(self, index: int, mac: bytes) -> Attached:
        s = self.s
        sock = PacketSocket(s.interface, index, s.mcast, join=not s.nomcast, vips=[self.vip.ip])
        return Attached(index, mac, sock)

    def _is_master(self) -> bool:
        return self.machine is not None and self.machine.state is State.MASTER

    async def _open_servers(self) -> None:
        if self.s.metrics_listen != "off":
            host, port = host_port(self.s.metrics_listen)
            self.http = StatusServer(self.registry, self.status, self.ready,
                                     self.m.http_refused.labels(**self.m.labels).inc)
            try:
                await self.http.start(host, port)
            except OSError as e:
                raise StartupError(f"CARP_METRICS_LISTEN: cannot listen on "
                                   f"{self.s.metrics_listen}: {e.strerror}") from None
        control = ControlServer(socket_path(self.s), self._control)
        try:
            await control.start()
        except OSError as e:
            raise StartupError(f"CARP_CONTROL_SOCKET: cannot create {control.path}: "
                               f"{e.strerror or e}") from None
        self.control = control

    def _begin(self) -> None:
        assert self.machine is not None
        s, m, lb = self.s, self.m, self.m.labels
        m.advbase.labels(**lb).set(s.advbase)
        m.advskew.labels(**lb).set(s.advskew)
        m.master_down_interval.labels(**lb).set(self.machine.master_down_interval_us / 1e6)
        m.demoted.labels(**lb).set(0)
        m.maintenance.labels(**lb).set(0)
        log.info("Using [%s] as a network interface, vhid %d, VIP %s, source %s", s.interface,
                 s.vhid, self.vip, self.srcip)
        if s.manages_vip_by_scripts:
            for kind, path in (("up", s.upscript), ("down", s.downscript)):
                if path is None:
                    log.warning("Warning: no script called when going %s", kind)
        # the signals ucarp --shutdown treats as "release and exit"
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            self.loop.add_signal_handler(sig, self._stopping.set)
        self.loop.add_signal_handler(signal.SIGUSR1, self._log_state)
        self._spawn(self.effects.run())
        self._spawn(self._netlink_events())
        self._spawn(self._housekeeping())
        if os.getpid() == 1:  # a container's entry point inherits every orphaned daemon
            self._spawn(reap_forever())
        if self.control is not None:
            self._spawn(self.control.watch())
        if s.garp_refresh > 0:
            self._spawn(self._garp_refresh())
        checks = checks_from(s)
        if checks:
            self.health = HealthMonitor(checks, s.health_interval, s.health_timeout,
                                        s.health_rise, s.health_fall, self._health_result,
                                        self._health_changed)
            self._spawn(self.health.run())
        if not self._link_running:
            self.machine.link_changed(self.loop.time(), up=False)
        assert self.attached is not None
        self.loop.add_reader(self.attached.sock.fileno(), self._on_readable)
        self._apply(self.machine.start(self.loop.time()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # A helper that dies would leave the agent deaf or stuck: log it and stop cleanly.
        if not task.cancelled() and task.exception() is not None:
            log.error("Internal task failed: %r; stopping", task.exception(),
                      exc_info=task.exception())
            self.failed = True
            self._stopping.set()

    async def _shutdown(self) -> None:
        assert self.machine is not None
        actions = self.machine.stop(self.loop.time())
        bow_out: list[Action] = [a for a in actions if isinstance(a, SendAdvert)]
        if bow_out:
            # Keep the VIP until a successor announces itself (or SUCCESSOR_WAIT passes): the
            # client then never meets a moment where nobody answers for the VIP. Backups are
            # silent, so even a master that never heard a peer cannot skip this wait.
            self._successor.clear()
            self._apply(bow_out)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._successor.wait(), SUCCESSOR_WAIT)
        self._stop_reading()
        self._apply([a for a in actions if not isinstance(a, SendAdvert)])
        # let the VIP removal / downscript finish; scripts have their own timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.effects.join(), self.s.script_timeout + 1)
        log.info("Exiting")

    async def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        for server in (getattr(self, "http", None), getattr(self, "control", None)):
            if server is not None:
                await server.close()  # also removes the control socket file
        for closer in (self.attached.sock if self.attached else None, self.nl):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()

    def _stop_reading(self) -> None:
        if self.attached is not None:
            self.loop.remove_reader(self.attached.sock.fileno())

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
                self.effects.put(Effect.GARP)
            elif isinstance(a, Transition):
                self._on_transition(a)
            elif isinstance(a, Conflict):
                self.m.hot.conflicts["advert"].inc()
                if a.announce:
                    log.warning("Non-preferred master advertising: reasserting control of VIP "
                                "with another gratuitous arp (peer %s)", a.peer)
        self._reschedule()

    def _reschedule(self) -> None:
        assert self.machine is not None
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
        assert self.machine is not None
        self._timer = None
        self._apply(self.machine.timer_expired(max(self.loop.time(), self._armed_for)))

    def _on_transition(self, t: Transition) -> None:
        m, lb = self.m, self.m.labels
        if t.reason in WHY:
            log.warning("%s%s", WHY[t.reason], f" (peer {t.peer})" if t.peer else "")
        if t.new is not State.INIT:
            log.warning("Switching to state: %s", t.new.name)
        m.set_state(t.new)
        m.transitions.labels(**lb, **{"from": t.old.name, "to": t.new.name},
                             reason=t.reason.value).inc()
        now = time.time()
        m.last_transition.labels(**lb).set(now)
        self.last_transition = {"from": t.old.name, "to": t.new.name, "reason": t.reason.value,
                                "at": now, "peer": str(t.peer) if t.peer else None}
        self.master_since = now if t.new is State.MASTER else None
        self._takeover_started = self.loop.time() if t.new is State.MASTER else None

    def _send_advert(self, a: SendAdvert) -> None:
        assert self.srcip is not None
        if self.attached is None:
            return  # no interface: the machine is BACKUP without timers, except when stopping
        advert = Advert(vhid=self.s.vhid, advbase=a.advbase, advskew=a.advskew, counter=a.counter)
        packet = build_ip_packet(advert, key=self.key, vip=self.vip.ip, src=self.srcip,
                                 dst=self.s.mcast, ident=random.getrandbits(16))
        frame = build_frame(packet, vhid=self.s.vhid, group=self.s.mcast, broadcast=self.s.nomcast)
        try:
            self.attached.sock.send(frame)
        except OSError as e:
            self.m.advert_send_errors.labels(**self.m.labels).inc()
            log.warning("write() has failed: %s", e.strerror)
            return
        self.m.adverts_sent.labels(**self.m.labels).inc()
        if a.handover:
            self.m.handovers_sent.labels(**self.m.labels).inc()

    def _on_readable(self) -> None:
        if self.attached is None:
            return
        for frame in self.attached.sock.receive():
            ethertype = int.from_bytes(frame[12:14], "big")
            if ethertype == ETH_P_IP:
                self._on_ip_packet(frame[14:])
            elif ethertype == ETH_P_ARP:
                self._on_arp(frame)

    def _on_ip_packet(self, packet: bytes) -> None:
        assert self.machine is not None and self.srcip is not None
        if packet[12:16] == self.srcip.packed:
            return
        try:
            received = parse_packet(packet, self.expect)
        except AdvertError as e:
            self._dropped(e)
            if e.reason is DropReason.BAD_HMAC:
                # someone advertises our vhid with another key: remember the claim (a master
                # that stops claiming may leave clients on its MAC), never act on its content
                carp = (packet[0] & 0x0F) * 4  # parse_packet has checked the lengths
                self._heard(str(IPv4Address(packet[12:16])), packet[carp + 5], packet[carp + 2],
                            valid=False)
            return
        ad, peer = received.advert, str(received.src)
        self.m.hot.received.inc()
        self._heard(peer, ad.advbase, ad.advskew, valid=True)
        if ad.advbase == BOW_OUT and ad.advskew == BOW_OUT:
            self.m.handovers_received.labels(**self.m.labels).inc()
        self._successor.set()
        self._apply(self.machine.advert_received(self.loop.time(), received.src,
                                                 ad.advbase, ad.advskew, ad.counter))

    def _heard(self, peer: str, advbase: int, advskew: int, valid: bool) -> None:
        # Per packet only the table is touched (a flood may bring 20k of these a second);
        # the peer series follow the table in _sync_peer_series.
        evicted = self.peer_table.heard(self.loop.time(), time.time(), peer, advbase, advskew,
                                        valid)
        if evicted:
            self.m.hot.peers_evicted.inc(len(evicted))

    def _sync_peer_series(self) -> None:
        lb, peers = self.m.labels, self.peer_table.valid_peers()
        for gone in self._peer_series - peers.keys():
            self.m.forget_peer(gone)
        for src, p in peers.items():
            self.m.peer_last_advert.labels(**lb, peer=src).set(p.wall)
            self.m.peer_advskew.labels(**lb, peer=src).set(p.advskew)
            self.m.peer_advbase.labels(**lb, peer=src).set(p.advbase)
        self._peer_series = set(peers)
        self.m.peers.labels(**lb).set(len(self.peer_table))

    def _on_arp(self, frame: bytes) -> None:
        """An ARP frame whose sender address is our VIP (the kernel filter checked that)."""
        if len(frame) < 42 or self.attached is None or self.machine is None:
            return
        sender_mac = frame[22:28]
        if sender_mac == self.attached.mac or self.machine.state is not State.MASTER:
            return
        self.m.hot.conflicts["arp"].inc()
        if self.arp_claims.claimed(self.loop.time(), sender_mac):
            actions = self.machine.reannounce(self.loop.time())  # at most one per interval
            if actions:
                log.warning("Another host (%s) announces VIP %s: re-announcing ours",
                            sender_mac.hex(":"), self.vip.ip)
            self._apply(actions)

    def _dropped(self, e: AdvertError) -> None:
        reason = e.reason.value
        self.m.hot.dropped[e.reason].inc()
        now = self.loop.time()
        if now - self._last_drop_log.get(reason, -1e9) >= 60:  # one line a minute per reason
            self._last_drop_log[reason] = now
            log.warning("Dropped advertisement: %s (further drops counted in "
                        "carp_adverts_dropped_total)", e)

    def _garp_sent(self) -> None:
        if self._takeover_started is not None:
            self.m.takeover_duration.labels(**self.m.labels).observe(
                self.loop.time() - self._takeover_started)
            self._takeover_started = None

    async def _garp_refresh(self) -> None:
        while True:
            await asyncio.sleep(self.s.garp_refresh)
            if self._is_master():
                self.effects.put(Effect.GARP)

    async def _housekeeping(self) -> None:
        """Peers expire; a former master that fell silent may have left clients on its MAC."""
        assert self.machine is not None
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            now = self.loop.time()
            self.peer_table.expire(now)
            self._sync_peer_series()
            silent = self.peer_table.fallen_silent(now)
            if silent:
                self._went_silent = silent
            if self._went_silent and not self._is_master():
                self._went_silent = []
            elif self._went_silent:
                # at most one GARP per advert interval: if one just went out, try next tick
                actions = self.machine.reannounce(now)
                if actions:
                    former = self._went_silent
                    log.warning("Former master %s stopped advertising: re-announcing VIP %s",
                                ", ".join(former[:3]) + (" …" if len(former) > 3 else ""),
                                self.vip.ip)
                    self._went_silent = []
                self._apply(actions)

    # ---- events from netlink, health, operators ----
    async def _netlink_events(self) -> None:
        async for event in self.nl.events():
            if isinstance(event, LinkEvent):
                await self._on_link_event(event)
            elif self.attached is not None and event.index == self.attached.index:
                self._on_address_event(event)

    async def _on_link_event(self, event: LinkEvent) -> None:
        assert self.machine is not None
        ours = self.attached is not None and event.index == self.attached.index
        if ours and (event.deleted or event.name != self.s.interface):
            self._detach("deleted" if event.deleted else f"renamed to {event.name}")
        elif not ours and event.name == self.s.interface and not event.deleted:
            if self.attached is not None:
                self._detach("replaced")  # the deletion of the old one was not seen
            self._attach(event)
        if self.attached is None or event.index != self.attached.index:
            return
        if event.running != self._link_running:
            self._link_running = event.running
            log.warning("Link %s on %s", "up" if event.running else "down", self.s.interface)
            self._apply(self.machine.link_changed(self.loop.time(), event.running))

    def _detach(self, why: str) -> None:
        """The interface is gone: like a link loss (VIP dropped, BACKUP), until it comes back."""
        assert self.machine is not None and self.attached is not None
        log.warning("Interface %s %s: leaving MASTER state if held, waiting for it to return",
                    self.s.interface, why)
        self._stop_reading()
        with contextlib.suppress(OSError):
            self.attached.sock.close()
        self.attached = None
        self.m.interface_present.labels(**self.m.labels).set(0)
        self.m.vip_present.labels(**self.m.labels).set(0)
        if self._link_running:
            self._link_running = False
            # ignoreifstate ignores carrier, not a missing interface: nothing can be sent
            self._apply(self.machine.link_changed(self.loop.time(), up=False, force=True))

    def _attach(self, event: LinkEvent) -> None:
        assert self.machine is not None
        try:
            self.attached = self._attach_socket(event.index, event.mac)
        except OSError as e:
            log.error("Interface %s is back (index %d) but cannot be opened: %s; retrying on its "
                      "next change", self.s.interface, event.index, e.strerror or e)
            return
        log.warning("Interface %s is back (index %d): taking part again", self.s.interface,
                    event.index)
        self.loop.add_reader(self.attached.sock.fileno(), self._on_readable)
        self.m.interface_present.labels(**self.m.labels).set(1)
        if self.s.ignoreifstate:  # carrier does not matter, presence does
            self._apply(self.machine.link_changed(self.loop.time(), up=True, force=True))

    def _on_address_event(self, event: AddressEvent) -> None:
        assert self.machine is not None
        if event.address != self.vip.ip:
            return
        self.m.vip_present.labels(**self.m.labels).set(1 if event.added else 0)
        if (not event.added and self.machine.state is State.MASTER
                and not self.s.manages_vip_by_scripts):
            log.warning("VIP %s was removed from %s by someone else: adding it back",
                        self.vip.ip, self.s.interface)
            self.effects.put(Effect.ADD_VIP)
            self.effects.put(Effect.GARP)  # clients may have moved elsewhere meanwhile

    def _health_result(self, ok: bool) -> None:
        self.m.health_checks.labels(**self.m.labels, result="ok" if ok else "failed").inc()

    def _health_changed(self, healthy: bool, error: str) -> None:
        self.health_ok = healthy
        self.m.health_up.labels(**self.m.labels).set(1 if healthy else 0)
        if healthy:
            log.warning("Service healthy again")
        else:
            log.warning("Service unhealthy (%s)", error)
        self._update_demotion()

    def _control(self, command: str) -> str:
        if command in ("demote", "promote"):
            self.maintenance = command == "demote"
            self.m.maintenance.labels(**self.m.labels).set(1 if self.maintenance else 0)
            log.warning("Maintenance mode %s by operator", "on" if self.maintenance else "off")
            self._update_demotion()
        assert self.machine is not None
        return f"{self.machine.state.name} maintenance={'on' if self.maintenance else 'off'}"

    def _update_demotion(self) -> None:
        assert self.machine is not None
        demoted = self.maintenance or not self.health_ok
        if demoted != self.machine.demoted:
            self.m.demoted.labels(**self.m.labels).set(1 if demoted else 0)
            self._apply(self.machine.set_demoted(self.loop.time(), demoted))

    def _log_state(self) -> None:
        assert self.machine is not None
        state = "BACKUP" if self.machine.state is not State.MASTER else "MASTER"
        log.info("%s on %s id %d", state, self.s.interface, self.s.vhid)

    # ---- HTTP views ----
    def _counters(self) -> dict[str, Any]:
        """Read back from the metrics, so /status and /metrics can never disagree."""
        def value(name: str, **labels: str) -> int:
            return int(self.registry.get_sample_value(name, {**self.m.labels, **labels}) or 0)

        dropped = {r.value: value("carp_adverts_dropped_total", reason=r.value) for r in DropReason}
        return {"adverts_sent": value("carp_adverts_sent_total"),
                "adverts_received": value("carp_adverts_received_total"),
                "adverts_dropped": {r: n for r, n in dropped.items() if n}}
    def ready(self) -> bool:
        return (self.machine is not None and self.machine.state is not State.INIT
                and self.attached is not None)

    def status(self) -> dict[str, Any]:
        machine = self.machine
        return {
            "state": machine.state.name if machine else "INIT",
            "vhid": self.s.vhid,
            "interface": self.s.interface,
            "vip": str(self.vip),
            "srcip": str(self.srcip),
            "advbase": self.s.advbase,
            "advskew": self.s.advskew,
            "preempt": self.s.preempt,
            "master_since": self.master_since,
            "last_transition": self.last_transition,
            "demoted": bool(machine and machine.demoted),
            "maintenance": self.maintenance,
            "health": None if self.health is None else {
                "healthy": self.health.healthy, "last_error": self.health.last_error},
            "interface_present": self.attached is not None,
            "link_running": self._link_running,
            "peers": {src: {"last_seen": p.wall, "advbase": p.advbase, "advskew": p.advskew}
                      for src, p in self.peer_table.valid_peers().items()}
                     if machine else {},
            "control_socket": None if self.control is None else {
                "path": str(self.control.path), "ok": not self.control.problem,
                "problem": self.control.problem or None},
            "counters": self._counters(),
        }


def run_agent(settings: Settings, version: str = "0") -> int:
    logs.setup(settings.log_format)
    try:
        return asyncio.run(Agent(settings, version=version).run())
    except StartupError as e:
        print(f"carp-sidecar: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
