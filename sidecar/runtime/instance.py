"""One CARP instance at run time: a VHID's session (sidecar.core.session) wired to the world.

The session decides; the instance feeds it what happens (adverts and ARP routed here by the
interface's channel, the interface coming and going, health, maintenance) with the loop's
clock, arms one timer at the session's next deadline, and carries out what comes back:
adverts and probes go out at once through the :class:`SendPort`, everything slow through the
:class:`Effects` queue, events to the :class:`Reporter` (metrics, logs) and the notify script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

from sidecar.config.runconfig import Vhid, vrrp_params
from sidecar.core import outputs
from sidecar.core.actions import Address, Resume, Resumed
from sidecar.core.machine import (
    AddVip,
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
from sidecar.core.protocol import AdvertError, Expect
from sidecar.core.session import Session, SessionConfig
from sidecar.net.announce import build_arp_probe, build_garp, build_ns_probe, build_unsolicited_na
from sidecar.net.channel import Channel
from sidecar.net.netlink import AddressEvent, Netlink
from sidecar.runtime import linklocal
from sidecar.runtime.effects import Effect, Effects
from sidecar.runtime.maintenance import CounterMark, MaintenanceStore, Prepared
from sidecar.runtime.notify import InstanceScripts
from sidecar.runtime.reporter import Reporter
from sidecar.runtime.sendport import SendPort
from sidecar.runtime.status import instance_status
from sidecar.runtime.timer import SessionTimer
from sidecar.runtime.vips import NetlinkVips, VipBackend, backend_for
from sidecar.serve.logs import fields
from sidecar.serve.metrics import InstanceMetrics, Metrics

if TYPE_CHECKING:  # imported by the agent only when a path is configured
    from sidecar.replica.service import VhidReplica

log = logging.getLogger("carp-sidecar")


def session_config(s: Vhid, srcip: Address) -> SessionConfig:
    params = Params(advbase=s.advbase, advskew=s.advskew, deadratio=s.deadratio,
                    preempt=s.preempt, neutral=s.neutral, ignoreifstate=s.ignoreifstate,
                    garp_repeat=s.garp_repeat, own_ip=srcip, preempt_delay=s.preempt_delay,
                    vrrp3_dead_timer=s.vrrp3_dead_timer, strict=s.strict, **vrrp_params(s))
    # VRRP: the screen parses with sidecar.core.vrrp (the key is v2's password, b"": none)
    # and checks the address list against the instance's IPv4 VIPs, as keepalived does
    vrrp: dict[str, Any] = {} if s.protocol == "carp" else {
        "protocol": s.protocol,
        "vips": tuple(v.ip for v in (s.ipv6_vips if s.ipv6 else s.ipv4_vips)),
        "advert_int_cs": params.advert_int_cs, "ipv6": s.ipv6}
    expect = Expect(vhid=s.vhid, key=s.secret, vip=s.hmac_address, group=s.mcast,
                    peers=frozenset(s.peers) if s.peers else None,
                    own=srcip if s.peers else None,
                    multicast=not s.peers or s.peers_multicast, strict=s.strict,
                    next_key=s.auth.next_key, **vrrp)
    # a routed VIP (CARP_VIP_INTERFACE) is not on the CARP link: nothing to probe or refresh
    return SessionConfig(params=params, expect=expect, interface=s.interface,
                         probe_interval=0.0 if s.routed else s.probe_interval,
                         garp_refresh=0.0 if s.routed else s.garp_refresh)


def link_vips(s: Vhid) -> tuple[list[IPv4Address], list[IPv6Address]]:
    """The VIPs whose ARP and NDP the CARP link carries (none when routed)."""
    if s.routed:
        return [], []
    return [v.ip for v in s.ipv4_vips], [v.ip for v in s.ipv6_vips]


def log_start(s: Vhid, srcip: Address) -> None:
    """ucarp's lines at start, which log alerts may match."""
    log.info("Using [%s] as a network interface, vhid %d, VIP %s, source %s", s.interface,
             s.vhid, ", ".join(s.shown_vips) + ("" if s.prefix_known else
                                                " (prefix: the scripts' own)"), srcip,
             extra=fields(vhid=s.vhid, interface=s.interface))
    if s.protocol == "carp":
        log.info("Local advertised ethernet address is [00:00:5e:00:00:%02x]", s.vhid,
                 extra=fields(vhid=s.vhid, interface=s.interface))
    else:  # keepalived's default: the interface's own MAC (use_vmac: the virtual one)
        log.info("%s: VRID %d, priority %d, advert_int %g s, preempt %s; adverts from %s",
                 "VRRPv2" if s.protocol == "vrrp2" else "VRRPv3", s.vhid, s.priority,
                 s.advert_int, "on" if s.preempt else "off", "the interface's own MAC"
                 if s.vmac is None or s.vmac_xmit_base else
                 f"the virtual MAC on {s.vmac_name} (CARP_VMAC)",
                 extra=fields(vhid=s.vhid, interface=s.interface))
    if s.manages_vip_by_scripts:
        for kind, path in (("up", s.upscript), ("down", s.downscript)):
            if path is None:
                log.warning("Warning: no script called when going %s", kind)


class Instance:
    def __init__(self, settings: Vhid, srcip: Address, channel: Channel,
                 netlink: Netlink, metrics: Metrics, loop: asyncio.AbstractEventLoop,
                 several: bool = False, script_extra: dict[str, str] | None = None) -> None:
        s = self.s = settings
        self.srcip, self.channel, self.loop, self._nl = srcip, channel, loop, netlink
        self.vip_ifindex: int | None = None  # CARP_VIP_INTERFACE's or CARP_VMAC's (agent)
        self.session = Session(session_config(s, srcip), wall=time.time,
                                    rng=lambda: secrets.randbits(64),
                                    jitter=lambda: random.uniform(0.9, 1.1))
        self.m = InstanceMetrics(metrics, s.vhid, s.interface, [str(v.ip) for v in s.vips],
                                 strict_peers=s.peers if s.strict else (), group=s.group_name,
                                 protocol=s.protocol, vmac=s.vmac_shown)
        self.reporter = Reporter(s, srcip, self.m, several)
        self.port = SendPort(s, srcip, channel, self.m.advert_send_errors.inc,
                             lambda: self.session.config.params)
        self.scripts = InstanceScripts(s, script_extra or {}, self.m,
                                       lambda: self.reporter.last_transition)
        self.effects = Effects(self._vip_backend(s), self._announce)
        self._mark: CounterMark | None = None  # strict: where the counter mark is kept
        self.stopped = asyncio.Event()
        self.timer = SessionTimer(loop, self.session, channel,
                                  lambda now: self._do(self.session.timer(now)),
                                  self.m.family.timer_lateness.observe,
                                  fields(vhid=s.vhid, interface=s.interface))
        self._takeover_started: float | None = None
        self._failover: outputs.TookOver | None = None  # until the VIP is up and announced
        # a health-check failover is measured here, from the service's last passing check to
        # the successor's first advert (the successor hears only our bow-out)
        self._failed_at: float | None = None
        self._released_at: float | None = None  # left MASTER unhealthy, failing since then
        self._tasks: list[asyncio.Task[None]] = []
        self._vips_seen: set[IPv4Address | IPv6Address] = set()  # on the VIP interface now
        self.replica: VhidReplica | None = None  # its replicated paths (CARP_SYNC_PATHS)
        self.last_advert: SendAdvert | None = None  # what a restart's keeper goes on from

    # ---- what the channel and the agent read ----
    @property
    def vhid(self) -> int:
        return self.s.vhid

    @property
    def expect(self) -> Expect:
        return self.session.config.expect

    @property
    def vip_index(self) -> int | None:
        """Where the VIPs go: CARP_VIP_INTERFACE (lo), CARP_VMAC's macvlan or the interface."""
        return self.vip_ifindex if self.s.routed or self.s.vmac else self.channel.ifindex

    @property
    def machine(self) -> Machine:
        return self.session.machine

    @property
    def maintenance(self) -> dict[str, float]:
        return self.session.maintenance

    @property
    def checks(self) -> dict[str, tuple[bool, str]]:
        return self.session.checks

    # ---- life ----
    def start(self, resume: Resume | None = None) -> list[Coroutine[Any, Any, None]]:
        """Start the session (``resume``: a restart's); the coroutines the agent supervises."""
        machine_gauges(self)
        self.m.interface_present.set(1 if self.channel.attached is not None else 0)
        log_start(self.s, self.srcip)
        self._do(self.session.start(self.loop.time(), self.channel.attached is not None,
                                    self.channel.running, resume=resume))
        return [self.effects.run(), *self.scripts.jobs()]

    async def stop(self) -> None:
        """Hand over if MASTER (bow-out, VIP kept until a successor speaks), release the VIPs,
        and let the downscript finish (scripts have their own timeout)."""
        bowed_out = self.loop.time()
        self._do(self.session.stop(bowed_out))
        handing_over = self.machine.stopping  # a MASTER sent its bow-out and waits
        await self.stopped.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.effects.join(), self.s.script_timeout + 1)
        await self.scripts.join(self.s.script_timeout + 1)
        if handing_over:  # say to whom: the operator's first question after a stop
            self.reporter.successor(self.session, bowed_out, self.loop.time())

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.timer.cancel()
        self.port.close()

    def _vip_backend(self, s: Vhid) -> VipBackend:
        return backend_for(s, self._nl, self.m, lambda: self.vip_index,
                           self.scripts.environment, lambda: bool(self._vips_seen))

    # ---- reload: settings that change live ----
    def update(self, new: Vhid, script_extra: dict[str, str]) -> None:
        """Take ``new`` settings in place, without a transition unless the change itself calls
        for one (a worse advskew on a master whose peer preempts: the next advert carries it).
        The caller has checked that only live fields changed (see :mod:`reload`)."""
        old = self.s
        self.s = self.reporter.s = self.port.s = new
        self.session.reconfigure(self.loop.time(), session_config(new, self.srcip))
        machine_gauges(self)
        self.scripts.update(new, script_extra, self._spawn)
        self.effects.backend = self._vip_backend(new)
        if old.vips != new.vips:
            self._vips_changed(old, new)
        self.timer.reschedule()

    def _vips_changed(self, old: Vhid, new: Vhid) -> None:
        gone = [v for v in old.vips if v not in new.vips]
        self.m.set_vips([str(v.ip) for v in new.vips])
        self.channel.set_vips(self, *link_vips(new))
        if self.machine.state is not State.MASTER or new.manages_vip_by_scripts:
            return  # scripts own the VIPs (the first one did not change: see reload.py)
        if gone and isinstance(self.effects.backend, NetlinkVips):
            self._spawn(self.effects.backend.remove(gone))
        self.effects.put(Effect.ADD_VIP)  # the new ones (the others are there already)
        self.effects.put(Effect.ANNOUNCE)

    # ---- carrying out what the session says ----
    def _do(self, todo: Iterable[outputs.Output]) -> None:
        queue = deque(todo)
        now = self.loop.time()
        while queue:
            out = queue.popleft()
            follow = self._carry_out(out, now)
            if follow:
                queue.extendleft(reversed(follow))
            self.reporter.event(out, self.session, now)
            if self.replica is not None:
                tell_replica(self.replica, out, self.loop)
            if isinstance(out, outputs.Notify):
                self.scripts.notify(out)
            elif isinstance(out, Transition):
                self._takeover_started = now if out.new is State.MASTER else None
                self._failover = None
                self._released_at = self._failed_at if (
                    out.old is State.MASTER and out.reason is Reason.UNHEALTHY) else None
            elif isinstance(out, outputs.TookOver):
                self._failover = out
            elif isinstance(out, outputs.Accepted) and self._released_at is not None:
                self.m.observe_failover("unhealthy", now - self._released_at)
                self._released_at = None
        self.timer.reschedule()

    def set_sync_behind(self, behind: bool) -> None:  # replicas too old to win an election
        self._do(self.session.set_sync(self.loop.time(), behind))

    def _carry_out(self, out: outputs.Output, now: float) -> list[outputs.Output]:
        """Do one action; returns what the session answers to its outcome."""
        if isinstance(out, SendAdvert):
            sent = self.port.advert(out)
            self.last_advert = out
            if sent.ok:
                self.m.adverts_sent.inc()
                if out.handover:
                    self.m.handovers_sent.inc()
            return self.session.sent(now, sent.ok, sent.error, sent.errno)
        if isinstance(out, (AddVip, DropVip, SendGarp)):
            self.effects.put(Effect.ADD_VIP if isinstance(out, AddVip) else
                             Effect.DROP_VIP if isinstance(out, DropVip) else Effect.ANNOUNCE)
        elif isinstance(out, outputs.SendProbe):
            if self.port.per_vip(build_arp_probe, build_ns_probe, "VIP probe", announce=False):
                self.session.probed(now)
                self.m.probes_sent.inc()
        elif isinstance(out, outputs.CheckSending):
            return self.session.sending_checked(now, self.port.check())
        elif isinstance(out, outputs.ReserveCounters):
            self._reserve(out.upto)
        elif isinstance(out, Stopped):
            self.stopped.set()
        return []

    def _announce(self) -> None:
        """GARP for each IPv4 VIP, unsolicited NA for each IPv6 VIP — only while MASTER: a
        stale announcement would pull clients to a node that has left. A routed VIP is
        announced by the routing daemon: the takeover ends when it is on CARP_VIP_INTERFACE."""
        routed = self.s.routed
        if self.machine.state is not State.MASTER or not (routed or self.port.per_vip(
                build_garp, build_unsolicited_na, "Gratuitous ARP")):
            return
        if not routed:
            self.m.garps_sent.inc()
        now = self.loop.time()
        if self._takeover_started is not None:
            self.m.takeover_duration.observe(now - self._takeover_started)
            self._takeover_started = None
        if self._failover is not None:
            self.m.observe_failover(self._failover.reason, now - self._failover.heard_at)
            self._failover = None

    # ---- strict mode's counter mark ----
    def keep_counters(self, store: MaintenanceStore, prepared: Prepared | None = None) -> None:
        """Before the first advert (raises StateError/OSError: the agent refuses to start)."""
        self._mark = CounterMark(store, self.s.name)
        self._mark.keep(self.session, prepared)

    def _reserve(self, upto: int) -> None:
        if self._mark is not None:
            self._mark.reserve(self.session, upto)

    # ---- from the channel ----
    def advert_packet(self, packet: bytes) -> None:
        todo = self.session.receive(self.loop.time(), packet)
        if log.isEnabledFor(logging.DEBUG):
            self.reporter.decision(todo, self.session)
        self._do(todo)

    def dropped(self, error: AdvertError, src: bytes | None = None) -> None:
        """A packet the channel could not give to any one instance (counted by each)."""
        self.reporter.dropped(error, src, self.loop.time())

    def arp_claim(self, sender_mac: bytes, probe_reply: bool = False) -> None:
        self._do(self.session.arp(self.loop.time(), sender_mac, probe_reply))

    def na_claim(self, sender_mac: bytes) -> None:
        self._do(self.session.na(self.loop.time(), sender_mac))

    def interface_changed(self, present: bool, running: bool, reattached: bool) -> None:
        self.m.interface_present.set(1 if present else 0)
        if reattached and self.channel.ifindex is not None:
            self._spawn(linklocal.check_source(self, self.channel.ifindex))
        if not present and not self.s.routed:  # lo keeps a routed VIP
            self._vips_seen.clear()
            for child in self.m.vip_present.values():
                child.set(0)
        self._do(self.session.set_link(self.loop.time(), present, running, reattached))

    def address_event(self, event: AddressEvent) -> None:
        if linklocal.link_local_changed(self, event):  # no CARP_SRCIP: it follows the address
            self._spawn(linklocal.check_source(self, event.index))
            return
        if event.address == self.srcip and event.index == self.channel.ifindex:
            self._do(self.session.set_source(self.loop.time(), event.added))
            return
        child = self.m.vip_present.get(str(event.address))
        if child is None or event.index != self.vip_index:
            return
        child.set(1 if event.added else 0)
        (self._vips_seen.add if event.added else self._vips_seen.discard)(event.address)
        if (not event.added and self.machine.state is State.MASTER and not self.machine.stopping
                and not self.s.manages_vip_by_scripts):
            log.warning("VIP %s was removed from %s by someone else: adding it back",
                        event.address, self.s.vip_interface or self.s.interface)
            self.effects.put(Effect.ADD_VIP)
            self.effects.put(Effect.ANNOUNCE)  # clients may have moved elsewhere meanwhile

    def vip_link_changed(self, index: int | None) -> None:  # re-created: its VIPs are gone
        self.vip_ifindex = index
        if index is not None and self.machine.state is State.MASTER and not self.machine.stopping:
            self.effects.put(Effect.ADD_VIP)

    def vip_observed(self, present: set[IPv4Address | IPv6Address]) -> None:
        self._vips_seen = {vip.ip for vip in self.s.vips if vip.ip in present}
        for vip in self.s.vips:
            self.m.vip_present[str(vip.ip)].set(1 if vip.ip in present else 0)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    # ---- health, maintenance, the operator ----
    def set_maintenance(self, source: str, since: float | None) -> bool:
        """See :meth:`Session.set_maintenance`; True if that changed anything."""
        todo = self.session.set_maintenance(self.loop.time(), source, since)
        self._do(todo)
        self.m.demoted.set(1 if self.machine.demoted else 0)
        return bool(todo)

    def check_changed(self, name: str, healthy: bool, error: str,
                      failed_since: float | None = None) -> None:
        self._failed_at = None if healthy else failed_since
        self._do(self.session.set_check(self.loop.time(), name, healthy, error))
        self.m.demoted.set(1 if self.machine.demoted else 0)

    def drop_check(self, name: str) -> None:
        self._do(self.session.drop_check(self.loop.time(), name))
        self.m.demoted.set(1 if self.machine.demoted else 0)

    def step_down(self) -> None:
        self._do(self.session.step_down(self.loop.time()))

    # ---- views ----
    def ready(self) -> bool:
        return self.session.ready() and self.channel.attached is not None

    def status(self) -> dict[str, Any]:
        return instance_status(self)


def machine_gauges(self: Instance) -> None:
    self.m.set_health_checked(bool(self.s.health))
    self.m.advbase.set(self.s.advbase)
    self.m.advskew.set(self.s.advskew)
    self.m.master_down_interval.set(self.machine.master_down_interval_us / 1e6)


def tell_replica(replica: VhidReplica, out: outputs.Output, loop: asyncio.AbstractEventLoop
                 ) -> None:
    """Which side the paths are on follows the state; a backup pulls from whom it hears. Told
    after this turn's outputs, as the replica may answer with :meth:`Instance.set_sync_behind`."""
    if isinstance(out, Transition):
        loop.call_soon(replica.transition, out.new)
    elif isinstance(out, Resumed) and out.state is State.MASTER:  # a restart: same epoch
        loop.call_soon(replica.resume_master)
    elif isinstance(out, outputs.Accepted) and not out.handover:
        loop.call_soon(replica.heard, out.peer, (out.advbase, out.advskew))
